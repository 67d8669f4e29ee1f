"""Tests for bot.announcer: what is said where about reminders, expiries, releases and handoffs.

Everything runs through real components: leases change in the real server, the timeline sweeps
it on APScheduler, and the announcer reads the event stream through its consumer group. Chat
platforms are recorded in memory (`Recorder`) or faked at the wire (`FakeSlack`).

The helpers at the top (`Recorder`, `running_bot`, `wait_for`, `drained`) are shared with
test_timeline, test_waitlist and test_restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fake_slack import FakeSlack

from adapters.slack import SlackAdapter
from adapters.slack.format import EXTEND_ACTION, RELEASE_ACTION, button_value
from bot.announcer import GROUP, Announcer
from bot.commands import CommandHandler
from bot.config import Settings
from bot.jobs import JobService
from bot.leases import LeaseService
from bot.messages import Message, Reply, When
from bot.model import Holder, LeaseKind, Origin
from bot.render import render_plain
from bot.runtime import Runtime
from bot.store import LeasePolicy, Store, connect
from bot.timeline import Timeline

DEPLOYBOT = Path(sys.executable).parent / "deploybot"

CHANNEL = "C0DEPLOY"
ANNOUNCE = "CANN"
ALICE = Holder("slack", "UALICE", "Alice")
BOB = Holder("slack", "UBOB", "Bob")
ORIGIN = Origin("slack", CHANNEL)
CLI_VIA = Origin("local", "cli")


# -----------------------------------------------------------------------------------------
# shared helpers


@dataclass(frozen=True)
class Post:
    """One thing the announcer sent: to a channel, or (direct) to a person."""

    platform: str
    target: str
    text: str
    reply: Reply
    direct: bool
    thread: str | None = None


class Recorder:
    """A chat platform that keeps what it is asked to post, rendered as plain text.

    Several recorders may share one `log`, so the order across platforms is kept too.
    """

    def __init__(self, platform: str, log: list[Post] | None = None) -> None:
        self.platform = platform
        self.posts: list[Post] = [] if log is None else log

    @property
    def connected(self) -> bool:
        return True

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Nothing to disconnect."""

    async def failure(self) -> str:
        await asyncio.Event().wait()
        return ""

    async def post(self, channel: str, reply: Reply, *, thread: str | None = None) -> None:
        text = render_plain(reply.parts)
        self.posts.append(Post(self.platform, channel, text, reply, False, thread))

    async def send_direct(self, user_id: str, reply: Reply) -> None:
        text = render_plain(reply.parts)
        self.posts.append(Post(self.platform, user_id, text, reply, True))

    def dms(self, user_id: str) -> list[Post]:
        """Direct messages to `user_id` on this platform, oldest first."""
        return [
            p
            for p in self.posts
            if p.direct and p.target == user_id and p.platform == self.platform
        ]

    def channel(self, channel: str) -> list[Post]:
        """Posts in `channel` on this platform, oldest first."""
        return [
            p
            for p in self.posts
            if not p.direct and p.target == channel and p.platform == self.platform
        ]


async def wait_for(
    check: Callable[[], bool | Awaitable[bool]], what: str, *, limit: float = 10.0
) -> None:
    """Poll `check` (sync or async) until it is true; fail naming `what` after `limit` s."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await asyncio.sleep(0.02)


async def drained(store: Store) -> bool:
    """Whether the announcer group has read and acknowledged every event in the stream."""
    events = store.key("events")
    info = await store.redis.xinfo_stream(events)
    groups = await store.redis.xinfo_groups(events)
    group = next((g for g in groups if g["name"] == GROUP), None)
    return (
        group is not None
        and group["pending"] == 0
        and group["last-delivered-id"] == info["last-generated-id"]
    )


@asynccontextmanager
async def running_bot(
    store: Store, settings: Settings, *platforms: Any, consumer: str = "test"
) -> AsyncIterator[tuple[Timeline, Announcer]]:
    """The timeline and the announcer of one deploybot process, as `time_driven` runs them.

    The consumer group is created first, as it is after any earlier run of the bot; events
    written before a group exists are never announced (the group starts at the stream's end).
    """
    await store.ensure_event_group(GROUP)
    timeline = Timeline(store, settings)
    announcer = Announcer(store, settings, {p.platform: p for p in platforms}, consumer=consumer)
    timeline.start()
    task = asyncio.create_task(announcer.run())
    try:
        yield timeline, announcer
    finally:
        await timeline.stop()
        await announcer.stop()
        # stop() lets the blocking stream read run out (up to a second); the tests have
        # already waited for what they check, so cut it short to keep the suite fast.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_runtime(store: Store, settings: Settings) -> Runtime:
    """A runtime over an existing store (one per simulated deploybot process)."""
    leases = LeaseService(store, settings)
    jobs = JobService(store, settings)
    return Runtime(settings, store, leases, jobs, CommandHandler(leases, jobs, settings))


def policy_store(url: str, settings: Settings, **policy: Any) -> Store:
    """A store in the test's namespace with its own lease policy (reminder offsets, handoff)."""
    return Store(connect(url), namespace=settings.namespace, policy=LeasePolicy(**policy))


def chat(user: Holder, text: str, channel: str = CHANNEL) -> Message:
    """A message `user` typed in `channel` (a D... channel is their DM with the bot)."""
    return Message(
        platform=user.platform,
        user_id=user.user_id,
        display_name=user.display,
        channel=channel,
        text=text,
        direct=channel.startswith("D"),
    )


def cli_env(redis_server_url: str, namespace: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a pipeline running `deploybot` against the test server."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REDIS_URL", "REDIS_PASSWORD") and not key.startswith("DEPLOYBOT_")
    }
    return env | {
        "REDIS_URL": redis_server_url,
        "DEPLOYBOT_NAMESPACE": namespace,
        "DEPLOYBOT_DATA_DIR": str(tmp_path / ("unused-data-dir-" + "x" * 100)),
    }


async def run_cli(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    """Run `deploybot ARGS` to completion; return its exit status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        str(DEPLOYBOT),
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# -----------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def settings(namespace: str) -> Settings:
    """Fast sweeps, an announcement channel, and one admin."""
    return Settings(
        namespace=namespace,
        sweep_interval_s=0.1,
        announce_channels=[f"slack:{ANNOUNCE}"],
        admins=["slack:UADA"],
    )


@pytest.fixture
def slack() -> Recorder:
    return Recorder("slack")


@pytest.fixture
def commands(store: Store, settings: Settings) -> CommandHandler:
    return make_runtime(store, settings).commands


@pytest.fixture
async def short_reminders(redis_server_url: str, settings: Settings) -> AsyncIterator[Store]:
    """A store whose reminder comes 1 s before expiry (or at half-life below 2 s)."""
    store = policy_store(redis_server_url, settings, reminder_offsets_ms=(1000,))
    try:
        yield store
    finally:
        await store.close()


# -----------------------------------------------------------------------------------------
# reminders


async def test_reminder_is_a_dm_on_the_holders_platform_saying_what_when_and_how(
    short_reminders: Store, settings: Settings
) -> None:
    """Each holder is reminded by DM on their own platform: what, when, extend or release."""
    store = short_reminders
    slack, mattermost = Recorder("slack"), Recorder("mattermost")
    carol = Holder("mattermost", "mmcarol", "carol")
    async with running_bot(store, settings, slack, mattermost):
        lock = await store.acquire(
            LeaseKind.LOCK, "backend", ALICE, ttl_ms=2000, origin=ORIGIN, via=ORIGIN
        )
        claim = await store.acquire(
            LeaseKind.CLAIM,
            "staging-2",
            carol,
            ttl_ms=2000,
            origin=Origin("mattermost", "town-square"),
            via=Origin("mattermost", "town-square"),
        )
        await wait_for(lambda: slack.dms("UALICE") and mattermost.dms("mmcarol"), "reminders")

    alice, carols = slack.dms("UALICE")[0], mattermost.dms("mmcarol")[0]
    assert alice.text.startswith("Your lock on `backend` expires at ")
    assert "`extend backend 1h`" in alice.text and "`unlock backend`" in alice.text
    assert any(isinstance(p, When) and p.at_ms == lock.lease.expires_at for p in alice.reply.parts)
    assert alice.reply.leases == (lock.lease,)  # Slack turns this into Extend/Release buttons
    assert carols.text.startswith("Your claim on `staging-2` expires at ")
    assert "`release staging-2`" in carols.text
    assert carols.reply.leases == (claim.lease,)
    assert not [p for p in slack.posts if p.target == "mmcarol"]
    assert not [p for p in mattermost.posts if p.target == "UALICE"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    """A fake Slack with Alice and Bob in it."""
    async with FakeSlack() as fake:
        fake.add_user("UALICE", "alice", "Alice")
        fake.add_user("UBOB", "bob", "Bob")
        yield fake


@asynccontextmanager
async def slack_bot(
    fake: FakeSlack, store: Store, settings: Settings, consumer: str = "slack-test"
) -> AsyncIterator[SlackAdapter]:
    """A connected SlackAdapter with its own timeline and announcer (one deploybot process)."""
    adapter = SlackAdapter(
        make_runtime(store, settings),
        bot_token="xoxb-test",
        app_token="xapp-test",
        api_url=fake.api_url,
        ping_interval=0.5,
    )
    await adapter.start()
    try:
        async with running_bot(store, settings, adapter, consumer=consumer):
            yield adapter
    finally:
        await adapter.stop()


def posts_to(fake: FakeSlack, channel: str) -> list[dict[str, Any]]:
    return [params for params in fake.calls_to("chat.postMessage") if params["channel"] == channel]


async def test_slack_reminder_is_a_dm_with_extend_and_release_buttons(
    fake: FakeSlack, short_reminders: Store, settings: Settings
) -> None:
    """On Slack the reminder goes to the DM opened with conversations.open, with buttons."""
    store = short_reminders
    async with slack_bot(fake, store, settings):
        await fake.wait_for_connections(1)
        change = await store.acquire(
            LeaseKind.LOCK, "backend", ALICE, ttl_ms=2000, origin=ORIGIN, via=ORIGIN
        )
        opened = await fake.wait_for_call("conversations.open")
        reminder = await fake.wait_for_call(
            "chat.postMessage", lambda params: params["channel"] == "DUALICE"
        )

    assert opened["users"] == "UALICE"
    assert reminder["text"].startswith("Your lock on `backend` expires at <!date^")
    assert "`extend backend 1h`" in reminder["text"] and "`unlock backend`" in reminder["text"]
    actions = next(block for block in reminder["blocks"] if block["type"] == "actions")
    assert [(b["action_id"], b["value"]) for b in actions["elements"]] == [
        (EXTEND_ACTION, button_value(change.lease)),
        (RELEASE_ACTION, button_value(change.lease)),
    ]


async def click_in(
    fake: FakeSlack, user: str, channel: str, action_id: str, value: str
) -> dict[str, Any]:
    """Click a button on a bot message in `channel`; return what deploybot answered."""
    before = len(fake.calls_to("response_url"))
    payload = fake.block_action_payload(
        user_id=user,
        action_id=action_id,
        value=value,
        channel_id=channel,
        message_ts="1700000000.000100",
    )
    await fake.wait_for_ack(await fake.send_interactive(payload))
    return await fake.wait_for_call("response_url", count=before + 1)


async def test_extend_button_on_a_reminder_is_not_announced_as_a_cli_action(
    fake: FakeSlack, store: Store, settings: Settings
) -> None:
    """Clicking Extend in the reminder DM is a chat action: no "from the CLI" post anywhere."""
    async with slack_bot(fake, store, settings):
        await fake.wait_for_connections(1)
        change = await store.acquire(
            LeaseKind.LOCK, "backend", ALICE, ttl_ms=3_600_000, origin=ORIGIN, via=ORIGIN
        )
        answer = await click_in(
            fake, "UALICE", "DUALICE", EXTEND_ACTION, button_value(change.lease)
        )
        assert "extended the lock on `backend`" in answer["text"]
        await wait_for(lambda: drained(store), "the announcer to catch up")

    # Typing `extend backend` in the DM announces nothing; the button must behave the same.
    cli_posts = [
        p["text"] for p in fake.calls_to("chat.postMessage") if "from the CLI" in p["text"]
    ]
    assert cli_posts == []


async def test_release_button_in_the_channel_is_not_announced_there_again(
    fake: FakeSlack, store: Store, settings: Settings
) -> None:
    """Release clicked on the lock message answers in the channel once, like `unlock` does."""
    async with slack_bot(fake, store, settings):
        await fake.wait_for_connections(1)
        change = await store.acquire(
            LeaseKind.LOCK, "backend", ALICE, ttl_ms=3_600_000, origin=ORIGIN, via=ORIGIN
        )
        answer = await click_in(
            fake, "UALICE", CHANNEL, RELEASE_ACTION, button_value(change.lease)
        )
        assert "<@UALICE> unlocked `backend`" in answer["text"]
        await wait_for(lambda: drained(store), "the announcer to catch up")

    # The button's answer already says it in the channel; a chat release is not announced
    # in the announcement channel either (only CLI releases are).
    assert [p["text"] for p in posts_to(fake, CHANNEL)] == []
    assert [p["text"] for p in posts_to(fake, ANNOUNCE)] == []


# -----------------------------------------------------------------------------------------
# expiry


async def test_expiry_tells_origin_and_announce_channels_and_dms_the_holder(
    store: Store, settings: Settings, slack: Recorder
) -> None:
    """An expired lock is announced in its channel and the announcement channel; DM to holder."""
    async with running_bot(store, settings, slack):
        await store.acquire(
            LeaseKind.LOCK, "backend", ALICE, ttl_ms=2000, origin=ORIGIN, via=ORIGIN
        )
        await wait_for(
            lambda: (
                slack.channel(CHANNEL)
                and slack.channel(ANNOUNCE)
                and len(slack.dms("UALICE")) == 2
            ),
            "the expiry announcements",
        )
        await wait_for(lambda: drained(store), "the announcer to catch up")

    expected = "The lock on `backend` held by Alice auto-released after 2 seconds."
    assert [p.text for p in slack.channel(CHANNEL)] == [expected]
    assert [p.text for p in slack.channel(ANNOUNCE)] == [expected]
    reminder, expired = slack.dms("UALICE")
    assert reminder.text.startswith("Your lock on `backend` expires at ")
    assert expired.text.startswith("Your lock on `backend` expired at ")
    assert expired.text.endswith("and was released.")
    assert "late" not in expired.text


async def test_expired_claim_says_the_environment_is_free(
    store: Store, settings: Settings, slack: Recorder
) -> None:
    """A staging claim running out is announced with "`staging-2` is free"."""
    async with running_bot(store, settings, slack):
        await store.acquire(
            LeaseKind.CLAIM, "staging-2", BOB, ttl_ms=1000, origin=ORIGIN, via=ORIGIN
        )
        await wait_for(lambda: slack.channel(CHANNEL), "the expiry announcement")

    [post] = slack.channel(CHANNEL)
    assert post.text == (
        "The claim on `staging-2` held by Bob auto-released after 1 second. `staging-2` is free."
    )


async def test_released_claim_says_the_environment_is_free(
    store: Store, settings: Settings, slack: Recorder, commands: CommandHandler
) -> None:
    """`release staging-2` in its channel: the announcement channel hears it is free; the
    channel itself only sees the command's reply."""
    async with running_bot(store, settings, slack):
        await commands.handle(chat(BOB, "claim staging-2 feature-x"))
        reply = await commands.handle(chat(BOB, "release staging-2"))
        assert "Bob released `staging-2`" in render_plain(reply.parts)
        await wait_for(lambda: slack.channel(ANNOUNCE), "the release announcement")
        await wait_for(lambda: drained(store), "the announcer to catch up")

    assert [p.text for p in slack.channel(ANNOUNCE)] == ["`staging-2` is free: Bob released it."]
    assert slack.channel(CHANNEL) == []


async def test_released_claim_from_a_dm_tells_its_channel(
    store: Store, settings: Settings, slack: Recorder, commands: CommandHandler
) -> None:
    """A claim released from a DM is announced in the channel it was claimed in."""
    async with running_bot(store, settings, slack):
        await commands.handle(chat(BOB, "claim staging-2"))
        await commands.handle(chat(BOB, "release staging-2", channel="DUBOB"))
        await wait_for(lambda: slack.channel(CHANNEL), "the release announcement")

    assert [p.text for p in slack.channel(CHANNEL)] == ["`staging-2` is free: Bob released it."]


# -----------------------------------------------------------------------------------------
# lock release


async def test_lock_released_elsewhere_is_announced_in_its_channel(
    store: Store, settings: Settings, slack: Recorder, commands: CommandHandler
) -> None:
    """`unlock` typed in a DM tells the lock's channel in one line (not the announce channel)."""
    async with running_bot(store, settings, slack):
        await commands.handle(chat(ALICE, "lock backend"))
        await commands.handle(chat(ALICE, "unlock backend", channel="DUALICE"))
        await wait_for(lambda: slack.channel(CHANNEL), "the release announcement")
        await wait_for(lambda: drained(store), "the announcer to catch up")

    assert [p.text for p in slack.channel(CHANNEL)] == ["Alice unlocked `backend`."]
    assert slack.channel(ANNOUNCE) == []


async def test_lock_released_where_it_was_typed_is_not_repeated(
    store: Store, settings: Settings, slack: Recorder, commands: CommandHandler
) -> None:
    """`unlock` typed in the lock's own channel: the reply says it, the announcer stays quiet."""
    async with running_bot(store, settings, slack):
        await commands.handle(chat(ALICE, "lock backend"))
        await commands.handle(chat(ALICE, "unlock backend"))
        await wait_for(lambda: drained(store), "the announcer to catch up")

    assert slack.posts == []


async def test_lock_release_announcements_can_be_turned_off(
    store: Store, settings: Settings, slack: Recorder
) -> None:
    """With announce_lock_release off, a chat unlock from a DM posts nothing."""
    quiet = settings.model_copy(update={"announce_lock_release": False})
    commands = make_runtime(store, quiet).commands
    async with running_bot(store, quiet, slack):
        await commands.handle(chat(ALICE, "lock backend"))
        await commands.handle(chat(ALICE, "unlock backend", channel="DUALICE"))
        await wait_for(lambda: drained(store), "the announcer to catch up")

    assert slack.posts == []


async def test_force_release_dms_the_holder_who_forced_it_and_why(
    store: Store, settings: Settings, slack: Recorder, commands: CommandHandler
) -> None:
    """An admin's force-unlock: the former holder gets a DM naming the admin and the reason."""
    ada = Holder("slack", "UADA", "Ada")
    async with running_bot(store, settings, slack):
        await commands.handle(chat(ALICE, "lock backend"))
        await commands.handle(chat(ada, "force-unlock backend deploy is stuck"))
        await wait_for(lambda: slack.dms("UALICE"), "the DM to the former holder")
        await wait_for(lambda: drained(store), "the announcer to catch up")

    [dm] = slack.dms("UALICE")
    assert dm.text == "Ada force-released your lock on `backend`: deploy is stuck."
    assert [p.text for p in slack.channel(ANNOUNCE)] == [
        "Ada force-released Alice's lock on `backend`: deploy is stuck."
    ]
    assert slack.channel(CHANNEL) == []  # the admin typed it there; the reply said it


# -----------------------------------------------------------------------------------------
# CLI actions


async def test_cli_lock_and_unlock_are_announced_with_the_cli_users_name(
    store: Store, settings: Settings, slack: Recorder, tmp_path: Path, redis_server_url: str
) -> None:
    """`deploybot lock/unlock --as ci-bot` shows up in the announcement channel by name."""
    env = cli_env(redis_server_url, settings.namespace, tmp_path)
    async with running_bot(store, settings, slack):
        status, _out, err = await run_cli(env, tmp_path, "lock", "backend", "--as", "ci-bot")
        assert status == 0, err
        await wait_for(lambda: slack.channel(ANNOUNCE), "the lock announcement")
        status, _out, err = await run_cli(env, tmp_path, "unlock", "backend", "--as", "ci-bot")
        assert status == 0, err
        await wait_for(lambda: len(slack.channel(ANNOUNCE)) == 2, "the unlock announcement")

    locked, unlocked = (p.text for p in slack.channel(ANNOUNCE))
    assert locked.startswith("ci-bot locked `backend` from the CLI, until ")
    assert unlocked == "ci-bot unlocked `backend`."


# -----------------------------------------------------------------------------------------
# exactly once across processes


async def test_two_processes_post_every_reminder_and_expiry_exactly_once(
    redis_server_url: str, settings: Settings
) -> None:
    """Two timelines and two announcers on one namespace: each post happens once in total."""
    stores = [policy_store(redis_server_url, settings, reminder_offsets_ms=(1000,)) for _ in "ab"]
    log: list[Post] = []
    first, second = Recorder("slack", log), Recorder("slack", log)
    names = [f"svc-{i}" for i in range(6)]
    try:
        async with (
            running_bot(stores[0], settings, first, consumer="process-a"),
            running_bot(stores[1], settings, second, consumer="process-b"),
        ):
            for i, name in enumerate(names):
                holder = Holder("slack", f"U{i}", f"user{i}")
                await stores[i % 2].acquire(
                    LeaseKind.LOCK, name, holder, ttl_ms=2000, origin=ORIGIN, via=ORIGIN
                )
            await wait_for(
                lambda: len(log) >= 4 * len(names), "a reminder, two expiry posts and a DM each"
            )
            await wait_for(lambda: drained(stores[0]), "both announcers to catch up")
    finally:
        for store in stores:
            await store.close()

    for i, name in enumerate(names):
        dms = [p.text for p in log if p.direct and p.target == f"U{i}"]
        assert len(dms) == 2, dms
        assert dms[0].startswith(f"Your lock on `{name}` expires at ")
        assert dms[1].startswith(f"Your lock on `{name}` expired at ")
        for channel in (CHANNEL, ANNOUNCE):
            said = [p for p in log if p.target == channel and f"`{name}`" in p.text]
            assert len(said) == 1, said
    assert len(log) == 4 * len(names)


async def test_two_slack_processes_post_each_announcement_once(
    fake: FakeSlack, redis_server_url: str, settings: Settings
) -> None:
    """Two full Slack deploybots on one fake Slack: one reminder, one expiry post per place."""
    stores = [policy_store(redis_server_url, settings, reminder_offsets_ms=(1000,)) for _ in "ab"]
    try:
        async with (
            slack_bot(fake, stores[0], settings, consumer="process-a"),
            slack_bot(fake, stores[1], settings, consumer="process-b"),
        ):
            await fake.wait_for_connections(2)
            await stores[0].acquire(
                LeaseKind.LOCK, "backend", ALICE, ttl_ms=2000, origin=ORIGIN, via=ORIGIN
            )
            await stores[1].acquire(
                LeaseKind.CLAIM, "staging-2", BOB, ttl_ms=2000, origin=ORIGIN, via=ORIGIN
            )
            await wait_for(
                lambda: len(posts_to(fake, CHANNEL)) >= 2 and len(posts_to(fake, "DUBOB")) >= 2,
                "the expiry posts",
            )
            await wait_for(lambda: drained(stores[0]), "both announcers to catch up")
    finally:
        for store in stores:
            await store.close()

    assert len(posts_to(fake, CHANNEL)) == 2
    assert len(posts_to(fake, ANNOUNCE)) == 2
    assert len(posts_to(fake, "DUALICE")) == 2
    assert len(posts_to(fake, "DUBOB")) == 2


class Hanging(Recorder):
    """A platform whose posts never return, like a replica frozen mid-announcement."""

    def __init__(self) -> None:
        super().__init__("slack")
        self.entered = asyncio.Event()

    async def post(self, channel: str, reply: Reply, *, thread: str | None = None) -> None:
        self.entered.set()
        await asyncio.Event().wait()


async def test_an_announcement_a_crashed_replica_never_made_is_made_by_another(
    store: Store, settings: Settings, redis_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica dies while posting: the survivor reclaims the event and makes the post."""
    await store.ensure_event_group(GROUP)
    hanging = Hanging()
    crashed = asyncio.create_task(
        Announcer(store, settings, {"slack": hanging}, consumer="crashed").run()
    )
    await store.acquire(LeaseKind.LOCK, "backend", ALICE, ttl_ms=60_000, origin=ORIGIN, via=ORIGIN)
    await store.release(LeaseKind.LOCK, "backend", ALICE, via=Origin("slack", "DUALICE"))
    await asyncio.wait_for(hanging.entered.wait(), timeout=10)
    crashed.cancel()  # the replica is gone; the event stays pending, never acknowledged
    with contextlib.suppress(asyncio.CancelledError):
        await crashed

    other = Store(connect(redis_server_url), namespace=settings.namespace)
    claim = other.claim_stale_events

    async def claim_at_once(group: str, consumer: str, *, min_idle_ms: int = 0) -> Any:
        return await claim(group, consumer, min_idle_ms=0)  # not after a minute of idleness

    monkeypatch.setattr(other, "claim_stale_events", claim_at_once)
    survivor = Recorder("slack")
    try:
        async with running_bot(other, settings, survivor, consumer="survivor"):
            await wait_for(lambda: drained(other), "the survivor to acknowledge the event")
    finally:
        await other.close()

    assert [p.text for p in survivor.channel(CHANNEL)] == ["Alice unlocked `backend`."]
