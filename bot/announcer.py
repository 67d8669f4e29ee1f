"""Turns the event stream into chat posts: reminders, expiries, frees, handoffs.

The announcer reads `{ns}:events` through a consumer group, so several deploybot replicas
share the work and each event is announced by one of them. An event a crashed replica read
but never acknowledged (it crashed, or was stopped mid-batch and restarted under a new
consumer name) is claimed by another after `RECLAIM_IDLE_MS`. Deliveries are planned from
the event alone (`plan`), so what gets said where is easy to test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from bot.chat import ChatPlatform
from bot.config import Settings
from bot.durations import format_span
from bot.errors import CorruptRecord, DeploybotError, StoreUnavailable
from bot.messages import Code, Mention, Part, Reply, When
from bot.model import Event, Holder, Lease, LeaseKind, Origin
from bot.store import Store

log = logging.getLogger(__name__)

GROUP = "announcer"
LATE_AFTER_MS = 10_000
SEEN_TTL_S = 86_400
# An event read but left unacknowledged this long is taken over by another consumer. Long
# enough for a live replica to post a batch (rate-limit retries included), short enough that
# a restart does not hold announcements back for long.
RECLAIM_IDLE_MS = 15_000
RECLAIM_EVERY_S = 5.0

# Told of every post attempt: (event type, platform, posted without error). Metrics hook in.
DeliveryObserver = Callable[[str, str, bool], None]


@dataclass(frozen=True)
class Delivery:
    """One post: to a channel (`target` is a channel id) or a person (`target` is a user id)."""

    platform: str
    target: str
    reply: Reply
    direct: bool = False
    thread: str | None = None


def plan(
    event: Event, settings: Settings, now_ms: int | None = None, *, ended: bool = False
) -> list[Delivery]:
    """Who is told what about one event, as of `now_ms` (Redis time). Pure: no I/O.

    Times in the text are relative to when it is announced, which after downtime can be
    long after the event was recorded; such announcements are marked late. `ended` says
    the lease a handoff gave has ended since (the caller looked), so it is not called yours.
    """
    if now_ms is not None:
        event = replace(event, data={**event.data, "_now": now_ms})
    if ended:
        event = replace(event, data={**event.data, "_ended": True})
    lease = _lease_of(event)
    if event.type == "reminder" and lease is not None:
        return [_direct(lease.holder, _reminder(event, lease))]
    if event.type == "expired" and lease is not None:
        return _expired(event, lease, settings)
    if event.type in ("released", "forced") and lease is not None:
        return _released(event, lease, settings)
    if event.type in ("acquired", "refreshed", "extended") and lease is not None:
        return _taken(event, lease, settings)
    if event.type == "free":
        return _free(event)
    return []


class Announcer:
    """Reads events and posts them through the connected chat platforms."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        platforms: Mapping[str, ChatPlatform],
        *,
        consumer: str | None = None,
        observer: DeliveryObserver | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._platforms = platforms
        self._consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._stopping = asyncio.Event()
        self._observer = observer
        self.delivered = 0

    async def run(self) -> None:
        """Announce events until `stop()`; Redis outages are waited out, not fatal."""
        ready = False
        last_claim = 0.0
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                if not ready:
                    await self._store.ensure_event_group(GROUP)
                    ready = True
                if loop.time() - last_claim > RECLAIM_EVERY_S:
                    last_claim = loop.time()
                    stale = await self._store.claim_stale_events(
                        GROUP, self._consumer, min_idle_ms=RECLAIM_IDLE_MS
                    )
                    await self._handle(stale)
                await self._handle(await self._store.read_events(GROUP, self._consumer))
            except StoreUnavailable:
                await asyncio.sleep(1)
            except DeploybotError as error:  # e.g. the stream key overwritten by hand
                log.warning("announcer paused: %s", error)
                await asyncio.sleep(5)

    async def stop(self) -> None:
        """Finish the batch in hand, then return from `run()`."""
        self._stopping.set()

    async def _handle(self, events: list[Event]) -> None:
        if not events:
            return
        now = await self._store.now_ms()
        for event in events:
            await self._announce(event, now)
            await self._store.ack_event(GROUP, event.id)

    async def _announce(self, event: Event, now_ms: int) -> None:
        """Post each delivery of an event, marking it done only after it was posted.

        The consumer group gives every event to one replica. If that replica dies midway,
        another takes the event over later and posts what was not marked done: at worst a
        post made in the instant before the crash is repeated, never one lost.
        """
        ended = await self._handoff_ended(event)
        for number, delivery in enumerate(plan(event, self._settings, now_ms, ended=ended)):
            mark = f"{event.id}:{number}"
            if await self._store.is_marked("announced", mark):
                continue
            await self._send(delivery, event)
            await self._store.mark("announced", mark, ttl_s=SEEN_TTL_S)

    async def _handoff_ended(self, event: Event) -> bool:
        """Whether the lease a handoff event gave is gone (released, expired, taken anew).

        Announced after downtime, a handoff can be long over; its holder must not be told
        the lease is theirs. A record that cannot be read tells nothing either way.
        """
        lease = _lease_of(event)
        if not event.data.get("handoff") or lease is None:
            return False
        try:
            current = await self._store.get(lease.kind, lease.name)
        except CorruptRecord:
            return False
        return current is None or current.token != lease.token

    async def _send(self, delivery: Delivery, event: Event) -> None:
        platform = self._platforms.get(delivery.platform)
        if platform is None:
            log.info(
                "announcement skipped platform=%s event=%s (not connected)",
                delivery.platform,
                event.type,
            )
            return
        try:
            if delivery.direct:
                await platform.send_direct(delivery.target, delivery.reply)
            else:
                await platform.post(delivery.target, delivery.reply, thread=delivery.thread)
            self.delivered += 1
            self._observe(event, delivery, posted=True)
            log.info(
                "announced event=%s kind=%s name=%s platform=%s direct=%s",
                event.type,
                event.kind,
                event.name,
                delivery.platform,
                delivery.direct,
            )
        except Exception:
            self._observe(event, delivery, posted=False)
            log.exception(
                "announcement failed event=%s platform=%s", event.type, delivery.platform
            )

    def _observe(self, event: Event, delivery: Delivery, *, posted: bool) -> None:
        if self._observer is not None:
            self._observer(event.type, delivery.platform, posted)


def _lease_of(event: Event) -> Lease | None:
    """The lease an event carries (its data is the lease's JSON plus extras)."""
    try:
        return Lease.from_dict(event.data)
    except (ValueError, KeyError, TypeError):
        return None


def _via(event: Event) -> Origin | None:
    via = event.data.get("via")
    return Origin.from_dict(via) if isinstance(via, dict) else None


def _now(event: Event) -> int:
    """When the event is being announced (plan's `now_ms`), else when it was recorded."""
    now = event.data.get("_now")
    return int(now) if isinstance(now, int | float) else event.at


def _late(event: Event) -> list[Part]:
    """A note for something announced well after it was due or happened (deploybot was
    down): every announcement ends with it, so old news never reads as current."""
    due = event.data.get("due_at")
    at, what = (int(due), "was due") if isinstance(due, int | float) else (event.at, "happened")
    if _now(event) - at > LATE_AFTER_MS:
        span = format_span(_now(event) - at)
        return [f" (late: this {what} {span} ago, while deploybot was not running)"]
    return []


def _direct(holder: Holder, reply: Reply) -> Delivery:
    return Delivery(holder.platform, holder.user_id, reply, direct=True)


def _channels(
    lease: Lease, settings: Settings, reply: Reply, *, via: Origin | None, everywhere: bool
) -> list[Delivery]:
    """The lease's own channel (unless the command came from there, and the reply said it
    already), plus the announcement channels when `everywhere`."""
    targets: list[tuple[str, str, str | None]] = []
    origin = lease.origin
    if origin and not (via and via.platform == origin.platform and via.channel == origin.channel):
        targets.append((origin.platform, origin.channel, origin.thread))
    if everywhere:
        for entry in settings.announce_channels:
            platform, _, channel = entry.partition(":")
            if all((platform, channel) != (p, c) for p, c, _t in targets):
                targets.append((platform, channel, None))
    return [
        Delivery(platform, channel, reply, thread=thread) for platform, channel, thread in targets
    ]


def _from_cli(via: Origin | None) -> bool:
    return via is None or via.platform == "local"


def _reminder(event: Event, lease: Lease) -> Reply:
    verb = "unlock" if lease.kind is LeaseKind.LOCK else "release"
    return Reply.of(
        f"Your {lease.kind} on ",
        Code(lease.name),
        " expires at ",
        When(lease.expires_at, _now(event)),
        ". Extend it with ",
        Code(f"extend {lease.name} 1h"),
        " or free it with ",
        Code(f"{verb} {lease.name}"),
        ".",
        _late(event),
        leases=[lease],
    )


def _expired(event: Event, lease: Lease, settings: Settings) -> list[Delivery]:
    held = format_span(lease.expires_at - lease.acquired_at)
    free: list[Part] = (
        [" ", Code(lease.name), " is free."] if lease.kind is LeaseKind.CLAIM else []
    )
    channel = Reply.of(
        f"The {lease.kind} on ",
        Code(lease.name),
        " held by ",
        Mention(lease.holder),
        f" auto-released after {held}.",
        free,
        _late(event),
    )
    dm = Reply.of(
        f"Your {lease.kind} on ",
        Code(lease.name),
        " expired at ",
        When(lease.expires_at, _now(event)),
        " and was released.",
        _late(event),
    )
    return [
        *_channels(lease, settings, channel, via=None, everywhere=True),
        _direct(lease.holder, dm),
    ]


def _released(event: Event, lease: Lease, settings: Settings) -> list[Delivery]:
    via = _via(event)
    deliveries: list[Delivery] = []
    if event.type == "forced":
        admin = (
            Holder.from_dict(event.data["forced_by"])
            if isinstance(event.data.get("forced_by"), dict)
            else None
        )
        who: list[Part] = [Mention(admin)] if admin else ["An admin"]
        reason = str(event.data.get("reason", "")).rstrip(".")
        deliveries.append(
            _direct(
                lease.holder,
                Reply.of(
                    who,
                    f" force-released your {lease.kind} on ",
                    Code(lease.name),
                    f": {reason}.",
                    _late(event),
                ),
            )
        )
        channel = Reply.of(
            who,
            " force-released ",
            Mention(lease.holder),
            f"'s {lease.kind} on ",
            Code(lease.name),
            f": {reason}.",
            _late(event),
        )
        return deliveries + _channels(lease, settings, channel, via=via, everywhere=True)

    if lease.kind is LeaseKind.CLAIM:
        channel = Reply.of(
            Code(lease.name), " is free: ", Mention(lease.holder), " released it.", _late(event)
        )
        return _channels(lease, settings, channel, via=via, everywhere=True)
    if not settings.announce_lock_release and not _from_cli(via):
        return []
    channel = Reply.of(Mention(lease.holder), " unlocked ", Code(lease.name), ".", _late(event))
    return _channels(lease, settings, channel, via=via, everywhere=_from_cli(via))


def _taken(event: Event, lease: Lease, settings: Settings) -> list[Delivery]:
    via = _via(event)
    if event.data.get("handoff"):
        return _handoff(event, lease, settings)
    if not _from_cli(via):
        return []  # the chat reply already said it where it was asked
    verbs = {
        "acquired": "locked" if lease.kind is LeaseKind.LOCK else "claimed",
        "refreshed": "refreshed",
        "extended": "extended",
    }
    note: list[Part] = [": ", lease.note] if lease.note else []
    where = "the CLI" if via is None or via.channel == "cli" else "the console"
    channel = Reply.of(
        Mention(lease.holder),
        f" {verbs[event.type]} ",
        Code(lease.name),
        f" from {where}, until ",
        When(lease.expires_at, _now(event)),
        note,
        ".",
        _late(event),
    )
    return _channels(lease, settings, channel, via=via, everywhere=True)


def _handoff(event: Event, lease: Lease, settings: Settings) -> list[Delivery]:
    """The first waiter got the lease: a DM to them, and the channels. If it has ended by
    the time this is announced (after downtime), both say so instead of until when."""
    late, token = _late(event), Code(str(lease.token))
    if event.data.get("_ended"):
        dm = Reply.of(
            f"You were first in line: the {lease.kind} on ",
            Code(lease.name),
            " was handed to you (token ",
            token,
            "), and it has ended since.",
            late,
        )
        channel = Reply.of(
            Mention(lease.holder),
            " got ",
            Code(lease.name),
            f" from the waitlist; that {lease.kind} has ended since.",
            late,
        )
    else:
        until = When(lease.expires_at, _now(event))
        dm = Reply.of(
            f"You were first in line: the {lease.kind} on ",
            Code(lease.name),
            " is yours until ",
            until,
            ". Token ",
            token,
            ".",
            late,
            leases=[lease],
        )
        channel = Reply.of(
            Mention(lease.holder),
            " got ",
            Code(lease.name),
            " from the waitlist, until ",
            until,
            ".",
            late,
        )
    return [
        _direct(lease.holder, dm),
        *_channels(lease, settings, channel, via=None, everywhere=True),
    ]


def _free(event: Event) -> list[Delivery]:
    waiter = event.data.get("next")
    if not isinstance(waiter, dict) or not isinstance(waiter.get("holder"), dict):
        return []
    holder = Holder.from_dict(waiter["holder"])
    verb = "lock" if event.kind == LeaseKind.LOCK else "claim"
    return [
        _direct(
            holder,
            Reply.of(
                Code(event.name),
                " is free and you were first in line: say ",
                Code(f"{verb} {event.name}"),
                " to take it.",
                _late(event),
            ),
        )
    ]
