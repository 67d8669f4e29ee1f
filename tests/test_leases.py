"""Tests for bot.leases: validation of names, durations and notes, and who may do what."""

from __future__ import annotations

import pytest

from bot.config import LeaseSettings, Settings
from bot.errors import (
    InvalidDuration,
    InvalidName,
    LeaseHeld,
    NameLooksLikeDuration,
    NotAdmin,
    NotHeld,
    NotHolder,
    UnknownName,
    UsageError,
)
from bot.leases import MAX_NOTE_LENGTH, LeaseService
from bot.model import Holder, LeaseKind
from bot.store import Store

ALICE = Holder("local", "alice", "Alice")
BOB = Holder("local", "bob", "Bob")
CAROL = Holder("local", "carol", "Carol")
ROOT = Holder("local", "root", "Root")
MINUTE_MS = 60_000
HOUR_MS = 3_600_000


@pytest.fixture(params=list(LeaseKind), ids=str)
def kind(request: pytest.FixtureRequest) -> LeaseKind:
    """Each lease rule is checked for deploy locks and for staging claims."""
    return LeaseKind(request.param)


@pytest.fixture
def configured(store: Store, namespace: str) -> LeaseService:
    """A service whose config lists the services backend and frontend (no environments)."""
    settings = Settings(namespace=namespace, services=["backend", "frontend"])
    return LeaseService(store, settings)


@pytest.fixture
def admin_leases(store: Store, namespace: str) -> LeaseService:
    """A service whose config makes local:root an admin."""
    return LeaseService(store, Settings(namespace=namespace, admins=["local:root"]))


async def assert_nothing_stored(store: Store) -> None:
    """No lease exists and no event was written."""
    listing = await store.leases()
    assert listing.leases == []
    assert await store.redis.xlen(store.key("events")) == 0


# Durations


@pytest.mark.parametrize(
    ("kind", "default_ms"), [(LeaseKind.LOCK, HOUR_MS), (LeaseKind.CLAIM, 4 * HOUR_MS)]
)
async def test_default_duration_comes_from_settings(
    leases: LeaseService, kind: LeaseKind, default_ms: int
) -> None:
    """Without a duration a lock lasts 1 hour and a claim 4 hours."""
    change = await leases.acquire(kind, "backend", ALICE)

    assert change.lease.expires_at - change.lease.acquired_at == default_ms


async def test_given_duration_is_used(leases: LeaseService, kind: LeaseKind) -> None:
    """A typed duration such as 1h30m sets the expiry."""
    change = await leases.acquire(kind, "backend", ALICE, duration="1h30m")

    assert change.lease.expires_at - change.lease.acquired_at == 90 * MINUTE_MS


@pytest.mark.parametrize(
    ("kind", "duration", "expected_ms"),
    [
        (LeaseKind.LOCK, "1m", MINUTE_MS),
        (LeaseKind.LOCK, "24h", 24 * HOUR_MS),
        (LeaseKind.CLAIM, "1m", MINUTE_MS),
        (LeaseKind.CLAIM, "7d", 7 * 24 * HOUR_MS),
    ],
)
async def test_durations_at_the_bounds_are_accepted(
    leases: LeaseService, kind: LeaseKind, duration: str, expected_ms: int
) -> None:
    """Exactly one minute and exactly the kind's maximum are both allowed."""
    change = await leases.acquire(kind, "backend", ALICE, duration=duration)

    assert change.lease.expires_at - change.lease.acquired_at == expected_ms


@pytest.mark.parametrize(
    ("kind", "duration", "hint"),
    [
        (LeaseKind.LOCK, "59s", "shortest is 1 minute"),
        (LeaseKind.CLAIM, "30s", "shortest is 1 minute"),
        (LeaseKind.LOCK, "0m", "must be positive"),
        (LeaseKind.CLAIM, "0s", "must be positive"),
        (LeaseKind.LOCK, "-5m", "must be positive"),
        (LeaseKind.CLAIM, "-1h", "must be positive"),
        (LeaseKind.LOCK, "3x0m", "like 90s, 30m"),
        (LeaseKind.CLAIM, "abc", "like 90s, 30m"),
        (LeaseKind.LOCK, "", "like 90s, 30m"),
        (LeaseKind.LOCK, "25h", "longest allowed is 1 day"),
        (LeaseKind.CLAIM, "8d", "longest allowed is 7 days"),
    ],
)
async def test_out_of_bounds_duration_is_refused(
    leases: LeaseService, store: Store, kind: LeaseKind, duration: str, hint: str
) -> None:
    """Too short, zero, negative, malformed or too long: InvalidDuration saying what works."""
    with pytest.raises(InvalidDuration) as caught:
        await leases.acquire(kind, "backend", ALICE, duration=duration)

    assert hint in str(caught.value)
    assert caught.value.text == duration
    await assert_nothing_stored(store)


# Names


async def test_unknown_configured_name_suggests_close_ones(
    configured: LeaseService, store: Store
) -> None:
    """A service not in the config is refused with the closest configured names."""
    with pytest.raises(UnknownName) as caught:
        await configured.acquire(LeaseKind.LOCK, "backnd", ALICE)

    assert caught.value.suggestions == ["backend"]
    assert "`backend`" in str(caught.value)
    await assert_nothing_stored(store)


async def test_unknown_name_without_close_match_points_to_status(
    configured: LeaseService,
) -> None:
    """A name close to nothing configured gets no suggestion but a pointer to `status`."""
    with pytest.raises(UnknownName) as caught:
        await configured.acquire(LeaseKind.LOCK, "zzz", ALICE)

    assert caught.value.suggestions == []
    assert "status" in str(caught.value)


async def test_configured_names_are_accepted(configured: LeaseService) -> None:
    """A configured service can be locked."""
    change = await configured.acquire(LeaseKind.LOCK, "frontend", ALICE)

    assert change.lease.name == "frontend"


async def test_unlisted_kind_accepts_any_valid_name(configured: LeaseService) -> None:
    """With no environments configured, any valid environment name can be claimed."""
    change = await configured.acquire(LeaseKind.CLAIM, "staging-2", ALICE)

    assert change.lease.name == "staging-2"


async def test_without_configured_names_any_valid_name_works(
    leases: LeaseService, kind: LeaseKind
) -> None:
    """With nothing configured, any name of the safe character set is accepted."""
    change = await leases.acquire(kind, "svc_1.api-v2", ALICE)

    assert change.lease.name == "svc_1.api-v2"


@pytest.mark.parametrize(
    ("raw", "hint"),
    [
        ("back end", "letters, digits"),
        ("a/b", "letters, digits"),
        ("{x}", "letters, digits"),
        ("lock:backend", "letters, digits"),
        ("bäckend", "letters, digits"),
        ("x" * 65, "at most 64 characters"),
        ("", "Give its name"),
        ("   ", "Give its name"),
    ],
    ids=["space", "slash", "braces", "colon", "unicode", "65-chars", "empty", "blank"],
)
async def test_invalid_name_is_refused(
    leases: LeaseService, store: Store, kind: LeaseKind, raw: str, hint: str
) -> None:
    """Names outside the safe character set or too long raise InvalidName; nothing stored."""
    with pytest.raises(InvalidName) as caught:
        await leases.acquire(kind, raw, ALICE)

    assert hint in str(caught.value)
    assert caught.value.name == raw
    await assert_nothing_stored(store)


@pytest.mark.parametrize("raw", ["1h", "5m", "1h30m", "90s", "2d", "1w", "3mins", " 1H "])
async def test_a_name_that_reads_as_a_duration_is_refused(
    leases: LeaseService, store: Store, kind: LeaseKind, raw: str
) -> None:
    """`lock 1h` left the service out: taking or queueing for `1h` is refused, saying what
    works, so no lease gets a duration for a name."""
    shown = raw.strip().lower()
    what, place = (
        ("a service", "<service>") if kind is LeaseKind.LOCK else ("an environment", "<env>")
    )

    with pytest.raises(NameLooksLikeDuration) as taking:
        await leases.acquire(kind, raw, ALICE)
    with pytest.raises(NameLooksLikeDuration) as queueing:
        await leases.join_waitlist(kind, raw, ALICE)

    assert f"`{shown}` looks like a duration, not {what} name" in str(taking.value)
    assert f"`{kind} {place} {shown}`" in str(taking.value)
    assert f"`queue {place} {shown}`" in str(queueing.value)
    await assert_nothing_stored(store)


@pytest.mark.parametrize("raw", ["42", "2048", "1m30", "v1", "s3", "k8s", "api-2", "1e3"])
async def test_names_with_digits_that_are_no_duration_still_work(
    leases: LeaseService, kind: LeaseKind, raw: str
) -> None:
    """Only a name that parses as a duration is refused; numbers and versions are names."""
    change = await leases.acquire(kind, raw, ALICE)

    assert change.lease.name == raw


async def test_a_configured_name_that_reads_as_a_duration_is_accepted(
    store: Store, namespace: str
) -> None:
    """A service the config lists is meant as a name, even one that reads as a duration."""
    configured = LeaseService(store, Settings(namespace=namespace, services=["backend", "5m"]))

    change = await configured.acquire(LeaseKind.LOCK, "5m", ALICE)

    assert change.lease.name == "5m"


async def test_a_lease_named_like_a_duration_before_can_still_be_released(
    leases: LeaseService, store: Store, kind: LeaseKind
) -> None:
    """Leases called `1h` taken before names were checked for durations can still be freed."""
    await store.acquire(kind, "1h", ALICE, ttl_ms=HOUR_MS)

    extended = await leases.extend("1h", ALICE)
    released = await leases.release(kind, "1h", ALICE)

    assert [change.lease.name for change in extended] == ["1h"]
    assert released.outcome == "released"


async def test_names_are_case_insensitive(leases: LeaseService, kind: LeaseKind) -> None:
    """`Backend` and `backend` are one lease."""
    taken = await leases.acquire(kind, "Backend", ALICE)

    with pytest.raises(LeaseHeld) as caught:
        await leases.acquire(kind, "backend", BOB)
    released = await leases.release(kind, " BACKEND ", ALICE)

    assert taken.lease.name == "backend"
    assert caught.value.lease.token == taken.lease.token
    assert released.lease.token == taken.lease.token


async def test_configured_names_match_case_insensitively(configured: LeaseService) -> None:
    """A configured name typed in capitals is the configured one."""
    change = await configured.acquire(LeaseKind.LOCK, "BACKEND", ALICE)

    assert change.lease.name == "backend"


# Notes


async def test_note_over_the_limit_is_refused(
    leases: LeaseService, store: Store, kind: LeaseKind
) -> None:
    """A note longer than 500 characters is refused and nothing is stored."""
    with pytest.raises(UsageError) as caught:
        await leases.acquire(kind, "backend", ALICE, note="x" * (MAX_NOTE_LENGTH + 1))

    assert str(MAX_NOTE_LENGTH) in str(caught.value)
    await assert_nothing_stored(store)


async def test_note_at_the_limit_is_kept_stripped(leases: LeaseService, kind: LeaseKind) -> None:
    """A 500-character note is accepted, without surrounding whitespace."""
    note = "n" * MAX_NOTE_LENGTH

    change = await leases.acquire(kind, "backend", ALICE, note=f"  {note}\n")

    assert change.lease.note == note


# Release and forced release


async def test_release_by_other_is_refused(leases: LeaseService, kind: LeaseKind) -> None:
    """Only the holder releases through the service."""
    await leases.acquire(kind, "backend", ALICE)

    with pytest.raises(NotHolder):
        await leases.release(kind, "backend", BOB)


async def test_force_release_by_non_admin_is_refused(
    leases: LeaseService, store: Store, kind: LeaseKind
) -> None:
    """A non-admin's force release raises NotAdmin and the lease stays."""
    taken = await leases.acquire(kind, "backend", ALICE)

    with pytest.raises(NotAdmin) as caught:
        await leases.force_release(kind, "backend", BOB, "stuck")

    assert caught.value.identity == "local:bob"
    assert await store.get(kind, "backend") == taken.lease


async def test_force_release_by_admin_frees_the_lease(
    admin_leases: LeaseService, store: Store, kind: LeaseKind
) -> None:
    """An admin's force release frees another person's lease and records the reason."""
    await admin_leases.acquire(kind, "backend", ALICE)

    forced = await admin_leases.force_release(kind, "Backend", ROOT, "  deploy is stuck ")

    assert forced.outcome == "forced"
    assert forced.lease.holder == ALICE
    assert await store.get(kind, "backend") is None
    events, _now = await admin_leases.history("backend")
    assert events[0].type == "forced"
    assert events[0].data["reason"] == "deploy is stuck"


@pytest.mark.parametrize("reason", ["", "   "], ids=["empty", "blank"])
async def test_force_release_needs_a_reason(
    admin_leases: LeaseService, store: Store, kind: LeaseKind, reason: str
) -> None:
    """An admin's force release without a reason is refused and the lease stays."""
    taken = await admin_leases.acquire(kind, "backend", ALICE)

    with pytest.raises(UsageError):
        await admin_leases.force_release(kind, "backend", ROOT, reason)

    assert await store.get(kind, "backend") == taken.lease


async def test_force_release_of_free_lease_raises_not_held(
    admin_leases: LeaseService, kind: LeaseKind
) -> None:
    """Forcing a free lease tells the admin nothing was held."""
    with pytest.raises(NotHeld):
        await admin_leases.force_release(kind, "backend", ROOT, "cleanup")


# Extend


async def test_extend_picks_the_callers_lease(leases: LeaseService, store: Store) -> None:
    """With a lock and a claim of one name held by two people, each extends only their own."""
    lock = await leases.acquire(LeaseKind.LOCK, "api", BOB, duration="10m")
    claim = await leases.acquire(LeaseKind.CLAIM, "api", ALICE, duration="10m")

    changes = await leases.extend("API", ALICE, duration="2h")

    assert [change.lease.kind for change in changes] == [LeaseKind.CLAIM]
    assert changes[0].lease.token == claim.lease.token
    assert changes[0].lease.expires_at == changes[0].now_ms + 2 * HOUR_MS
    assert await store.get(LeaseKind.LOCK, "api") == lock.lease


async def test_extend_covers_both_leases_of_the_caller(leases: LeaseService) -> None:
    """When the caller holds the lock and the claim of a name, both are extended."""
    await leases.acquire(LeaseKind.LOCK, "api", ALICE, duration="10m")
    await leases.acquire(LeaseKind.CLAIM, "api", ALICE, duration="10m")

    changes = await leases.extend("api", ALICE, duration="1h")

    assert sorted(change.lease.kind for change in changes) == [LeaseKind.CLAIM, LeaseKind.LOCK]
    assert all(change.lease.expires_at == change.now_ms + HOUR_MS for change in changes)


async def test_extend_without_duration_uses_the_kinds_default(leases: LeaseService) -> None:
    """Extending without a duration sets the expiry to now plus the kind's default."""
    await leases.acquire(LeaseKind.CLAIM, "staging", ALICE, duration="10m")

    changes = await leases.extend("staging", ALICE)

    assert changes[0].lease.expires_at == changes[0].now_ms + 4 * HOUR_MS


async def test_extend_by_someone_else_names_the_holder(leases: LeaseService) -> None:
    """Extending a name only others hold raises NotHolder naming one of them."""
    await leases.acquire(LeaseKind.LOCK, "api", BOB)

    with pytest.raises(NotHolder) as caught:
        await leases.extend("api", CAROL)

    assert caught.value.lease.holder == BOB


async def test_extend_of_nothing_raises_not_held(leases: LeaseService) -> None:
    """Extending a name nobody holds raises NotHeld."""
    with pytest.raises(NotHeld) as caught:
        await leases.extend("api", ALICE)

    assert caught.value.name == "api"


async def test_extend_beyond_maximum_changes_nothing(leases: LeaseService, store: Store) -> None:
    """A duration too long for one of the caller's leases is refused before any is extended."""
    lock = await leases.acquire(LeaseKind.LOCK, "api", ALICE, duration="10m")
    claim = await leases.acquire(LeaseKind.CLAIM, "api", ALICE, duration="10m")

    with pytest.raises(InvalidDuration):
        await leases.extend("api", ALICE, duration="2d")

    assert await store.get(LeaseKind.LOCK, "api") == lock.lease
    assert await store.get(LeaseKind.CLAIM, "api") == claim.lease


async def test_extend_refused_for_one_kind_extends_neither(store: Store, namespace: str) -> None:
    """A duration allowed for the lock but too long for the claim leaves both unchanged."""
    settings = Settings(
        namespace=namespace,
        lock=LeaseSettings.model_validate({"default_ttl": "1h", "max_ttl": "7d"}),
        claim=LeaseSettings.model_validate({"default_ttl": "1h", "max_ttl": "1d"}),
    )
    leases = LeaseService(store, settings)
    lock = await leases.acquire(LeaseKind.LOCK, "api", ALICE, duration="10m")
    claim = await leases.acquire(LeaseKind.CLAIM, "api", ALICE, duration="10m")

    with pytest.raises(InvalidDuration):
        await leases.extend("api", ALICE, duration="2d")

    assert await store.get(LeaseKind.LOCK, "api") == lock.lease
    assert await store.get(LeaseKind.CLAIM, "api") == claim.lease


async def test_extend_with_invalid_name_is_refused(leases: LeaseService) -> None:
    """Extend validates the name like every other operation."""
    with pytest.raises(InvalidName):
        await leases.extend("a/b", ALICE)


# Check


async def test_check_with_current_token_is_valid(leases: LeaseService) -> None:
    """The holder's token checks as valid while the lock is held."""
    taken = await leases.acquire(LeaseKind.LOCK, "backend", ALICE)

    result = await leases.check("Backend", taken.lease.token)

    assert result.valid is True
    assert result.lease == taken.lease
    assert result.now_ms >= taken.now_ms


async def test_check_with_wrong_token_is_invalid(leases: LeaseService) -> None:
    """A stale token checks invalid and the result shows who holds the lock now."""
    old = await leases.acquire(LeaseKind.LOCK, "backend", ALICE)
    await leases.release(LeaseKind.LOCK, "backend", ALICE)
    new = await leases.acquire(LeaseKind.LOCK, "backend", BOB)

    result = await leases.check("backend", old.lease.token)

    assert result.valid is False
    assert result.lease == new.lease


async def test_check_after_release_is_invalid(leases: LeaseService) -> None:
    """After the lock is released its token checks invalid with no current lease."""
    taken = await leases.acquire(LeaseKind.LOCK, "backend", ALICE)
    await leases.release(LeaseKind.LOCK, "backend", ALICE)

    result = await leases.check("backend", taken.lease.token)

    assert result.valid is False
    assert result.lease is None


async def test_check_accepts_a_claims_token_too(leases: LeaseService) -> None:
    """check() works for claims as for locks: the claim's own token is valid, others not."""
    claim = await leases.acquire(LeaseKind.CLAIM, "backend", ALICE)

    result = await leases.check("backend", claim.lease.token)
    stale = await leases.check("backend", claim.lease.token - 1)

    assert result.valid is True and result.lease == claim.lease
    assert stale.valid is False and stale.lease == claim.lease


# Status and history


async def test_status_filters_by_name(leases: LeaseService) -> None:
    """status(name) lists the lock and the claim of that name and nothing else."""
    lock = await leases.acquire(LeaseKind.LOCK, "api", ALICE)
    claim = await leases.acquire(LeaseKind.CLAIM, "api", BOB)
    await leases.acquire(LeaseKind.LOCK, "web", BOB)

    everything = await leases.status()
    only_api = await leases.status("API")

    assert len(everything.leases) == 3
    assert sorted(only_api.leases, key=lambda lease: lease.kind) == [claim.lease, lock.lease]


async def test_history_defaults_to_configured_count(leases: LeaseService) -> None:
    """history() without a count returns at most `history_count` events."""
    for _ in range(12):
        await leases.acquire(LeaseKind.LOCK, "api", ALICE)

    events, now = await leases.history("api")

    assert len(events) == 10
    assert events[-1].type == "refreshed"
    assert now >= events[0].at
