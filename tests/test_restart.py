"""Restart safety: what falls due while no deploybot runs is posted after it starts, once, and
marked as late. The bot is run as `deploybot run` runs it, through `time_driven`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ResponseError
from test_announcer import (
    ALICE,
    ANNOUNCE,
    BOB,
    CHANNEL,
    ORIGIN,
    Recorder,
    drained,
    make_runtime,
    policy_store,
    wait_for,
)

from adapters.runner import time_driven
from bot import announcer
from bot.announcer import GROUP
from bot.config import Settings
from bot.model import Holder, LeaseKind, Origin
from bot.runtime import Runtime
from bot.store import Store

CI = Holder("local", "ci-bot", "ci-bot")
CLI_VIA = Origin("local", "cli")

# Announcements more than this late are marked; the real threshold (10 s) would make every
# restart test wait that long, so the tests lower it through the module constant.
LATE_AFTER_MS = 500


@pytest.fixture
def settings(namespace: str) -> Settings:
    """Fast sweeps and an announcement channel."""
    return Settings(
        namespace=namespace, sweep_interval_s=0.1, announce_channels=[f"slack:{ANNOUNCE}"]
    )


@pytest.fixture(autouse=True)
def _late_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(announcer, "LATE_AFTER_MS", LATE_AFTER_MS)


@pytest.fixture
async def runtime(redis_server_url: str, settings: Settings) -> AsyncIterator[Runtime]:
    """A runtime whose reminders come 3 s before expiry, or at half-life below 6 s."""
    store = policy_store(redis_server_url, settings, reminder_offsets_ms=(3000,))
    try:
        yield make_runtime(store, settings)
    finally:
        await store.close()


async def group_exists(store: Store) -> bool:
    try:
        groups = await store.redis.xinfo_groups(store.key("events"))
    except ResponseError:
        return False
    return any(group["name"] == GROUP for group in groups)


async def redis_clock_passes(store: Store, at_ms: float) -> None:
    async def passed() -> bool:
        return await store.now_ms() > at_ms

    await wait_for(passed, f"Redis time {at_ms}")


async def earlier_run(runtime: Runtime) -> None:
    """Run and stop the bot once, as before any restart: its consumer group now exists."""
    async with time_driven(runtime, {"slack": Recorder("slack")}, None):
        await wait_for(lambda: group_exists(runtime.store), "the announcer's consumer group")


async def test_what_fell_due_while_stopped_is_posted_once_and_marked_late(
    runtime: Runtime,
) -> None:
    """Expiry and reminder due during downtime: posted after start, marked late; a later
    expiry is not; a CLI lock taken meanwhile is announced too."""
    store = runtime.store
    await earlier_run(runtime)

    backend = await store.acquire(
        LeaseKind.LOCK, "backend", ALICE, ttl_ms=1000, origin=ORIGIN, via=ORIGIN
    )
    web = await store.acquire(LeaseKind.LOCK, "web", BOB, ttl_ms=4000, origin=ORIGIN, via=ORIGIN)
    await store.acquire(LeaseKind.LOCK, "api", CI, ttl_ms=60_000, via=CLI_VIA)
    web_reminder_due = web.lease.acquired_at + 2000
    await redis_clock_passes(store, web_reminder_due + 2 * LATE_AFTER_MS)
    assert await store.get(LeaseKind.LOCK, "backend") is None
    assert await store.get(LeaseKind.LOCK, "web") is not None

    slack = Recorder("slack")
    async with time_driven(runtime, {"slack": slack}, None):
        await wait_for(lambda: len(slack.channel(CHANNEL)) == 2, "both expiry announcements")
        await wait_for(lambda: drained(store), "the announcer to catch up")

    backend_gone, web_gone = (p.text for p in slack.channel(CHANNEL))
    assert backend_gone.startswith("The lock on `backend` held by Alice auto-released after ")
    assert "(late: this was due " in backend_gone
    assert "while deploybot was not running" in backend_gone
    assert web_gone.startswith("The lock on `web` held by Bob auto-released after ")
    assert "late" not in web_gone  # it expired while the bot ran

    [alice_expired] = [p.text for p in slack.dms("UALICE") if " expired at " in p.text]
    assert "late" in alice_expired
    [bob_reminder] = [p.text for p in slack.dms("UBOB") if " expires at " in p.text]
    assert bob_reminder.startswith("Your lock on `web` expires at ")
    assert "(late: this was due " in bob_reminder
    assert len(slack.dms("UALICE")) <= 2  # one expiry DM, at most one (moot) reminder

    cli = [p.text for p in slack.channel(ANNOUNCE) if "from the CLI" in p.text]
    assert len(cli) == 1 and cli[0].startswith("ci-bot locked `api` from the CLI")
    assert backend.lease.expires_at < web.lease.expires_at


async def test_starting_again_posts_nothing_twice(runtime: Runtime) -> None:
    """Stop and start once more: nothing already announced is announced again."""
    store = runtime.store
    await earlier_run(runtime)
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=300, origin=ORIGIN, via=ORIGIN)

    async def expired() -> bool:
        return await store.get(LeaseKind.LOCK, "backend") is None

    await wait_for(expired, "the lock to expire")
    first = Recorder("slack")
    async with time_driven(runtime, {"slack": first}, None):
        await wait_for(lambda: first.channel(CHANNEL), "the late expiry announcement")
        await wait_for(lambda: drained(store), "the announcer to catch up")

    second = Recorder("slack")
    async with time_driven(runtime, {"slack": second}, None):
        # A CLI lock is announced; once it is, everything before it has been looked at.
        await store.acquire(LeaseKind.LOCK, "marker", CI, ttl_ms=60_000, via=CLI_VIA)
        await wait_for(lambda: second.channel(ANNOUNCE), "the marker announcement")
        await wait_for(lambda: drained(store), "the announcer to catch up")

    assert len(first.channel(CHANNEL)) == 1
    assert [p.text.split(" until ")[0] for p in second.posts] == [
        "ci-bot locked `marker` from the CLI,"
    ]


async def test_expiry_recorded_by_the_cli_while_stopped_is_still_marked_late(
    runtime: Runtime,
) -> None:
    """`deploybot status` while the bot is down records the expiry; posted later, it is late."""
    store = runtime.store
    await earlier_run(runtime)
    taken = await store.acquire(
        LeaseKind.LOCK, "backend", ALICE, ttl_ms=300, origin=ORIGIN, via=ORIGIN
    )

    async def expired() -> bool:
        return not await store.redis.exists(store.key("lease", "lock", "backend"))

    await wait_for(expired, "the lock to expire")
    await store.leases()  # what `deploybot status` runs: it notices the expiry and records it
    await redis_clock_passes(store, taken.lease.expires_at + 3 * LATE_AFTER_MS)

    slack = Recorder("slack")
    async with time_driven(runtime, {"slack": slack}, None):
        await wait_for(lambda: slack.channel(CHANNEL), "the expiry announcement")

    [post] = slack.channel(CHANNEL)
    assert "(late: this was due " in post.text, post.text


async def handoff_while_stopped(runtime: Runtime, *, then_release: bool) -> None:
    """Alice's lock on `backend` goes to Bob, first in line, while no deploybot runs; Bob
    releases it again when `then_release`. Then enough time passes to make it all late."""
    store = runtime.store
    await earlier_run(runtime)
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=60_000, via=CLI_VIA)
    await store.join_waitlist(LeaseKind.LOCK, "backend", BOB, origin=ORIGIN, via=ORIGIN)
    handed = await store.release(LeaseKind.LOCK, "backend", ALICE, via=CLI_VIA)
    if then_release:
        await store.release(LeaseKind.LOCK, "backend", BOB, via=CLI_VIA)
    await redis_clock_passes(store, handed.now_ms + 2 * LATE_AFTER_MS)


async def late_handoff_posts(runtime: Runtime, *, then_release: bool) -> Recorder:
    """A handoff made while no deploybot ran, then what a started one posts about it."""
    await handoff_while_stopped(runtime, then_release=then_release)

    slack = Recorder("slack")
    async with time_driven(runtime, {"slack": slack}, None):
        await wait_for(lambda: slack.dms("UBOB"), "Bob's handoff DM")
        await wait_for(lambda: drained(runtime.store), "the announcer to catch up")
    return slack


async def test_a_handoff_made_while_stopped_is_marked_late(runtime: Runtime) -> None:
    """Bob still holds what was handed to him: the DM says until when, and that it is late."""
    slack = await late_handoff_posts(runtime, then_release=False)

    [dm] = slack.dms("UBOB")
    assert dm.text.startswith("You were first in line: the lock on `backend` is yours until ")
    assert "(late: this happened " in dm.text
    assert "while deploybot was not running" in dm.text
    assert [lease.name for lease in dm.reply.leases] == ["backend"]
    handoff = [p.text for p in slack.channel(CHANNEL) if "from the waitlist" in p.text]
    assert len(handoff) == 1 and "(late: this happened " in handoff[0]


async def test_a_handoff_that_ended_while_stopped_says_it_ended(runtime: Runtime) -> None:
    """Bob got the lock and released it before any deploybot ran: the late DM says it was
    his and has ended, not that it is his until some time, and offers no buttons."""
    slack = await late_handoff_posts(runtime, then_release=True)

    [dm] = slack.dms("UBOB")
    assert dm.text.startswith("You were first in line: the lock on `backend` was handed to you")
    assert "has ended since" in dm.text
    assert "yours until" not in dm.text
    assert "(late: this happened " in dm.text
    assert dm.reply.leases == ()
    [handoff] = [p.text for p in slack.channel(CHANNEL) if "from the waitlist" in p.text]
    assert "has ended since" in handoff and "(late: " in handoff


async def test_every_announcement_made_late_is_marked(runtime: Runtime) -> None:
    """Locks, releases, forced releases and frees recorded while stopped are all marked."""
    store = runtime.store
    await earlier_run(runtime)
    await store.acquire(LeaseKind.LOCK, "api", CI, ttl_ms=60_000, via=CLI_VIA)
    await store.acquire(LeaseKind.CLAIM, "staging-1", ALICE, ttl_ms=60_000, origin=ORIGIN)
    done = await store.release(LeaseKind.CLAIM, "staging-1", ALICE, via=CLI_VIA)
    await redis_clock_passes(store, done.now_ms + 2 * LATE_AFTER_MS)

    slack = Recorder("slack")
    async with time_driven(runtime, {"slack": slack}, None):
        await wait_for(lambda: len(slack.channel(ANNOUNCE)) >= 2, "both announcements")
        await wait_for(lambda: drained(store), "the announcer to catch up")

    assert len(slack.posts) >= 2
    for post in slack.posts:
        assert "(late: this happened " in post.text, post.text
