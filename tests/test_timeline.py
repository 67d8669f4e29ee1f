"""Tests for bot.timeline and the sweep behind it: when reminders and expiries fall due.

Schedules are read from `{ns}:timeline` itself and sweeps are run against the real server,
so re-arming, cancelling and "sent once" are checked where they happen. Waits are on Redis's
clock or on what was posted, never on wall-clock bounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from apscheduler.jobstores.memory import MemoryJobStore
from servers import _free_port
from test_announcer import (
    ALICE,
    ORIGIN,
    Recorder,
    drained,
    policy_store,
    running_bot,
    wait_for,
)

from bot.config import Settings
from bot.model import Event, Holder, LeaseKind
from bot.store import Store, connect
from bot.timeline import SWEEP_JOB_ID, Timeline

MINUTE = 60_000


@pytest.fixture
def settings(namespace: str) -> Settings:
    """Fast sweeps."""
    return Settings(namespace=namespace, sweep_interval_s=0.1)


@pytest.fixture
async def short_reminders(redis_server_url: str, settings: Settings) -> AsyncIterator[Store]:
    """A store whose reminder comes 400 ms before expiry (or at half-life below 800 ms)."""
    store = policy_store(redis_server_url, settings, reminder_offsets_ms=(400,))
    try:
        yield store
    finally:
        await store.close()


async def reminder_times(store: Store, kind: str, name: str) -> list[int]:
    """When one lease's reminders are due (ms), as armed; checks that its timeline entry is
    due at the first of them, or at the expiry when it has none."""
    raw = await store.redis.get(store.key("lease", kind, name))
    assert raw is not None, f"no {kind} {name}"
    lease = orjson.loads(raw)
    due = lease.get("remind_at", [])
    entry = await store.redis.zscore(store.key("timeline"), f"{kind}:{name}")
    assert entry == (due[0] if due else lease["expires_at"])
    return list(due)


async def events_of(store: Store, name: str, event_type: str) -> list[Event]:
    """The events of one type about `name`, oldest first."""
    events = await store.history(name, count=100)
    return [event for event in reversed(events) if event.type == event_type]


async def sweep_until(store: Store, what: str, *, reminders: int = 0, expired: int = 0) -> None:
    """Sweep until one sweep turns up at least that many reminders and expiries."""

    async def swept() -> bool:
        result = await store.sweep_due()
        return result.reminders >= reminders and result.expired >= expired

    await wait_for(swept, what)


async def redis_clock_passes(store: Store, at_ms: float) -> None:
    """Wait until Redis's clock is past `at_ms`."""

    async def passed() -> bool:
        return await store.now_ms() > at_ms

    await wait_for(passed, f"Redis time {at_ms}")


# -----------------------------------------------------------------------------------------
# when reminders fall due


async def test_default_reminder_is_ten_minutes_before_or_at_half_life(store: Store) -> None:
    """A 2 h lease is reminded 10 min before expiry, a 5 min lease at half its life."""
    long = await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=120 * MINUTE)
    short = await store.acquire(LeaseKind.CLAIM, "staging-2", ALICE, ttl_ms=5 * MINUTE)

    assert await reminder_times(store, "lock", "backend") == [long.lease.expires_at - 10 * MINUTE]
    assert await reminder_times(store, "claim", "staging-2") == [short.lease.acquired_at + 150_000]


async def test_each_configured_offset_gets_its_own_reminder(
    redis_server_url: str, settings: Settings
) -> None:
    """Offsets 10m and 1m give a 2 h lease two reminders, at those distances from expiry."""
    store = policy_store(redis_server_url, settings, reminder_offsets_ms=(10 * MINUTE, MINUTE))
    try:
        change = await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=120 * MINUTE)
        due = await reminder_times(store, "lock", "backend")
    finally:
        await store.close()

    assert due == [change.lease.expires_at - 10 * MINUTE, change.lease.expires_at - MINUTE]


async def test_shortening_a_lease_drops_the_reminders_it_no_longer_has(
    redis_server_url: str, settings: Settings
) -> None:
    """Two offsets give a long lease two reminders; at 90 s both fall at half-life."""
    store = policy_store(redis_server_url, settings, reminder_offsets_ms=(10 * MINUTE, MINUTE))
    try:
        await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=120 * MINUTE)
        assert len(await reminder_times(store, "lock", "backend")) == 2
        extended = await store.extend(LeaseKind.LOCK, "backend", ALICE, ttl_ms=90_000)
        remaining = await reminder_times(store, "lock", "backend")
    finally:
        await store.close()

    half_life = extended.lease.expires_at - 45_000
    assert remaining == [half_life]


async def test_extending_replaces_the_pending_reminder(short_reminders: Store) -> None:
    """Extend before the reminder: the old due time is gone, one reminder for the new expiry."""
    store = short_reminders
    taken = await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=1000)
    old_due = taken.lease.expires_at - 400
    extended = await store.extend(LeaseKind.LOCK, "backend", ALICE, ttl_ms=2000)
    new_due = extended.lease.expires_at - 400

    assert await reminder_times(store, "lock", "backend") == [new_due]
    await redis_clock_passes(store, old_due)
    assert (await store.sweep_due()).reminders == 0
    await sweep_until(store, "the re-armed reminder", reminders=1)

    [reminder] = await events_of(store, "backend", "reminder")
    assert reminder.data["expires_at"] == extended.lease.expires_at
    assert reminder.data["due_at"] == new_due


async def test_extending_after_a_reminder_arms_a_new_one(short_reminders: Store) -> None:
    """A reminder already sent, then extend: a second reminder comes for the new expiry."""
    store = short_reminders
    taken = await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=1000)
    await sweep_until(store, "the first reminder", reminders=1)
    extended = await store.extend(LeaseKind.LOCK, "backend", ALICE, ttl_ms=1000)
    await sweep_until(store, "the second reminder", reminders=1)

    first, second = await events_of(store, "backend", "reminder")
    assert first.data["expires_at"] == taken.lease.expires_at
    assert second.data["expires_at"] == extended.lease.expires_at


async def test_releasing_cancels_the_reminder(short_reminders: Store, settings: Settings) -> None:
    """Released before its reminder is due: no reminder is ever sent."""
    store = short_reminders
    slack = Recorder("slack")
    async with running_bot(store, settings, slack) as (timeline, _announcer):
        taken = await store.acquire(
            LeaseKind.LOCK, "backend", ALICE, ttl_ms=1000, origin=ORIGIN, via=ORIGIN
        )
        await store.release(LeaseKind.LOCK, "backend", ALICE, via=ORIGIN)
        assert await store.redis.zscore(store.key("timeline"), "lock:backend") is None

        await redis_clock_passes(store, taken.lease.expires_at)
        sweeps = timeline.sweeps
        await wait_for(lambda: timeline.sweeps >= sweeps + 2, "two more sweeps")
        await wait_for(lambda: drained(store), "the announcer to catch up")

    assert await events_of(store, "backend", "reminder") == []
    assert slack.dms("UALICE") == []


async def rewrite_lease(store: Store, kind: str, name: str, **changes: object) -> dict:
    """Change fields of a stored lease (None removes one), keeping its TTL and index entry."""
    key = store.key("lease", kind, name)
    lease = {**orjson.loads(await store.redis.get(key)), **changes}
    lease = {field: value for field, value in lease.items() if value is not None}
    await store.redis.set(key, orjson.dumps(lease), keepttl=True)
    await store.redis.hset(store.key("leases"), f"{kind}:{name}", orjson.dumps(lease))
    return lease


async def test_reminders_missed_while_no_bot_ran_are_all_sent(
    redis_server_url: str, settings: Settings
) -> None:
    """Both reminders of a lease fell due while nothing swept: one sweep sends both, each
    with its own due time, and the lease's entry moves on to its expiry."""
    store = policy_store(redis_server_url, settings, reminder_offsets_ms=(20 * MINUTE, MINUTE))
    try:
        taken = await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=120 * MINUTE)
        missed = [taken.now_ms - 2000, taken.now_ms - 1000]
        await rewrite_lease(store, "lock", "backend", remind_at=missed)
        await store.redis.zadd(store.key("timeline"), {"lock:backend": missed[0]})

        result = await store.sweep_due()
        reminders = await events_of(store, "backend", "reminder")
        entry = await store.redis.zscore(store.key("timeline"), "lock:backend")
    finally:
        await store.close()

    assert result.reminders == 2
    assert [event.data["due_at"] for event in reminders] == missed
    assert entry == taken.lease.expires_at


async def test_timeline_entries_written_before_one_entry_per_lease_are_still_served(
    store: Store,
) -> None:
    """`remind:`/`expire:` entries from before: a lease written then still gets its reminder
    and its expiry; a later lease of the same name is not reminded by them."""
    timeline = store.key("timeline")
    legacy = await store.acquire(LeaseKind.LOCK, "legacy", ALICE, ttl_ms=120 * MINUTE)
    await rewrite_lease(store, "lock", "legacy", remind_at=None)
    await store.redis.zrem(timeline, "lock:legacy")
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=120 * MINUTE)
    gone = await store.acquire(LeaseKind.LOCK, "gone", ALICE, ttl_ms=120 * MINUTE)
    await store.redis.delete(store.key("lease", "lock", "gone"))  # expired, not yet noticed
    due = legacy.now_ms - 1000
    await store.redis.zadd(
        timeline,
        {
            "remind:lock:legacy:1": due,
            "expire:lock:legacy": legacy.lease.expires_at,
            "remind:lock:backend:1": due,
            "expire:lock:gone": due,
        },
    )

    result = await store.sweep_due()

    assert (result.due, result.reminders, result.expired) == (3, 1, 1)
    [reminder] = await events_of(store, "legacy", "reminder")
    assert reminder.data["due_at"] == due
    assert await events_of(store, "backend", "reminder") == []
    [expired] = await events_of(store, "gone", "expired")
    assert expired.data["token"] == gone.lease.token
    assert await store.redis.zscore(timeline, "expire:lock:legacy") == legacy.lease.expires_at


async def test_each_reminder_is_sent_once(short_reminders: Store) -> None:
    """Sweeping again after a reminder went out finds nothing more to send."""
    store = short_reminders
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=2000)
    await sweep_until(store, "the reminder", reminders=1)

    again = await store.sweep_due()

    assert again.reminders == 0
    assert len(await events_of(store, "backend", "reminder")) == 1


async def test_reminder_comes_before_the_expiry(store: Store, settings: Settings) -> None:
    """The holder hears "expires at" before "expired", in the stream and in their DMs."""
    slack = Recorder("slack")
    async with running_bot(store, settings, slack):
        await store.acquire(
            LeaseKind.LOCK, "backend", ALICE, ttl_ms=2000, origin=ORIGIN, via=ORIGIN
        )
        await wait_for(lambda: len(slack.dms("UALICE")) == 2, "the reminder and expiry DMs")

    reminder, expired = slack.dms("UALICE")
    assert " expires at " in reminder.text
    assert " expired at " in expired.text
    [reminder_event] = await events_of(store, "backend", "reminder")
    [expired_event] = await events_of(store, "backend", "expired")
    assert reminder_event.at <= expired_event.at
    assert _stream_order(reminder_event.id) < _stream_order(expired_event.id)


def _stream_order(event_id: str) -> tuple[int, int]:
    millis, _, sequence = event_id.partition("-")
    return int(millis), int(sequence)


# -----------------------------------------------------------------------------------------
# scale


async def test_sweep_work_follows_due_entries_not_live_leases(store: Store) -> None:
    """With 5,000 live leases and 3 expired ones, a sweep handles only the 6 due entries."""
    holder = Holder("local", "ci-bot", "ci-bot")
    semaphore = asyncio.Semaphore(64)

    async def take(name: str, ttl_ms: int) -> None:
        async with semaphore:
            await store.acquire(LeaseKind.LOCK, name, holder, ttl_ms=ttl_ms)

    await asyncio.gather(*(take(f"svc-{i}", 120 * MINUTE) for i in range(5000)))
    short = [
        await store.acquire(LeaseKind.LOCK, f"short-{i}", holder, ttl_ms=300) for i in range(3)
    ]
    assert all(change.outcome == "acquired" for change in short)

    async def all_gone() -> bool:
        return all([await store.get(LeaseKind.LOCK, f"short-{i}") is None for i in range(3)])

    await wait_for(all_gone, "the short leases to expire")
    result = await store.sweep_due()

    assert (result.due, result.expired, result.reminders) == (3, 3, 0)
    timeline = store.key("timeline")
    assert await store.redis.zcard(timeline) == 5000  # one entry per long lease
    assert await store.redis.zscore(timeline, "lock:svc-4999") is not None
    assert (await store.sweep_due()).due == 0


# -----------------------------------------------------------------------------------------
# the scheduler


async def test_scheduler_has_fixed_in_memory_jobs_not_one_per_lease(
    store: Store, settings: Settings
) -> None:
    """One sweep job with a stable id in the memory job store, however many leases exist."""
    timeline = Timeline(store, settings)
    timeline.start()
    try:
        jobs_before = [job.id for job in timeline.scheduler.get_jobs()]
        for i in range(20):
            await store.acquire(LeaseKind.LOCK, f"svc-{i}", ALICE, ttl_ms=1000)
        sweeps = timeline.sweeps
        await wait_for(lambda: timeline.sweeps > sweeps, "a sweep")
        jobs_after = [job.id for job in timeline.scheduler.get_jobs()]
        # APScheduler 3 has no public accessor for its job stores.
        stores = timeline.scheduler._jobstores
    finally:
        await timeline.stop()

    assert jobs_before == jobs_after == [SWEEP_JOB_ID]
    assert list(stores) == ["default"]
    assert type(stores["default"]) is MemoryJobStore


async def test_digest_job_is_registered_with_a_stable_id(store: Store, settings: Settings) -> None:
    """A configured digest adds one more fixed job with a stable id, `daily-digest`."""

    async def digest() -> None:
        """Nothing to post in this test."""

    with_digest = settings.model_copy(update={"digest_cron": "0 9 * * 1-5"})
    timeline = Timeline(store, with_digest, digest=digest)
    timeline.start()
    try:
        ids = sorted(job.id for job in timeline.scheduler.get_jobs())
    finally:
        await timeline.stop()

    assert ids == ["daily-digest", SWEEP_JOB_ID]


# -----------------------------------------------------------------------------------------
# bringing the store back


class RecoveryCounter:
    """A recover callback that counts how often the timeline asked for the store back."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


async def test_an_unavailable_store_is_asked_back_at_most_every_interval(
    settings: Settings, namespace: str
) -> None:
    """Sweeps against a store nobody answers ask for recovery once per interval, not per tick."""
    dead = Store(connect(f"redis://127.0.0.1:{_free_port()}/0"), namespace=namespace)
    recover = RecoveryCounter()
    timeline = Timeline(dead, settings, recover=recover)
    try:
        for _ in range(3):
            await timeline.sweep()
    finally:
        await dead.close()

    assert recover.calls == 1


async def test_a_refused_sweep_does_not_ask_for_the_store_back(
    store: Store, settings: Settings
) -> None:
    """A timeline key overwritten by hand is refused by a store that answers: no restart."""
    await store.redis.set(store.key("timeline"), "not a sorted set")
    recover = RecoveryCounter()
    timeline = Timeline(store, settings, recover=recover)

    await timeline.sweep()

    assert recover.calls == 0
