"""Sweep cost and expiry-announcement lateness with many live leases (issue 7, item 3).

Creates N leases (default 100,000) whose expiries are spread evenly over a window (default
10 minutes), then runs deploybot's real Timeline (APScheduler sweep every 0.5 s) and
Announcer against a recording chat platform in this process, until every lease has
expired and been announced. Reports:

- per sweep tick: wall time of `sweep_due` (the Redis script plus the round trip);
- this process's CPU while sweeping and announcing, as a share of one core, and the Redis
  server's CPU over the same time;
- lateness of each expiry announcement: the Redis clock when the chat post is made minus
  the lease's `expires_at` (p50, p99, max).

Targets: p99 lateness <= 1.5 s; sweep CPU under 5% of one core (the sweep's own share is
shown separately from the announcer's, which does the posting).

    .venv/bin/python bench/sweep.py            # 100,000 leases over 10 minutes
    .venv/bin/python bench/sweep.py --quick    # 5,000 leases over 20 seconds
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (
    bench_server,
    cpu_seconds,
    header,
    percentile,
    server_version,
    table,
    unique_namespace,
)

from bot.announcer import Announcer
from bot.config import Settings
from bot.messages import Reply
from bot.model import Event, Holder, LeaseKind, Origin
from bot.store import LeasePolicy, Store, connect
from bot.timeline import Timeline


class Silent:
    """A chat platform that accepts posts and does nothing (the bench times the bot)."""

    platform = "slack"
    connected = True

    async def post(self, channel: str, reply: Reply, *, thread: str | None = None) -> None:
        return None

    async def send_direct(self, user_id: str, reply: Reply) -> None:
        return None


class TimedAnnouncer(Announcer):
    """The real announcer, noting how late each expiry is posted to its channel."""

    lateness_ms: list[int]

    async def _send(self, delivery: Any, event: Event) -> None:
        await super()._send(delivery, event)
        if event.type == "expired" and not delivery.direct:
            now = await self._store.now_ms()
            self.lateness_ms.append(now - int(event.data["expires_at"]))


class TimedStore(Store):
    """The real store, timing each sweep call."""

    sweep_ms: list[float]

    async def sweep_due(self, *, limit: int = 500):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        result = await super().sweep_due(limit=limit)
        self.sweep_ms.append((time.perf_counter() - started) * 1000)
        return result


async def create_leases(store: Store, count: int, window_ms: int, lead_ms: int) -> None:
    """`count` leases expiring evenly over `window_ms`, starting `lead_ms` from now."""
    origin = Origin("slack", "CBENCH")
    semaphore = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with semaphore:
            ttl = lead_ms + (window_ms * i) // count
            await store.acquire(
                LeaseKind.LOCK,
                f"svc-{i}",
                Holder("slack", f"U{i % 500}", "u"),
                ttl_ms=ttl,
                origin=origin,
            )

    await asyncio.gather(*(one(i) for i in range(count)))


async def run(count: int, window_s: float, server_pid: int, url: str) -> str:
    namespace = unique_namespace("sweep")
    settings = Settings(namespace=namespace, sweep_interval_s=0.5)
    policy = LeasePolicy(reminder_offsets_ms=(3_600_000,))  # reminders at half-life: 2N entries
    store = TimedStore(connect(url), namespace=namespace, policy=policy)
    store.sweep_ms = []
    lead_ms = 10_000 + count  # creating them takes a while (about 0.4 ms each here)
    started = time.perf_counter()
    await create_leases(store, count, int(window_s * 1000), lead_ms)
    created_s = time.perf_counter() - started

    announcer = TimedAnnouncer(store, settings, {"slack": Silent()})
    announcer.lateness_ms = []
    timeline = Timeline(store, settings)
    cpu_before = time.process_time()
    server_before = cpu_seconds(server_pid)
    wall_before = time.perf_counter()
    timeline.start()
    task = asyncio.create_task(announcer.run())
    deadline = time.perf_counter() + window_s + lead_ms / 1000 + 60
    # A progress check once in a while, not a wait on shared state.
    while len(announcer.lateness_ms) < count and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    wall = time.perf_counter() - wall_before
    cpu = time.process_time() - cpu_before
    server_cpu = cpu_seconds(server_pid) - server_before
    await timeline.stop()
    await announcer.stop()
    await asyncio.wait_for(task, timeout=5)
    await store.close()

    late = announcer.lateness_ms
    ticks = store.sweep_ms
    rows = [
        ["leases", count, f"created in {created_s:.1f} s"],
        ["announced", len(late), "expiry posts to the lease's channel"],
        ["sweep calls", len(ticks), f"over {wall:.1f} s"],
        [
            "sweep ms p50 / p99 / max",
            f"{percentile(ticks, 50):.2f} / {percentile(ticks, 99):.2f} / {max(ticks):.2f}",
            "",
        ],
        [
            "sweep wall share of one core",
            f"{sum(ticks) / 1000 / wall * 100:.2f}%",
            "upper bound of the sweep's CPU (includes waiting on Redis)",
        ],
        ["process CPU (sweep + announcer)", f"{cpu / wall * 100:.1f}%", "of one core"],
        ["redis CPU", f"{server_cpu / wall * 100:.1f}%", "of one core"],
        [
            "lateness ms p50 / p99 / max",
            f"{percentile(late, 50):.0f} / {percentile(late, 99):.0f} / {max(late):.0f}",
            "target p99 <= 1500",
        ],
    ]
    return table(["measure", "value", "note"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 leases over 20 s")
    parser.add_argument("--leases", type=int)
    parser.add_argument("--window", type=float, help="seconds over which leases expire")
    args = parser.parse_args()
    count = args.leases or (5_000 if args.quick else 100_000)
    window = args.window or (20.0 if args.quick else 600.0)

    with bench_server() as (url, pid):
        print(
            header(
                "sweep: cost per tick and expiry lateness",
                f"server      {server_version(url)}",
                f"leases      {count} expiring over {window:.0f} s",
            )
        )
        print(asyncio.run(run(count, window, pid, url)))


if __name__ == "__main__":
    main()
