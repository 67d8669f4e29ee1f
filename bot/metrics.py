"""Prometheus metrics for one deploybot process, in a registry of its own.

Counters are bumped by hooks: the command handler's observer, the announcer's delivery
observer. What is true of Redis or a connection right now (leases held, people waiting, chat
connected, reconnects so far) is read when Prometheus scrapes, never kept up to date by
hand. Labels carry command names, outcomes (error class names), event types, lease kinds and
platform names only: never user ids, channel ids or message text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.chat import ChatPlatform
from bot.errors import DeploybotError
from bot.store import Store

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds a scrape waits for Redis before reporting the store as down.
REFRESH_TIMEOUT_S = 2.0
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class _StateSnapshot:
    """What Redis held at the last scrape."""

    leases: dict[str, int]
    waiters: int


class Metrics:
    """deploybot's metrics; `render()` is what /metrics serves."""

    def __init__(self) -> None:
        # prometheus-client's `*_created` series (a timestamp per label set) would double the
        # output and tell an operator nothing the process start time does not. The switch is
        # process-wide; deploybot has no other metrics that could want them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self._commands = Counter(
            "deploybot_commands",
            "Chat commands handled, by command and outcome (ok, crash, or the error's name).",
            ["command", "outcome"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "deploybot_command_latency_seconds",
            "Time to handle a chat command, from parsing to the reply being ready.",
            ["command"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._announcements = Counter(
            "deploybot_announcements_sent",
            "Announcements and DMs posted, by event type (reminder included) and platform.",
            ["event", "platform"],
            registry=self.registry,
        )
        self._reminders = Counter(
            "deploybot_reminders_sent",
            "Reminder DMs posted to holders before their lease expires.",
            registry=self.registry,
        )
        self._failed = Counter(
            "deploybot_announcements_failed",
            "Announcements whose post raised an error, by event type and platform.",
            ["event", "platform"],
            registry=self.registry,
        )
        self._live = _LiveCollector()
        self.registry.register(self._live)

    def observe_command(self, command: str, outcome: str, latency_s: float) -> None:
        """The command handler's observer (see bot.commands.CommandObserver)."""
        self._commands.labels(command, outcome).inc()
        self._latency.labels(command).observe(latency_s)

    def observe_delivery(self, event_type: str, platform: str, posted: bool) -> None:
        """The announcer's observer (see bot.announcer.DeliveryObserver)."""
        if not posted:
            self._failed.labels(event_type, platform).inc()
            return
        self._announcements.labels(event_type, platform).inc()
        if event_type == "reminder":
            self._reminders.inc()

    def watch_platforms(self, platforms: Mapping[str, ChatPlatform]) -> None:
        """Report these platforms' connection state and reconnects at each scrape."""
        self._live.platforms = dict(platforms)

    async def refresh(self, store: Store) -> None:
        """Count leases and waiters in Redis for the next render; a failure marks it down.

        The count sweeps what is due first, exactly as `status` does, so it never includes a
        lease that has already expired.
        """
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT_S):
                by_kind, waiters = await store.lease_counts()
        except (DeploybotError, TimeoutError):
            self._live.state = None
            return
        except Exception:
            log.exception("metrics could not read the leases")
            self._live.state = None
            return

        counts = {kind.value: count for kind, count in by_kind.items()}
        self._live.state = _StateSnapshot(counts, waiters)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Metrics computed at scrape time from the last refresh and the platforms' state."""

    def __init__(self) -> None:
        self.state: _StateSnapshot | None = None
        self.platforms: dict[str, ChatPlatform] = {}

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "deploybot_state_store_up", "1 when Redis answered the last scrape, else 0."
        )
        up.add_metric([], 1.0 if self.state is not None else 0.0)
        yield up

        if self.state is not None:
            leases = GaugeMetricFamily(
                "deploybot_active_leases", "Leases held right now, by kind.", labels=["kind"]
            )
            for kind, count in self.state.leases.items():
                leases.add_metric([kind], count)
            yield leases
            waiters = GaugeMetricFamily(
                "deploybot_waiters", "People waiting on waitlists for a lock or claim."
            )
            waiters.add_metric([], self.state.waiters)
            yield waiters

        connected = GaugeMetricFamily(
            "deploybot_chat_connected",
            "1 while the platform's connection is up, else 0.",
            labels=["platform"],
        )
        reconnects = CounterMetricFamily(
            "deploybot_reconnects",
            "Times the platform's connection was re-established after a drop.",
            labels=["platform"],
        )
        for name, platform in self.platforms.items():
            connected.add_metric([name], 1.0 if platform.connected else 0.0)
            reconnects.add_metric([name], getattr(platform, "reconnects", 0))
        yield connected
        yield reconnects
