"""Tests for waitlists: `queue` and `leave`, handoff in arrival order, notify-only mode, and
the CLI's `lock --wait`, through the command handler, the store scripts and the announcer."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from test_announcer import (
    ALICE,
    BOB,
    CHANNEL,
    DEPLOYBOT,
    ORIGIN,
    Recorder,
    chat,
    cli_env,
    drained,
    make_runtime,
    policy_store,
    running_bot,
    wait_for,
)

from bot.commands import CommandHandler
from bot.config import Settings
from bot.errors import LeaseHeld, WaitTimedOut
from bot.leases import LeaseService
from bot.model import Holder, LeaseKind, Origin
from bot.render import render_plain
from bot.store import Store

CAROL = Holder("slack", "UCAROL", "Carol")
DAVE = Holder("slack", "UDAVE", "Dave")
CI = Holder("local", "ci-bot", "ci-bot")
CLI_VIA = Origin("local", "cli")


@pytest.fixture
def settings(namespace: str) -> Settings:
    """Fast sweeps."""
    return Settings(namespace=namespace, sweep_interval_s=0.1)


@pytest.fixture
def commands(store: Store, settings: Settings) -> CommandHandler:
    return make_runtime(store, settings).commands


async def say(commands: CommandHandler, who: Holder, text: str, channel: str = CHANNEL) -> str:
    """What deploybot answers `who` typing `text`, as plain text."""
    return render_plain((await commands.handle(chat(who, text, channel))).parts)


# -----------------------------------------------------------------------------------------
# queue, leave, status


async def test_queue_is_idempotent_and_replies_with_the_position(
    commands: CommandHandler, store: Store
) -> None:
    """`queue backend` twice keeps one place in line; the next person is number 2."""
    await say(commands, ALICE, "lock backend 1h")

    first = await say(commands, BOB, "queue backend")
    again = await say(commands, BOB, "queue backend")
    carol = await say(commands, CAROL, "queue backend")

    assert first.startswith("Bob is number 1 in line for `backend` (held by Alice until ")
    assert "You are next" in first
    assert first.endswith("Say `leave backend` to stop waiting.")
    assert again.startswith("Bob is number 1 in line for `backend`")
    assert carol.startswith("Carol is number 2 in line for `backend`")
    assert "1 ahead of you" in carol
    assert await store.waiters(LeaseKind.LOCK, "backend") == [BOB, CAROL]


async def test_queue_says_how_the_handoff_will_be_told_on_each_platform(
    commands: CommandHandler,
) -> None:
    """Slack and Mattermost waiters get a DM; the console has none, so it says so there."""
    await say(commands, ALICE, "lock backend 1h")

    slack = await say(commands, BOB, "queue backend")
    console = await say(commands, CI, "queue backend", channel="console")

    assert "you will get a DM when it is yours" in slack
    assert "DM" not in console
    assert "you will be told in the console when it is yours" in console


async def test_queue_for_what_you_hold_or_what_is_free(
    commands: CommandHandler, store: Store
) -> None:
    """The holder is told there is nothing to wait for; a free lock is simply taken."""
    await say(commands, ALICE, "lock backend")

    holding = await say(commands, ALICE, "queue backend")
    free = await say(commands, BOB, "queue web")

    assert holding == "You already hold `backend`; nothing to wait for."
    assert free.startswith("Bob locked `web` until ")
    assert await store.waiters(LeaseKind.LOCK, "backend") == []


async def test_leave_stops_waiting(commands: CommandHandler, store: Store) -> None:
    """`leave backend` takes you off the waitlist; saying it again changes nothing."""
    await say(commands, ALICE, "lock backend")
    await say(commands, BOB, "queue backend")
    await say(commands, CAROL, "queue backend")

    left = await say(commands, BOB, "leave backend")
    again = await say(commands, BOB, "leave backend")

    assert left == "Bob stopped waiting for `backend`."
    assert again == "You were not waiting for `backend`; nothing changed."
    assert await store.waiters(LeaseKind.LOCK, "backend") == [CAROL]


async def test_status_shows_who_is_waiting(commands: CommandHandler) -> None:
    """`status` lists the waiters under the lease, first in line first."""
    await say(commands, ALICE, "lock backend")
    await say(commands, CAROL, "queue backend")
    await say(commands, BOB, "queue backend")

    status = await say(commands, DAVE, "status")

    assert "`backend` — Alice until " in status
    assert "waiting: Carol, Bob" in status


# -----------------------------------------------------------------------------------------
# handoff


async def test_three_waiters_are_served_in_arrival_order(
    commands: CommandHandler, store: Store, settings: Settings
) -> None:
    """Each release hands the lock to the next waiter, who gets a DM; the channel is told."""
    slack = Recorder("slack")
    async with running_bot(store, settings, slack):
        await say(commands, ALICE, "lock backend")
        for waiter in (BOB, CAROL, DAVE):
            await say(commands, waiter, "queue backend")

        for previous, waiter in ((ALICE, BOB), (BOB, CAROL), (CAROL, DAVE)):
            await say(commands, previous, "unlock backend")
            lease = await store.get(LeaseKind.LOCK, "backend")
            assert lease is not None and lease.holder == waiter
            await wait_for(lambda w=waiter: slack.dms(w.user_id), f"{waiter.display}'s DM")
            await wait_for(
                lambda w=waiter: any(w.display in p.text for p in slack.channel(CHANNEL)),
                f"the channel to hear about {waiter.display}",
            )

    handoffs = [p for p in slack.posts if p.direct]
    assert [p.target for p in handoffs] == ["UBOB", "UCAROL", "UDAVE"]
    for post in handoffs:
        assert post.text.startswith(
            "You were first in line: the lock on `backend` is yours until "
        )
    assert [p.text.split(" until ")[0] for p in slack.channel(CHANNEL)] == [
        "Bob got `backend` from the waitlist,",
        "Carol got `backend` from the waitlist,",
        "Dave got `backend` from the waitlist,",
    ]
    assert await store.waiters(LeaseKind.LOCK, "backend") == []


async def test_notify_only_mode_tells_the_first_waiter_and_gives_nothing_away(
    redis_server_url: str, settings: Settings
) -> None:
    """With handoff "notify" the lock stays free and the first waiter gets a DM saying so."""
    store = policy_store(redis_server_url, settings, handoff="notify")
    commands = make_runtime(store, settings).commands
    slack = Recorder("slack")
    try:
        async with running_bot(store, settings, slack):
            await say(commands, ALICE, "lock backend")
            await say(commands, BOB, "queue backend")
            await say(commands, CAROL, "queue backend")
            await say(commands, ALICE, "unlock backend")
            assert await store.get(LeaseKind.LOCK, "backend") is None
            await wait_for(lambda: slack.dms("UBOB"), "Bob's DM")
            waiting = await store.waiters(LeaseKind.LOCK, "backend")
    finally:
        await store.close()

    [dm] = slack.dms("UBOB")
    assert (
        dm.text == "`backend` is free and you were first in line: say `lock backend` to take it."
    )
    assert slack.dms("UCAROL") == []
    assert waiting == [CAROL]


async def test_a_released_lock_cannot_be_taken_by_someone_not_waiting(store: Store) -> None:
    """Release and a stranger's acquires race: the waiter holds it, every stranger is refused."""
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=60_000)
    await store.join_waitlist(LeaseKind.LOCK, "backend", BOB)

    async def steal() -> Holder | None:
        try:
            await store.acquire(LeaseKind.LOCK, "backend", DAVE, ttl_ms=60_000)
        except LeaseHeld as error:
            return error.lease.holder
        return DAVE

    results = await asyncio.gather(
        steal(), store.release(LeaseKind.LOCK, "backend", ALICE), steal(), steal()
    )

    assert DAVE not in (results[0], results[2], results[3])
    lease = await store.get(LeaseKind.LOCK, "backend")
    assert lease is not None and lease.holder == BOB


async def test_an_expired_lock_goes_to_the_waiter_even_before_the_sweep(store: Store) -> None:
    """A lock that ran out with nobody sweeping: the next acquire finds the waiter holding it."""
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=300)
    await store.join_waitlist(LeaseKind.LOCK, "backend", BOB)

    async def lease_key_gone() -> bool:
        return not await store.redis.exists(store.key("lease", "lock", "backend"))

    await wait_for(lease_key_gone, "the lock to expire")

    with pytest.raises(LeaseHeld) as refused:
        await store.acquire(LeaseKind.LOCK, "backend", DAVE, ttl_ms=60_000)
    assert refused.value.lease.holder == BOB
    types = [event.type for event in await store.history("backend", count=10)]
    assert types[:2] == ["acquired", "expired"]


# -----------------------------------------------------------------------------------------
# the CLI's --wait


@pytest.fixture
async def waiting_cli() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Started `deploybot` processes, killed at the end if a test left one running."""
    processes: list[asyncio.subprocess.Process] = []
    yield processes
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def start_cli(
    processes: list[asyncio.subprocess.Process], env: dict[str, str], cwd: Path, *args: str
) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        str(DEPLOYBOT),
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    processes.append(process)
    return process


async def ci_bot_in_line(
    store: Store,
    processes: list[asyncio.subprocess.Process],
    env: dict[str, str],
    cwd: Path,
    wait: str,
) -> asyncio.subprocess.Process:
    """`deploybot lock backend --as ci-bot --wait <wait>`, once it is on the waitlist."""
    process = await start_cli(
        processes, env, cwd, "lock", "backend", "--as", "ci-bot", "--wait", wait
    )

    async def ci_waiting() -> bool:
        return await store.waiters(LeaseKind.LOCK, "backend") == [CI]

    await wait_for(ci_waiting, "ci-bot on the waitlist", limit=20)
    return process


async def test_cli_wait_gets_the_lock_when_the_holder_releases(
    store: Store,
    settings: Settings,
    redis_server_url: str,
    tmp_path: Path,
    waiting_cli: list[asyncio.subprocess.Process],
) -> None:
    """`lock backend --as ci-bot --wait 30s` joins the waitlist and exits 0 once it holds it."""
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=60_000, origin=ORIGIN)
    env = cli_env(redis_server_url, settings.namespace, tmp_path)
    process = await ci_bot_in_line(store, waiting_cli, env, tmp_path, "30s")
    await store.release(LeaseKind.LOCK, "backend", ALICE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)

    assert process.returncode == 0, err.decode()
    assert out.decode().startswith("ci-bot locked `backend` until ")
    assert "waiting for backend (number 1 in line, held by Alice)" in err.decode()
    lease = await store.get(LeaseKind.LOCK, "backend")
    assert lease is not None and lease.holder == CI


async def test_cli_wait_times_out_and_leaves_the_waitlist(
    store: Store,
    settings: Settings,
    redis_server_url: str,
    tmp_path: Path,
    waiting_cli: list[asyncio.subprocess.Process],
) -> None:
    """`--wait 1s` on a lock nobody releases exits 1 and leaves nobody waiting."""
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=60_000)
    env = cli_env(redis_server_url, settings.namespace, tmp_path)
    process = await start_cli(
        waiting_cli, env, tmp_path, "lock", "backend", "--as", "ci-bot", "--wait", "1s"
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)

    assert process.returncode == 1, err.decode()
    assert out.decode() == ""
    assert "Gave up waiting for the lock on backend (still held by Alice)" in err.decode()
    assert await store.waiters(LeaseKind.LOCK, "backend") == []
    lease = await store.get(LeaseKind.LOCK, "backend")
    assert lease is not None and lease.holder == ALICE


async def test_cli_wait_stopped_by_sigterm_leaves_the_waitlist(
    store: Store,
    settings: Settings,
    redis_server_url: str,
    tmp_path: Path,
    waiting_cli: list[asyncio.subprocess.Process],
) -> None:
    """A CI runner cancelling the job (SIGTERM) takes the pipeline out of line: exit 143,
    nobody waiting, and the lock is not handed to a process that is gone."""
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=60_000)
    env = cli_env(redis_server_url, settings.namespace, tmp_path)
    process = await ci_bot_in_line(store, waiting_cli, env, tmp_path, "5m")
    process.send_signal(signal.SIGTERM)
    _out, err = await asyncio.wait_for(process.communicate(), timeout=30)

    assert process.returncode == 143, err.decode()
    assert "stopped by SIGTERM; left the waitlist for backend" in err.decode()
    assert "Traceback" not in err.decode()
    assert await store.waiters(LeaseKind.LOCK, "backend") == []
    await store.release(LeaseKind.LOCK, "backend", ALICE)
    assert await store.get(LeaseKind.LOCK, "backend") is None


async def test_a_lease_with_a_waitlist_is_handed_over_however_it_ends(store: Store) -> None:
    """A lease taken with nobody waiting skips the handoff when it ends; once somebody
    joins, release and expiry alike serve them, and so does a lease with no mark at all
    (written before the mark existed)."""
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=60_000)
    await store.join_waitlist(LeaseKind.LOCK, "backend", BOB)
    await store.release(LeaseKind.LOCK, "backend", ALICE)
    handed = await store.get(LeaseKind.LOCK, "backend")
    assert handed is not None and handed.holder == BOB

    await store.join_waitlist(LeaseKind.LOCK, "backend", CI)
    await store.release(LeaseKind.LOCK, "backend", BOB)
    handed = await store.get(LeaseKind.LOCK, "backend")
    assert handed is not None and handed.holder == CI

    # A lease from before the mark: its waiter is served although nothing says one exists.
    await store.release(LeaseKind.LOCK, "backend", CI)
    taken = await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=300)
    unmarked = {**taken.lease.to_dict(), "token": taken.lease.token}
    await store.redis.set(store.key("lease", "lock", "backend"), orjson.dumps(unmarked), px=300)
    await store.redis.hset(store.key("leases"), "lock:backend", orjson.dumps(unmarked))
    waiter = {"holder": BOB.__dict__, "note": "", "since": taken.now_ms}
    await store.redis.rpush(store.key("queue", "lock", "backend"), orjson.dumps(waiter))

    async def handed_to_bob() -> bool:
        await store.sweep_due()
        lease = await store.get(LeaseKind.LOCK, "backend")
        return lease is not None and lease.holder == BOB

    await wait_for(handed_to_bob, "the expired lease to go to Bob", limit=10)


async def test_notify_mode_keeps_telling_whoever_is_still_waiting(
    redis_server_url: str, settings: Settings
) -> None:
    """In 'notify' mode the lock stays free for the waiter who is told; when they take it and
    release it, the next one still waiting is told in turn."""
    store = policy_store(redis_server_url, settings, handoff="notify")
    try:
        await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=60_000)
        await store.join_waitlist(LeaseKind.LOCK, "backend", BOB)
        await store.join_waitlist(LeaseKind.LOCK, "backend", CI)
        await store.release(LeaseKind.LOCK, "backend", ALICE)
        await store.acquire(LeaseKind.LOCK, "backend", BOB, ttl_ms=60_000)
        assert await store.waiters(LeaseKind.LOCK, "backend") == [CI]
        await store.release(LeaseKind.LOCK, "backend", BOB)
        events = await store.history("backend", count=10)
    finally:
        await store.close()

    told = [event.data["next"]["holder"]["user_id"] for event in events if event.type == "free"]
    assert told == [CI.user_id, BOB.user_id]


async def test_a_waiter_whose_wait_ran_out_is_skipped_at_handoff(store: Store) -> None:
    """A killed `--wait` cannot leave the line; once its wait is over it is dropped: not
    listed, not handed the lock. Joining again renews the wait and keeps the place."""
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=60_000)
    await store.join_waitlist(LeaseKind.LOCK, "backend", CI, wait_ms=300)
    await store.join_waitlist(LeaseKind.LOCK, "backend", BOB, wait_ms=300)
    renewed = await store.join_waitlist(LeaseKind.LOCK, "backend", BOB, wait_ms=3_600_000)
    assert renewed.outcome == "waiting" and renewed.position == 2

    async def lapsed() -> bool:
        return await store.waiters(LeaseKind.LOCK, "backend") == [BOB]

    await wait_for(lapsed, "ci-bot's wait to run out", limit=10)
    listing = await store.leases(name="backend")
    assert listing.waiters == {"lock:backend": [BOB]}
    await store.release(LeaseKind.LOCK, "backend", ALICE)

    lease = await store.get(LeaseKind.LOCK, "backend")
    assert lease is not None and lease.holder == BOB


async def test_a_wait_that_runs_out_as_the_lock_is_handed_over_does_not_keep_it(
    store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handed over between the last look and leaving the waitlist: the waiter either reports
    success or lets go; it never exits "gave up" while holding the lock."""
    leases = LeaseService(store, settings)
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=60_000)
    leave = store.leave_waitlist

    async def released_just_before_leaving(
        kind: LeaseKind, name: str, holder: Holder, *, via: Origin | None = None
    ) -> bool:
        await store.release(kind, name, ALICE)  # Alice lets go as the wait runs out
        return await leave(kind, name, holder, via=via)

    monkeypatch.setattr(store, "leave_waitlist", released_just_before_leaving)
    try:
        change = await leases.acquire_or_wait(
            LeaseKind.LOCK, "backend", CI, wait="1s", via=CLI_VIA
        )
    except WaitTimedOut:
        lease = await store.get(LeaseKind.LOCK, "backend")
        assert lease is None or lease.holder != CI, "gave up waiting, yet holds the lock"
    else:
        assert change.lease.holder == CI


async def test_expiry_hands_the_lock_to_the_first_waiter(
    store: Store, settings: Settings, commands: CommandHandler
) -> None:
    """A lock that runs out goes to the first waiter: expiry announced, waiter DMed."""
    slack = Recorder("slack")
    async with running_bot(store, settings, slack):
        await store.acquire(
            LeaseKind.LOCK, "backend", ALICE, ttl_ms=1000, origin=ORIGIN, via=ORIGIN
        )
        await say(commands, BOB, "queue backend")
        await wait_for(lambda: slack.dms("UBOB"), "Bob's handoff DM")
        await wait_for(lambda: len(slack.channel(CHANNEL)) == 2, "expiry and handoff posts")

    lease = await store.get(LeaseKind.LOCK, "backend")
    assert lease is not None and lease.holder == BOB
    expired, handed = (p.text for p in slack.channel(CHANNEL))
    assert expired.startswith("The lock on `backend` held by Alice auto-released after ")
    assert handed.startswith("Bob got `backend` from the waitlist, until ")


async def test_handoff_to_someone_who_queued_in_a_dm_is_told_in_the_locks_channel(
    store: Store, settings: Settings, commands: CommandHandler
) -> None:
    """Bob queues from his DM: the lock's channel hears of the handoff, his DM only the DM."""
    slack = Recorder("slack")
    async with running_bot(store, settings, slack):
        await say(commands, ALICE, "lock backend")
        await say(commands, BOB, "queue backend", channel="DUBOB")
        await say(commands, ALICE, "unlock backend")
        await wait_for(lambda: slack.dms("UBOB"), "Bob's handoff DM")
        await wait_for(lambda: drained(store), "the announcer to catch up")

    # On Slack a post to DUBOB and a DM to UBOB land in the same conversation.
    assert [p.text for p in slack.channel("DUBOB")] == []
    assert [p.text.split(" until ")[0] for p in slack.channel(CHANNEL)] == [
        "Bob got `backend` from the waitlist,"
    ]
