"""Tests for bot.store against a real Redis-compatible server: atomic leases, expiry, history."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio import Redis

from bot import scripts
from bot.errors import CorruptRecord, LeaseHeld, NotHeld, NotHolder, StoreUnavailable
from bot.model import Event, Holder, Job, Lease, LeaseKind, Origin
from bot.store import OutageLog, Store, connect

ALICE = Holder("local", "alice", "Alice")
BOB = Holder("local", "bob", "Bob")
CAROL = Holder("slack", "U0CAROL", "Carol")
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
WAIT_LIMIT_S = 5.0

# Records no deploybot wrote: unparseable, the wrong JSON type, an object missing most
# fields, and one that passes the scripts' own check (holder, token, expiry) but has no kind
# or name, so only Python notices it is damaged.
CORRUPT_VALUES = {
    "not-json": "not json",
    "json-array": "[]",
    "kind-only": '{"kind":"lock"}',
    "no-kind-or-name": json.dumps(
        {
            "holder": {"platform": ALICE.platform, "user_id": ALICE.user_id},
            "token": 1,
            "expires_at": 1,
        }
    ),
}


@pytest.fixture(params=list(LeaseKind), ids=str)
def kind(request: pytest.FixtureRequest) -> LeaseKind:
    """Each store test runs for deploy locks and for staging claims."""
    return LeaseKind(request.param)


async def wait_until(condition: Callable[[], Awaitable[bool]], *, what: str) -> None:
    """Poll `condition` until it holds, failing the test after WAIT_LIMIT_S seconds."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT_LIMIT_S}s waiting until {what}")
        await asyncio.sleep(0.02)


async def wait_until_expired(store: Store, lease: Lease) -> None:
    """Wait until Redis dropped the lease key and its clock passed the recorded expiry."""
    key = store.key("lease", lease.kind, lease.name)

    async def expired() -> bool:
        gone = not await store.redis.exists(key)
        return gone and await store.now_ms() >= lease.expires_at

    await wait_until(expired, what=f"{key} expired")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def event_types(store: Store, name: str, count: int = 20) -> list[str]:
    """The types of the latest events about `name`, newest first."""
    return [event.type for event in await store.history(name, count=count)]


# Acquire


async def test_acquire_free_lease_takes_it_with_a_token(store: Store, kind: LeaseKind) -> None:
    """Acquiring a free lease returns 'acquired', a token and Redis-clock times."""
    origin = Origin("slack", "C0DEPLOY", "1700000000.000100")

    change = await store.acquire(kind, "backend", ALICE, ttl_ms=HOUR_MS, note="v1", origin=origin)

    lease = change.lease
    assert change.outcome == "acquired"
    assert (lease.kind, lease.name, lease.holder, lease.note) == (kind, "backend", ALICE, "v1")
    assert lease.token > 0
    assert lease.acquired_at == change.now_ms
    assert lease.expires_at == change.now_ms + HOUR_MS
    assert lease.origin == origin
    assert await store.get(kind, "backend") == lease
    pttl = await store.redis.pttl(store.key("lease", kind, "backend"))
    assert HOUR_MS - 5_000 < pttl <= HOUR_MS


async def test_acquire_by_holder_refreshes_keeping_token_and_note(
    store: Store, kind: LeaseKind
) -> None:
    """Acquiring again as the holder refreshes: same token, new expiry, empty note keeps it."""
    first = await store.acquire(kind, "backend", ALICE, ttl_ms=MINUTE_MS, note="hotfix")

    again = await store.acquire(kind, "backend", ALICE, ttl_ms=HOUR_MS)

    assert again.outcome == "refreshed"
    assert again.lease.token == first.lease.token
    assert again.lease.acquired_at == first.lease.acquired_at
    assert again.lease.expires_at == again.now_ms + HOUR_MS
    assert again.lease.expires_at > first.lease.expires_at
    assert again.lease.note == "hotfix"
    assert await store.get(kind, "backend") == again.lease


async def test_refresh_with_a_default_ttl_never_shortens_the_lease(
    store: Store, kind: LeaseKind
) -> None:
    """A refresh whose TTL is only the default keeps a later expiry; an asked-for TTL wins."""
    first = await store.acquire(kind, "backend", ALICE, ttl_ms=2 * HOUR_MS)

    kept = await store.acquire(kind, "backend", ALICE, ttl_ms=HOUR_MS, keep_longer=True)
    assert kept.lease.expires_at == first.lease.expires_at
    assert await store.redis.pttl(store.key("lease", kind, "backend")) > HOUR_MS

    cut = await store.acquire(kind, "backend", ALICE, ttl_ms=HOUR_MS)
    assert cut.lease.expires_at == cut.now_ms + HOUR_MS
    longer = await store.acquire(kind, "backend", ALICE, ttl_ms=3 * HOUR_MS, keep_longer=True)
    assert longer.lease.expires_at == longer.now_ms + 3 * HOUR_MS


async def test_refresh_with_a_note_replaces_the_note(store: Store, kind: LeaseKind) -> None:
    """A refresh that carries a note replaces the old note and keeps the token."""
    first = await store.acquire(kind, "backend", ALICE, ttl_ms=HOUR_MS, note="old")

    again = await store.acquire(kind, "backend", ALICE, ttl_ms=HOUR_MS, note="new")

    assert again.lease.note == "new"
    assert again.lease.token == first.lease.token
    stored = await store.get(kind, "backend")
    assert stored is not None and stored.note == "new"


async def test_acquire_held_by_other_raises_lease_held(store: Store, kind: LeaseKind) -> None:
    """Another holder's acquire fails with LeaseHeld carrying holder, note and times."""
    first = await store.acquire(kind, "backend", ALICE, ttl_ms=HOUR_MS, note="INC-12")

    with pytest.raises(LeaseHeld) as caught:
        await store.acquire(kind, "backend", BOB, ttl_ms=HOUR_MS, note="mine")

    held = caught.value.lease
    assert held.holder == ALICE
    assert held.note == "INC-12"
    assert held.acquired_at == first.lease.acquired_at
    assert held.expires_at == first.lease.expires_at
    assert held.token == first.lease.token
    assert caught.value.now_ms >= first.now_ms
    assert await store.get(kind, "backend") == first.lease


async def test_holder_identity_is_platform_and_user_id(store: Store, kind: LeaseKind) -> None:
    """The same user id on another platform is another person; a new display name is not."""
    await store.acquire(kind, "backend", ALICE, ttl_ms=HOUR_MS)

    with pytest.raises(LeaseHeld):
        await store.acquire(kind, "backend", Holder("slack", "alice", "Alice"), ttl_ms=HOUR_MS)
    renamed = Holder(ALICE.platform, ALICE.user_id, "Alice Liddell")
    again = await store.acquire(kind, "backend", renamed, ttl_ms=HOUR_MS)

    assert again.outcome == "refreshed"
    assert again.lease.holder.display == "Alice Liddell"


async def test_lock_and_claim_of_one_name_are_separate(store: Store) -> None:
    """A lock and a claim on the same name are two leases that do not block each other."""
    lock = await store.acquire(LeaseKind.LOCK, "api", ALICE, ttl_ms=HOUR_MS)
    claim = await store.acquire(LeaseKind.CLAIM, "api", BOB, ttl_ms=HOUR_MS)

    assert lock.outcome == claim.outcome == "acquired"
    assert (await store.get(LeaseKind.LOCK, "api")) == lock.lease
    assert (await store.get(LeaseKind.CLAIM, "api")) == claim.lease


# Release


async def test_release_by_holder_frees_the_lease(store: Store, kind: LeaseKind) -> None:
    """The holder's release deletes the lease, its index entry and records 'released'."""
    taken = await store.acquire(kind, "backend", ALICE, ttl_ms=HOUR_MS)

    released = await store.release(kind, "backend", ALICE)

    assert released.outcome == "released"
    assert released.lease == taken.lease
    assert await store.get(kind, "backend") is None
    assert not await store.redis.hexists(store.key("leases"), f"{kind}:backend")
    assert (await store.leases()).leases == []
    assert await event_types(store, "backend") == ["released", "acquired"]


async def test_release_by_non_holder_changes_nothing(store: Store, kind: LeaseKind) -> None:
    """A non-holder's release raises NotHolder naming the holder and leaves the lease as is."""
    taken = await store.acquire(kind, "backend", ALICE, ttl_ms=HOUR_MS)

    with pytest.raises(NotHolder) as caught:
        await store.release(kind, "backend", BOB)

    assert caught.value.lease.holder == ALICE
    assert caught.value.action == ("unlock" if kind is LeaseKind.LOCK else "release")
    assert await store.get(kind, "backend") == taken.lease
    assert await event_types(store, "backend") == ["acquired"]


async def test_release_of_free_lease_raises_not_held(store: Store, kind: LeaseKind) -> None:
    """Releasing a lease nobody holds raises NotHeld for that kind and name."""
    with pytest.raises(NotHeld) as caught:
        await store.release(kind, "backend", ALICE)

    assert (caught.value.kind, caught.value.name) == (kind, "backend")
    assert await event_types(store, "backend") == []


# Extend


async def test_extend_by_holder_moves_expiry_keeping_token(store: Store, kind: LeaseKind) -> None:
    """The holder's extend sets expiry to Redis now + TTL and keeps the token."""
    taken = await store.acquire(kind, "backend", ALICE, ttl_ms=MINUTE_MS)

    extended = await store.extend(kind, "backend", ALICE, ttl_ms=HOUR_MS)

    assert extended.outcome == "extended"
    assert extended.lease.token == taken.lease.token
    assert extended.lease.expires_at == extended.now_ms + HOUR_MS
    assert extended.lease.expires_at > taken.lease.expires_at
    assert await store.get(kind, "backend") == extended.lease
    pttl = await store.redis.pttl(store.key("lease", kind, "backend"))
    assert pttl > MINUTE_MS
    assert await event_types(store, "backend") == ["extended", "acquired"]


async def test_extend_by_non_holder_is_refused(store: Store, kind: LeaseKind) -> None:
    """A non-holder's extend raises NotHolder and leaves the expiry where it was."""
    taken = await store.acquire(kind, "backend", ALICE, ttl_ms=MINUTE_MS)

    with pytest.raises(NotHolder) as caught:
        await store.extend(kind, "backend", BOB, ttl_ms=HOUR_MS)

    assert caught.value.lease.holder == ALICE
    assert caught.value.action == "extend"
    assert await store.get(kind, "backend") == taken.lease


async def test_extend_of_free_lease_raises_not_held(store: Store, kind: LeaseKind) -> None:
    """Extending a lease nobody holds raises NotHeld and creates nothing."""
    with pytest.raises(NotHeld):
        await store.extend(kind, "backend", ALICE, ttl_ms=HOUR_MS)

    assert await store.get(kind, "backend") is None


# Forced release


async def test_force_release_by_anyone_records_who_and_why(store: Store, kind: LeaseKind) -> None:
    """A forced release works for a non-holder and the history says 'forced', by whom, why."""
    taken = await store.acquire(kind, "backend", ALICE, ttl_ms=HOUR_MS)

    forced = await store.release(kind, "backend", BOB, force_reason="deploy is stuck")

    assert forced.outcome == "forced"
    assert forced.lease == taken.lease
    assert await store.get(kind, "backend") is None
    assert not await store.redis.hexists(store.key("leases"), f"{kind}:backend")
    latest = (await store.history("backend", count=1))[0]
    assert (latest.type, latest.kind) == ("forced", str(kind))
    assert latest.data["forced_by"] == {"platform": "local", "user_id": "bob", "display": "Bob"}
    assert latest.data["reason"] == "deploy is stuck"
    assert latest.data["holder"]["user_id"] == "alice"


async def test_force_release_of_free_lease_raises_not_held(store: Store, kind: LeaseKind) -> None:
    """Forcing a lease nobody holds raises NotHeld and records nothing."""
    with pytest.raises(NotHeld):
        await store.release(kind, "backend", BOB, force_reason="cleanup")

    assert await event_types(store, "backend") == []


# Expiry


async def test_expired_lease_is_swept_exactly_once(store: Store, kind: LeaseKind) -> None:
    """After the TTL runs out the sweep records one 'expired' event, and only once."""
    taken = await store.acquire(kind, "backend", ALICE, ttl_ms=300, note="short")
    await wait_until_expired(store, taken.lease)

    assert (await store.sweep_due()).expired == 1
    assert (await store.sweep_due()).expired == 0

    assert await event_types(store, "backend") == ["expired", "acquired"]
    expired = (await store.history("backend", count=1))[0]
    assert expired.data["token"] == taken.lease.token
    assert expired.data["holder"]["user_id"] == "alice"
    assert not await store.redis.hexists(store.key("leases"), f"{kind}:backend")
    assert await store.redis.zcard(store.key("timeline")) == 0


async def test_acquire_after_expiry_records_expired_first(store: Store, kind: LeaseKind) -> None:
    """An acquire before any sweep writes 'expired' once, before its own 'acquired'."""
    taken = await store.acquire(kind, "backend", ALICE, ttl_ms=300)
    await wait_until_expired(store, taken.lease)

    second = await store.acquire(kind, "backend", BOB, ttl_ms=HOUR_MS)

    assert second.outcome == "acquired"
    assert second.lease.holder == BOB
    assert (await store.sweep_due()).expired == 0
    assert await event_types(store, "backend") == ["acquired", "expired", "acquired"]
    expired = (await store.history("backend", count=2))[1]
    assert expired.data["token"] == taken.lease.token


@pytest.mark.parametrize("operation", ["release", "extend"])
async def test_release_or_extend_after_expiry_records_expired(
    store: Store, kind: LeaseKind, operation: str
) -> None:
    """A release or extend that finds the lease expired raises NotHeld and writes 'expired'."""
    taken = await store.acquire(kind, "backend", ALICE, ttl_ms=300)
    await wait_until_expired(store, taken.lease)

    with pytest.raises(NotHeld):
        if operation == "release":
            await store.release(kind, "backend", ALICE)
        else:
            await store.extend(kind, "backend", ALICE, ttl_ms=HOUR_MS)

    assert (await store.sweep_due()).expired == 0
    assert await event_types(store, "backend") == ["expired", "acquired"]


async def test_extended_lease_is_not_expired_at_old_due_time(
    store: Store, kind: LeaseKind
) -> None:
    """A lease extended past its first expiry is not swept when that first expiry passes."""
    taken = await store.acquire(kind, "backend", ALICE, ttl_ms=300)
    await store.extend(kind, "backend", ALICE, ttl_ms=MINUTE_MS)

    await asyncio.sleep(0.5)

    assert (await store.sweep_due()).expired == 0
    current = await store.get(kind, "backend")
    assert current is not None and current.token == taken.lease.token
    assert await event_types(store, "backend") == ["extended", "acquired"]


async def test_leases_listing_omits_expired_leases(store: Store, kind: LeaseKind) -> None:
    """The status listing drops an expired lease and keeps the live one."""
    short = await store.acquire(kind, "short", ALICE, ttl_ms=300)
    long = await store.acquire(kind, "long", BOB, ttl_ms=HOUR_MS)
    await wait_until_expired(store, short.lease)

    listing = await store.leases()

    assert listing.leases == [long.lease]
    assert listing.corrupt == []
    assert await event_types(store, "short") == ["expired", "acquired"]


# Fencing tokens


async def test_tokens_increase_across_cycles_and_expiry(store: Store, kind: LeaseKind) -> None:
    """Each acquire after a release or an expiry gets a larger token than any before it."""
    tokens = []
    for holder in (ALICE, BOB, ALICE, CAROL):
        change = await store.acquire(kind, "backend", holder, ttl_ms=HOUR_MS)
        tokens.append(change.lease.token)
        await store.release(kind, "backend", holder)

    short = await store.acquire(kind, "backend", BOB, ttl_ms=300)
    tokens.append(short.lease.token)
    await wait_until_expired(store, short.lease)
    tokens.append((await store.acquire(kind, "backend", BOB, ttl_ms=HOUR_MS)).lease.token)

    assert tokens == sorted(set(tokens))


@pytest.mark.parametrize("stale_counter", ["1", "earliest", "missing"])
async def test_tokens_increase_after_fence_counter_goes_back(
    store: Store, kind: LeaseKind, stale_counter: str
) -> None:
    """A fence counter set back (a failover to a replica that missed writes) repeats no token."""
    tokens = []
    for holder in (ALICE, BOB, CAROL):
        tokens.append((await store.acquire(kind, "backend", holder, ttl_ms=HOUR_MS)).lease.token)
        await store.release(kind, "backend", holder)

    fence = store.key("fence", kind, "backend")
    if stale_counter == "missing":
        await store.redis.delete(fence)
    else:
        await store.redis.set(fence, "1" if stale_counter == "1" else str(tokens[0]))

    # A failover takes far longer than the few milliseconds tokens can run ahead of the clock.
    async def clock_passed_tokens() -> bool:
        return await store.now_ms() > max(tokens)

    await wait_until(clock_passed_tokens, what="the Redis clock passed the issued tokens")

    after = await store.acquire(kind, "backend", ALICE, ttl_ms=HOUR_MS)

    assert after.lease.token > max(tokens)


async def test_a_fence_counter_ahead_of_the_clock_still_counts_up(
    store: Store, kind: LeaseKind
) -> None:
    """A counter past Redis TIME (a clock set back) gives its next value, and is kept."""
    fence = store.key("fence", kind, "backend")
    ahead = await store.now_ms() + 3_600_000
    await store.redis.set(fence, str(ahead))

    first = await store.acquire(kind, "backend", ALICE, ttl_ms=HOUR_MS)
    await store.release(kind, "backend", ALICE)
    second = await store.acquire(kind, "backend", BOB, ttl_ms=HOUR_MS)

    assert (first.lease.token, second.lease.token) == (ahead + 1, ahead + 2)
    assert int(await store.redis.get(fence)) == ahead + 2


# Concurrency

CONTENDERS = 16
ROUNDS = 300
CONTENDERS_CLIENT = "contenders"


@pytest.fixture
async def wide_store(redis_server_url: str, namespace: str) -> AsyncIterator[Store]:
    """A store whose pool has room for every contender's connection at once."""
    client = aioredis.Redis.from_url(
        redis_server_url, decode_responses=True, max_connections=32, client_name=CONTENDERS_CLIENT
    )
    store = Store(client, namespace=namespace)
    try:
        yield store
    finally:
        await store.close()


async def test_concurrent_contenders_never_both_win(wide_store: Store, kind: LeaseKind) -> None:
    """16 holders racing for one lease, 300 times: exactly one wins, the rest see the winner."""
    contenders = [Holder("local", f"user-{i:02d}", f"User {i}") for i in range(CONTENDERS)]
    last_token = 0

    for round_number in range(ROUNDS):
        results = await asyncio.gather(
            *(wide_store.acquire(kind, "backend", who, ttl_ms=HOUR_MS) for who in contenders),
            return_exceptions=True,
        )

        wins = [r for r in results if not isinstance(r, BaseException)]
        losses = [r for r in results if isinstance(r, LeaseHeld)]
        assert len(wins) == 1, f"round {round_number}: {len(wins)} winners"
        assert len(losses) == CONTENDERS - 1, f"round {round_number}: {results!r}"
        winner = wins[0].lease
        assert wins[0].outcome == "acquired"
        assert all(loss.lease.holder == winner.holder for loss in losses)
        assert all(loss.lease.token == winner.token for loss in losses)
        assert winner.token > last_token
        last_token = winner.token

        await wide_store.release(kind, "backend", winner.holder)

    assert await wide_store.get(kind, "backend") is None
    clients = await wide_store.redis.client_list()
    racing = [c for c in clients if c.get("name") == CONTENDERS_CLIENT]
    assert len(racing) >= CONTENDERS, "the contenders did not each have their own connection"


# Corrupt records


async def plant_corrupt_record(store: Store, kind: LeaseKind, name: str, value: str) -> str:
    """Write `value` as the lease record and its index entry, as a hand edit would."""
    key = store.key("lease", kind, name)
    await store.redis.set(key, value)
    await store.redis.hset(store.key("leases"), f"{kind}:{name}", value)
    return key


@pytest.mark.parametrize("value", CORRUPT_VALUES.values(), ids=CORRUPT_VALUES.keys())
async def test_corrupt_record_is_reported_not_crashed_on(
    store: Store, kind: LeaseKind, value: str
) -> None:
    """Acquire, release, extend and get on a damaged record raise CorruptRecord, change nothing."""
    key = await plant_corrupt_record(store, kind, "backend", value)
    operations: list[Callable[[], Awaitable[object]]] = [
        lambda: store.acquire(kind, "backend", ALICE, ttl_ms=HOUR_MS),
        lambda: store.acquire(kind, "backend", BOB, ttl_ms=HOUR_MS),
        lambda: store.release(kind, "backend", ALICE),
        lambda: store.extend(kind, "backend", ALICE, ttl_ms=HOUR_MS),
        lambda: store.get(kind, "backend"),
    ]

    for operation in operations:
        with pytest.raises(CorruptRecord) as caught:
            await operation()
        assert caught.value.key == key

    assert await store.redis.get(key) == value


@pytest.mark.parametrize("value", CORRUPT_VALUES.values(), ids=CORRUPT_VALUES.keys())
async def test_listing_reports_corrupt_records_beside_good_ones(
    store: Store, kind: LeaseKind, value: str
) -> None:
    """The status listing names a corrupt key in `corrupt` and still lists the good leases."""
    good = await store.acquire(kind, "frontend", ALICE, ttl_ms=HOUR_MS)
    key = await plant_corrupt_record(store, kind, "backend", value)

    listing = await store.leases()

    assert listing.leases == [good.lease]
    assert listing.corrupt == [key]


@pytest.mark.parametrize("value", CORRUPT_VALUES.values(), ids=CORRUPT_VALUES.keys())
async def test_force_release_clears_a_corrupt_record(
    store: Store, kind: LeaseKind, value: str
) -> None:
    """A forced release removes a corrupt record, so the lease can be taken again."""
    key = await plant_corrupt_record(store, kind, "backend", value)

    forced = await store.release(kind, "backend", CAROL, force_reason="damaged record")

    assert forced.outcome == "forced"
    assert not await store.redis.exists(key)
    assert (await store.leases()).corrupt == []
    latest = (await store.history("backend", count=1))[0]
    assert latest.type == "forced"
    assert latest.data["reason"] == "damaged record"
    assert (await store.acquire(kind, "backend", ALICE, ttl_ms=HOUR_MS)).outcome == "acquired"


# How the scripts run: a Redis Functions library where the server allows it, else EVALSHA


async def library_loaded(client: Redis, store: Store) -> bool:
    return bool(await client.function_list(library=store._library.name))


async def lease_round_trip(store: Store) -> None:
    """Every lease script once, each answering as it should."""
    assert (await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=HOUR_MS)).outcome == (
        "acquired"
    )
    assert (await store.extend(LeaseKind.LOCK, "backend", ALICE, ttl_ms=HOUR_MS)).outcome == (
        "extended"
    )
    assert (await store.join_waitlist(LeaseKind.LOCK, "backend", BOB)).position == 1
    assert await store.leave_waitlist(LeaseKind.LOCK, "backend", BOB)
    assert (await store.release(LeaseKind.LOCK, "backend", ALICE)).outcome == "released"
    assert (await store.sweep_due()).due == 0
    assert (await store.set_job(Job("build-1", "running", 0, "ci"))).status == "running"


async def test_scripts_run_as_a_library_loaded_again_when_the_server_lost_it(
    store: Store, redis_client: Redis
) -> None:
    """The first call loads the store's library; after FUNCTION FLUSH (or a new server) the
    next call loads it again and nothing fails."""
    await lease_round_trip(store)
    assert await library_loaded(redis_client, store)

    await redis_client.function_flush()
    await lease_round_trip(store)
    assert await library_loaded(redis_client, store)


async def test_scripts_run_by_evalsha_for_a_user_denied_functions(
    redis_server_url: str, redis_client: Redis, namespace: str
) -> None:
    """A user the ACL denies FUNCTION and FCALL (as on a server before Redis 7) still gets
    every operation, by EVALSHA, reloading scripts the server has forgotten."""
    user = f"nofunctions-{namespace}"
    await redis_client.acl_setuser(
        user,
        enabled=True,
        passwords=["+secret"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-function", "-fcall", "-fcall_ro"],
    )
    host_port = redis_server_url.removeprefix("redis://")
    store = Store(connect(f"redis://{user}:secret@{host_port}"), namespace=namespace)
    try:
        await lease_round_trip(store)
        assert not await library_loaded(redis_client, store)

        await redis_client.script_flush()
        await lease_round_trip(store)
        assert not await library_loaded(redis_client, store)
    finally:
        await store.close()
        await redis_client.acl_deluser(user)


# Status listing


async def test_leases_listing_comes_from_the_index(store: Store) -> None:
    """The listing shows indexed leases of both kinds, sorted, and ignores unindexed keys."""
    claim = await store.acquire(LeaseKind.CLAIM, "staging-2", BOB, ttl_ms=HOUR_MS)
    lock = await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
    stray = dict(lock.lease.to_dict(), name="stray")
    await store.redis.set(store.key("lease", "lock", "stray"), json.dumps(stray))

    listing = await store.leases()

    assert listing.leases == [claim.lease, lock.lease]
    assert listing.corrupt == []
    assert listing.now_ms >= lock.now_ms


# History


async def test_history_is_newest_first_for_one_name(store: Store) -> None:
    """History lists only that name's events (both kinds), newest first, up to `count`."""
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
    await store.acquire(LeaseKind.LOCK, "frontend", BOB, ttl_ms=HOUR_MS)
    await store.extend(LeaseKind.LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
    await store.acquire(LeaseKind.CLAIM, "backend", BOB, ttl_ms=HOUR_MS)
    await store.release(LeaseKind.LOCK, "backend", ALICE)

    events = await store.history("backend", count=10)
    latest_two = await store.history("backend", count=2)

    assert [(e.type, e.kind) for e in events] == [
        ("released", "lock"),
        ("acquired", "claim"),
        ("extended", "lock"),
        ("acquired", "lock"),
    ]
    assert all(event.name == "backend" for event in events)
    assert [event.at for event in events] == sorted((e.at for e in events), reverse=True)
    assert latest_two == events[:2]


async def test_history_pages_past_other_names_events(store: Store) -> None:
    """An old event is still found behind more than one page of other names' events."""
    first = await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
    for start in range(0, 1200, 100):
        await asyncio.gather(
            *(
                store.set_job(Job(f"other-{i}", "running", 0, "ci"))
                for i in range(start, start + 100)
            )
        )

    events = await store.history("backend", count=5)

    assert len(events) == 1
    assert isinstance(events[0], Event)
    assert events[0].type == "acquired"
    assert events[0].data["token"] == first.lease.token
    assert await store.redis.xlen(store.key("events")) == 1201


async def test_history_skips_entries_deploybot_did_not_write(store: Store) -> None:
    """A foreign stream entry is skipped, not a crash."""
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
    await store.redis.xadd(store.key("events"), {"something": "else"})

    events = await store.history("backend", count=5)

    assert [event.type for event in events] == ["acquired"]


# Jobs


async def test_set_job_records_and_overwrites(store: Store) -> None:
    """A job status is stored with Redis's time; a later set replaces the status and keeps
    a URL it does not give, and an empty URL clears it."""
    first = await store.set_job(Job("api/build#42", "running", 0, "ci", url="https://ci/42"))
    second = await store.set_job(Job("api/build#42", "succeeded", 0, "ci", detail="green"))

    listing = await store.jobs(retention_ms=HOUR_MS)

    assert first.updated_at > 0
    assert second.updated_at >= first.updated_at
    assert listing.jobs == [second]
    assert (second.status, second.url, second.detail) == ("succeeded", "https://ci/42", "green")
    assert listing.corrupt == []
    cleared = await store.set_job(Job("api/build#42", "succeeded", 0, "ci", url=""))
    assert (cleared.url, cleared.detail) == (None, "green")


async def test_remove_job(store: Store) -> None:
    """Removing a job forgets it; removing an unknown job returns False."""
    await store.set_job(Job("deploy", "running", 0, "ci"))

    assert await store.remove_job("deploy", removed_by="alice") is True
    assert await store.remove_job("deploy", removed_by="alice") is False
    assert await store.remove_job("never-was", removed_by="alice") is False
    assert (await store.jobs(retention_ms=HOUR_MS)).jobs == []
    assert await event_types(store, "deploy") == ["job_removed", "job"]


async def test_finished_jobs_drop_out_after_retention(store: Store) -> None:
    """Succeeded and failed jobs older than the retention vanish; unfinished ones stay."""
    for name, status in [
        ("built", "succeeded"),
        ("broke", "failed"),
        ("building", "running"),
        ("queued", "pending"),
        ("custom", "waiting for approval"),
    ]:
        await store.set_job(Job(name, status, 0, "ci"))

    async def finished_gone() -> bool:
        names = {job.name for job in (await store.jobs(retention_ms=200)).jobs}
        return not names & {"built", "broke"}

    await wait_until(finished_gone, what="finished jobs dropped out")

    listing = await store.jobs(retention_ms=200)
    assert [job.name for job in listing.jobs] == ["building", "custom", "queued"]


async def test_recent_finished_job_stays_listed(store: Store) -> None:
    """A job that finished within the retention is still listed."""
    await store.set_job(Job("built", "succeeded", 0, "ci"))

    listing = await store.jobs(retention_ms=HOUR_MS)

    assert [job.name for job in listing.jobs] == ["built"]


@pytest.mark.parametrize("value", ["not json", "[]", '{"name":"broken"}'])
async def test_corrupt_job_is_reported_not_crashed_on(store: Store, value: str) -> None:
    """A damaged job record is named in `corrupt` while good jobs are still listed."""
    good = await store.set_job(Job("deploy", "running", 0, "ci"))
    await store.redis.hset(store.key("jobs"), "broken", value)

    listing = await store.jobs(retention_ms=HOUR_MS)

    assert listing.jobs == [good]
    assert listing.corrupt == ["broken"]


# Event de-duplication


async def test_first_sighting_is_true_once_per_event(store: Store) -> None:
    """An event id is new once; a redelivery is not; other ids and platforms are independent."""
    assert await store.first_sighting("slack", "Ev01") is True
    assert await store.first_sighting("slack", "Ev01") is False
    assert await store.first_sighting("slack", "Ev02") is True
    assert await store.first_sighting("mattermost", "Ev01") is True
    assert await store.first_sighting("mattermost", "Ev01") is False


async def test_first_sighting_expires(store: Store) -> None:
    """The de-duplication mark carries the given TTL."""
    await store.first_sighting("slack", "Ev01", ttl_s=600)

    ttl = await store.redis.ttl(store.key("seen", "slack", "Ev01"))

    assert 590 < ttl <= 600


# Key layout and outages


async def test_every_key_carries_the_namespace_hash_tag(
    store: Store, namespace: str, redis_client: Redis
) -> None:
    """Every key the store writes lives under `{namespace}:`, so one Cluster slot holds all."""
    short = await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=300)
    await store.acquire(LeaseKind.CLAIM, "staging", BOB, ttl_ms=HOUR_MS)
    await store.acquire(LeaseKind.LOCK, "frontend", BOB, ttl_ms=HOUR_MS)
    await store.release(LeaseKind.LOCK, "frontend", BOB)
    await store.set_job(Job("deploy", "running", 0, "ci"))
    await store.first_sighting("slack", "Ev01")
    await wait_until_expired(store, short.lease)
    await store.sweep_due()

    keys = [key.decode() async for key in redis_client.scan_iter(match="*")]

    assert store.key("lease", "lock", "backend") == f"{{{namespace}}}:lease:lock:backend"
    assert len(keys) >= 6
    assert all(key.startswith(f"{{{namespace}}}:") for key in keys), keys


@pytest.fixture
async def unreachable_store(namespace: str) -> AsyncIterator[Store]:
    """A store pointed at a port nobody listens on."""
    store = Store(connect(f"redis://127.0.0.1:{free_port()}/0"), namespace=namespace)
    try:
        yield store
    finally:
        await store.close()


UNREACHABLE_OPERATIONS: dict[str, Callable[[Store], Awaitable[object]]] = {
    "acquire": lambda s: s.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=HOUR_MS),
    "release": lambda s: s.release(LeaseKind.LOCK, "backend", ALICE),
    "extend": lambda s: s.extend(LeaseKind.LOCK, "backend", ALICE, ttl_ms=HOUR_MS),
    "get": lambda s: s.get(LeaseKind.LOCK, "backend"),
    "status": lambda s: s.leases(),
    "sweep": lambda s: s.sweep_due(),
    "history": lambda s: s.history("backend", count=5),
    "jobs": lambda s: s.jobs(retention_ms=HOUR_MS),
    "set_job": lambda s: s.set_job(Job("deploy", "running", 0, "ci")),
    "remove_job": lambda s: s.remove_job("deploy", removed_by="alice"),
    "first_sighting": lambda s: s.first_sighting("slack", "Ev01"),
    "now": lambda s: s.now_ms(),
}


@pytest.mark.parametrize(
    "operation", UNREACHABLE_OPERATIONS.values(), ids=UNREACHABLE_OPERATIONS.keys()
)
async def test_unreachable_redis_raises_store_unavailable(
    unreachable_store: Store, operation: Callable[[Store], Awaitable[object]]
) -> None:
    """With nothing listening, every store operation raises StoreUnavailable."""
    with pytest.raises(StoreUnavailable):
        await operation(unreachable_store)


async def test_an_outage_is_logged_once_not_on_every_call(
    unreachable_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Failed calls in a row log one warning (the sweep alone calls twice a second)."""
    caplog.set_level(logging.WARNING, logger="bot.store")
    for _ in range(5):
        with pytest.raises(StoreUnavailable):
            await unreachable_store.sweep_due()

    warnings = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert warnings == ["state store unavailable reason=could not connect failed_calls=1"]


def test_outage_log_repeats_after_its_interval_and_says_when_redis_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A new reason or the interval passing logs again, with the count; recovery is logged."""
    caplog.set_level(logging.WARNING, logger="bot.store")
    outage = OutageLog(interval_s=0.05)
    outage.failed("could not connect")
    outage.failed("could not connect")
    outage.failed("it did not answer in time")
    time.sleep(0.06)
    outage.failed("it did not answer in time")
    outage.recovered()
    outage.failed("could not connect")

    assert [r.getMessage() for r in caplog.records] == [
        "state store unavailable reason=could not connect failed_calls=1",
        "state store unavailable reason=it did not answer in time failed_calls=3",
        "state store unavailable reason=it did not answer in time failed_calls=4",
        "state store answers again after failed_calls=4",
        "state store unavailable reason=could not connect failed_calls=1",
    ]


async def test_redis_out_of_memory_is_reported_politely(store: Store, namespace: str) -> None:
    """A server at its maxmemory refuses writes: the store says so, nothing crashes."""
    await store.acquire(LeaseKind.LOCK, "held-before", ALICE, ttl_ms=HOUR_MS)
    old_limit = (await store.redis.config_get("maxmemory"))["maxmemory"]
    await store.redis.config_set("maxmemory", 1)
    try:
        with pytest.raises(StoreUnavailable, match="out of memory"):
            await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
    finally:
        await store.redis.config_set("maxmemory", old_limit)
    assert await store.get(LeaseKind.LOCK, "backend") is None
    assert await store.get(LeaseKind.LOCK, "held-before") is not None


async def test_a_database_the_server_lacks_is_named(redis_server_url: str, namespace: str) -> None:
    """/99 on a server with 16 databases is refused with the reason, on every call."""
    base = redis_server_url.rsplit("/", 1)[0]
    store = Store(connect(f"{base}/99"), namespace=namespace)
    try:
        for _ in range(2):
            with pytest.raises(StoreUnavailable, match="database number in the Redis URL"):
                await store.leases()
    finally:
        await store.close()


async def test_unreachable_redis_fails_ping(unreachable_store: Store) -> None:
    """ping() reports an unreachable server as False rather than raising."""
    assert await unreachable_store.ping() is False


async def test_every_connection_busy_too_long_is_reported_as_overload(
    redis_server_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When commands wait longer than the pool allows, the reason names overload, not an
    outage, and the command changes nothing."""
    monkeypatch.setattr("bot.store.POOL_SIZE", 1)
    monkeypatch.setattr("bot.store.POOL_WAIT_S", 0.2)
    store = Store(connect(redis_server_url), namespace=namespace)
    pool = store.redis.connection_pool
    held = await pool.get_connection()
    try:
        with pytest.raises(StoreUnavailable, match="overloaded: all 1 connections") as caught:
            await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
        assert "nothing changed" in str(caught.value)
    finally:
        await pool.release(held)
    try:
        assert await store.get(LeaseKind.LOCK, "backend") is None
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("change", "problem"),
    [({"handoff": "later"}, "handoff"), ({"reminder_offsets_ms": (60_000,) * 11}, "at most")],
)
def test_a_policy_the_scripts_cannot_hold_is_refused(change: dict[str, Any], problem: str) -> None:
    """The policy is written into the scripts' text, so only known values get there."""
    policy = {
        "prefix": "{deploybot}:",
        "events_max": 10_000,
        "handoff": "auto",
        "default_ttl_ms": (60_000, 60_000),
        "reminder_offsets_ms": (60_000,),
    }
    with pytest.raises(ValueError, match=problem):
        scripts.policy_header(**{**policy, **change})
