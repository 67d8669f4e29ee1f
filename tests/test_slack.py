"""The Slack adapter, driven through the real slack-bolt client against a local fake Slack."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fake_slack import BOT_ID, BOT_USER_ID, FakeSlack

from adapters.slack import SlackAdapter, SlackConfigError
from adapters.slack.format import EXTEND_ACTION, RELEASE_ACTION, button_value
from bot.commands import CommandHandler
from bot.config import Settings
from bot.jobs import JobService
from bot.leases import LeaseService
from bot.model import LeaseKind
from bot.runtime import Runtime
from bot.store import Store, connect

CHANNEL = "C0DEPLOY"


def make_runtime(store: Store, settings: Settings) -> Runtime:
    """A runtime over an existing store (one per simulated deploybot process)."""
    leases = LeaseService(store, settings)
    jobs = JobService(store, settings)
    return Runtime(settings, store, leases, jobs, CommandHandler(leases, jobs, settings))


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    """A fake Slack with two people in it."""
    async with FakeSlack() as fake:
        fake.add_user("UALICE", "alice", "Alice")
        fake.add_user("UBOB", "bob", "Bob")
        yield fake


@pytest.fixture
async def slack(fake: FakeSlack, store: Store, settings: Settings) -> AsyncIterator[SlackAdapter]:
    """A connected adapter; ping_interval is short so a dropped socket is noticed quickly."""
    adapter = SlackAdapter(
        make_runtime(store, settings),
        bot_token="xoxb-test",
        app_token="xapp-test",
        api_url=fake.api_url,
        ping_interval=0.5,
    )
    await adapter.start()
    await fake.wait_for_connections(1)
    try:
        yield adapter
    finally:
        await adapter.stop()


async def mention(fake: FakeSlack, user: str, text: str, **kwargs: Any) -> dict[str, Any]:
    """Mention the bot in the channel and return the reply it posts."""
    before = len(fake.calls_to("chat.postMessage"))
    event = fake.app_mention_event(
        user_id=user, channel_id=CHANNEL, text=f"<@{BOT_USER_ID}> {text}", **kwargs
    )
    await fake.send_events_api(event)
    return await fake.wait_for_call("chat.postMessage", count=before + 1)


def post_texts(fake: FakeSlack) -> list[str]:
    return [str(params.get("text")) for params in fake.calls_to("chat.postMessage")]


async def test_mention_takes_a_lock_and_replies_in_the_channel(
    fake: FakeSlack, slack: SlackAdapter, store: Store
) -> None:
    """`@deploybot lock backend 30m note` locks and answers with mention, date token, buttons."""
    reply = await mention(fake, "UALICE", "lock backend 30m hotfix for INC-12")

    assert reply["channel"] == CHANNEL
    assert "<@UALICE> locked `backend`" in reply["text"]
    assert "<!date^" in reply["text"] and "hotfix for INC-12" in reply["text"]
    actions = next(block for block in reply["blocks"] if block["type"] == "actions")
    assert [button["action_id"] for button in actions["elements"]] == [
        EXTEND_ACTION,
        RELEASE_ACTION,
    ]
    lease = await store.get(LeaseKind.LOCK, "backend")
    assert lease is not None and lease.holder.user_id == "UALICE"
    assert lease.holder.display == "Alice"
    fake.assert_tokens(bot_token="xoxb-test", app_token="xapp-test")


async def test_mention_in_a_thread_is_answered_in_that_thread(
    fake: FakeSlack, slack: SlackAdapter
) -> None:
    """A mention inside a thread gets its reply in the same thread."""
    reply = await mention(fake, "UALICE", "status", thread_ts="1700000000.000001")

    assert reply["thread_ts"] == "1700000000.000001"


async def test_direct_message_is_a_command_without_mention(
    fake: FakeSlack, slack: SlackAdapter
) -> None:
    """Any message in a DM with the bot is handled as a command."""
    await fake.send_events_api(fake.direct_message_event(user_id="UBOB", text="claim staging-2"))

    reply = await fake.wait_for_call("chat.postMessage")
    assert reply["channel"] == "DUBOB"
    assert "<@UBOB> claimed `staging-2`" in reply["text"]


async def test_the_bots_own_and_other_bots_messages_are_ignored(
    fake: FakeSlack, slack: SlackAdapter
) -> None:
    """Messages from deploybot itself or another bot, and edits, never become commands."""
    own = fake.direct_message_event(user_id=BOT_USER_ID, text="lock backend", bot_id=BOT_ID)
    other = fake.direct_message_event(user_id="UOTHERBOT", text="lock backend", bot_id="BOTHER")
    edit = fake.direct_message_event(user_id="UALICE", text="lock backend")
    edit["subtype"] = "message_changed"
    for event in (own, other, edit):
        envelope = await fake.send_events_api(event)
        await fake.wait_for_ack(envelope)

    # A later real message is answered, and it is the only answer.
    await fake.send_events_api(fake.direct_message_event(user_id="UALICE", text="status"))
    await fake.wait_for_call("chat.postMessage")
    assert len(fake.calls_to("chat.postMessage")) == 1


async def test_redelivered_envelope_is_applied_once(
    fake: FakeSlack, slack: SlackAdapter, store: Store
) -> None:
    """The same event id again (retry_attempt 1) neither locks twice nor posts twice."""
    event = fake.app_mention_event(
        user_id="UALICE", channel_id=CHANNEL, text=f"<@{BOT_USER_ID}> lock backend"
    )
    first = await fake.send_events_api(event, event_id="Ev1")
    await fake.wait_for_call("chat.postMessage")
    retry = await fake.send_events_api(
        event, event_id="Ev1", retry_attempt=1, retry_reason="timeout"
    )
    await fake.wait_for_ack(first)
    await fake.wait_for_ack(retry)

    # A marker mention proves the retry was processed before we count.
    await mention(fake, "UBOB", "help")
    assert len(fake.calls_to("chat.postMessage")) == 2
    history = await store.history("backend", count=10)
    assert [event.type for event in history] == ["acquired"]


async def test_two_processes_handle_each_event_once(
    fake: FakeSlack,
    slack: SlackAdapter,
    redis_server_url: str,
    settings: Settings,
    store: Store,
) -> None:
    """With two deploybot processes on one Redis, an event both receive is answered once."""
    other_store = Store(connect(redis_server_url), namespace=settings.namespace)
    other = SlackAdapter(
        make_runtime(other_store, settings),
        bot_token="xoxb-test",
        app_token="xapp-test",
        api_url=fake.api_url,
    )
    await other.start()
    try:
        await fake.wait_for_connections(2)
        event = fake.app_mention_event(
            user_id="UALICE", channel_id=CHANNEL, text=f"<@{BOT_USER_ID}> lock backend"
        )
        envelope = await fake.send_events_api(event, event_id="EvBoth", to_all=True)
        await fake.wait_for_call("chat.postMessage")
        await fake.wait_for_ack(envelope)

        await mention(fake, "UBOB", "help")
        assert len(fake.calls_to("chat.postMessage")) == 2
        assert [e.type for e in await store.history("backend", count=10)] == ["acquired"]
    finally:
        await other.stop()
        await other_store.close()


async def test_slash_command_state_change_is_public_and_status_is_ephemeral(
    fake: FakeSlack, slack: SlackAdapter
) -> None:
    """`/deploy lock` answers in the channel; `/deploy status` and errors only to the caller."""
    lock = await fake.send_slash_command(text="lock api 1h", user_id="UALICE", channel_id=CHANNEL)
    assert (await fake.wait_for_ack(lock)).get("payload") in (None, {})
    public = await fake.wait_for_call("response_url")
    assert public["response_type"] == "in_channel"
    assert "<@UALICE> locked `api`" in public["text"]

    await fake.send_slash_command(text="status", user_id="UBOB", channel_id=CHANNEL)
    status = await fake.wait_for_call("response_url", count=2)
    assert status["response_type"] == "ephemeral"
    assert "`api`" in status["text"]

    await fake.send_slash_command(text="unlock api", user_id="UBOB", channel_id=CHANNEL)
    refusal = await fake.wait_for_call("response_url", count=3)
    assert refusal["response_type"] == "ephemeral"
    assert "held by <@UALICE>" in refusal["text"]


async def test_command_is_acked_before_slow_work(
    fake: FakeSlack, slack: SlackAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ack arrives while the command is still running, so Slack never retries it."""
    release = asyncio.Event()
    runtime_handle = slack._runtime.commands.handle

    async def slow_handle(message: Any) -> Any:
        await release.wait()
        return await runtime_handle(message)

    monkeypatch.setattr(slack._runtime.commands, "handle", slow_handle)
    command = await fake.send_slash_command(text="status", user_id="UALICE", channel_id=CHANNEL)
    mention_event = fake.app_mention_event(
        user_id="UALICE", channel_id=CHANNEL, text=f"<@{BOT_USER_ID}> status"
    )
    event = await fake.send_events_api(mention_event)

    await fake.wait_for_ack(command)
    await fake.wait_for_ack(event)
    assert not fake.calls_to("response_url") and not fake.calls_to("chat.postMessage")
    release.set()
    await fake.wait_for_call("response_url")
    await fake.wait_for_call("chat.postMessage")


async def click(fake: FakeSlack, user: str, action_id: str, value: str) -> dict[str, Any]:
    """Click a button on a bot message and return what deploybot answered."""
    before = len(fake.calls_to("response_url"))
    payload = fake.block_action_payload(
        user_id=user,
        action_id=action_id,
        value=value,
        channel_id=CHANNEL,
        message_ts="1700000000.000100",
    )
    envelope = await fake.send_interactive(payload)
    await fake.wait_for_ack(envelope)
    return await fake.wait_for_call("response_url", count=before + 1)


async def test_holder_clicks_extend_and_release(
    fake: FakeSlack, slack: SlackAdapter, store: Store
) -> None:
    """The holder's Extend moves the expiry and Release frees the lock."""
    await mention(fake, "UALICE", "lock backend 10m")
    lease = await store.get(LeaseKind.LOCK, "backend")
    assert lease is not None

    extended = await click(fake, "UALICE", EXTEND_ACTION, button_value(lease))
    assert "extended the lock on `backend`" in extended["text"]
    after = await store.get(LeaseKind.LOCK, "backend")
    assert after is not None and after.expires_at > lease.expires_at

    released = await click(fake, "UALICE", RELEASE_ACTION, button_value(lease))
    assert "<@UALICE> unlocked `backend`" in released["text"]
    assert await store.get(LeaseKind.LOCK, "backend") is None


async def test_someone_elses_click_is_refused_and_names_the_holder(
    fake: FakeSlack, slack: SlackAdapter, store: Store
) -> None:
    """Release clicked by a non-holder gets an ephemeral refusal; the lock stays."""
    await mention(fake, "UALICE", "lock backend")
    lease = await store.get(LeaseKind.LOCK, "backend")
    assert lease is not None

    answer = await click(fake, "UBOB", RELEASE_ACTION, button_value(lease))

    assert answer["response_type"] == "ephemeral"
    assert "held by <@UALICE>" in answer["text"]
    assert await store.get(LeaseKind.LOCK, "backend") == lease


async def test_button_on_an_outdated_message_does_nothing(
    fake: FakeSlack, slack: SlackAdapter, store: Store
) -> None:
    """A button for a lease that has since changed hands is refused as outdated."""
    await mention(fake, "UALICE", "lock backend")
    old = await store.get(LeaseKind.LOCK, "backend")
    assert old is not None
    await mention(fake, "UALICE", "unlock backend")
    await mention(fake, "UBOB", "lock backend")

    answer = await click(fake, "UALICE", RELEASE_ACTION, button_value(old))

    assert "outdated" in answer["text"]
    current = await store.get(LeaseKind.LOCK, "backend")
    assert current is not None and current.holder.user_id == "UBOB"


async def test_reconnects_after_disconnect_message(fake: FakeSlack, slack: SlackAdapter) -> None:
    """After Slack's `disconnect` message the client reconnects and mentions still work."""
    await fake.send_disconnect()
    await fake.wait_for_connections(2, timeout=10)

    reply = await mention(fake, "UALICE", "status")
    assert reply["channel"] == CHANNEL


async def test_reconnects_after_the_socket_drops(fake: FakeSlack, slack: SlackAdapter) -> None:
    """After the socket is cut without a goodbye, the client reconnects and answers again."""
    await fake.drop_connections()
    await fake.wait_for_connections(2, timeout=10)

    reply = await mention(fake, "UALICE", "status")
    assert reply["channel"] == CHANNEL


async def test_failing_command_gets_a_polite_reply(fake: FakeSlack, slack: SlackAdapter) -> None:
    """An unknown command is answered with a suggestion, never a traceback."""
    reply = await mention(fake, "UALICE", "lokc backend")

    assert "Did you mean `lock`" in reply["text"]
    assert "Traceback" not in reply["text"]


async def test_rate_limited_post_is_retried(fake: FakeSlack, slack: SlackAdapter) -> None:
    """A 429 with Retry-After on chat.postMessage is retried after the delay and lands."""
    fake.rate_limit_next("chat.postMessage", retry_after=1)
    event = fake.app_mention_event(
        user_id="UALICE", channel_id=CHANNEL, text=f"<@{BOT_USER_ID}> status"
    )

    await fake.send_events_api(event)

    retried = await fake.wait_for_call("chat.postMessage", count=2, timeout=10)
    assert retried["channel"] == CHANNEL
    assert "Deploy locks" in retried["text"]


async def test_channel_not_found_is_logged_not_fatal(
    fake: FakeSlack, slack: SlackAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    """A Web API error is logged with its code and the bot keeps serving."""
    fake.fail_next("chat.postMessage", error="channel_not_found")

    await mention(fake, "UALICE", "status")
    reply = await mention(fake, "UALICE", "status")

    assert reply["channel"] == CHANNEL
    assert "error=channel_not_found" in caplog.text
    assert "xoxb-test" not in caplog.text and "xapp-test" not in caplog.text


async def test_direct_messages_open_a_conversation(fake: FakeSlack, slack: SlackAdapter) -> None:
    """send_direct goes through conversations.open and posts in the DM channel."""
    from bot.messages import Reply

    await slack.send_direct("UBOB", Reply.of("your lock expires soon"))

    opened = await fake.wait_for_call("conversations.open")
    assert opened["users"] == "UBOB"
    posted = await fake.wait_for_call("chat.postMessage")
    assert posted["channel"] == "DUBOB"


async def test_a_note_cannot_ping_the_channel(fake: FakeSlack, slack: SlackAdapter) -> None:
    """Slack markup in a note is escaped, so `<!channel>` is shown, not sent as a ping."""
    reply = await mention(fake, "UALICE", "lock backend 30m <!channel> look")

    assert "<!channel>" not in reply["text"]
    assert "&lt;!channel&gt;" in reply["text"]


def test_malformed_tokens_are_refused_with_a_clear_error(store: Store, settings: Settings) -> None:
    """Swapped or missing token prefixes are reported before connecting."""
    runtime = make_runtime(store, settings)
    with pytest.raises(SlackConfigError, match="xoxb-"):
        SlackAdapter(runtime, bot_token="xapp-1", app_token="xapp-2")
    with pytest.raises(SlackConfigError, match="xapp-"):
        SlackAdapter(runtime, bot_token="xoxb-1", app_token="xoxb-2")


async def test_button_value_round_trips(store: Store) -> None:
    """The button carries kind, name and token as JSON."""
    from adapters.slack.format import parse_button_value

    assert parse_button_value(json.dumps({"kind": "claim", "name": "s2", "token": 5})) == (
        LeaseKind.CLAIM,
        "s2",
        5,
    )
    assert parse_button_value("garbage") is None


async def test_reconnects_are_logged_with_the_reason(
    fake: FakeSlack, slack: SlackAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    """Both kinds of reconnect leave a log line that says why."""
    caplog.set_level("INFO")

    await fake.send_disconnect(reason="refresh_requested")
    await fake.wait_for_connections(2, timeout=10)
    await fake.drop_connections()
    await fake.wait_for_connections(3, timeout=10)

    assert "reason=disconnect" in caplog.text and "refresh_requested" in caplog.text
    assert "already closed. Reconnecting" in caplog.text


async def test_display_names_are_cached(fake: FakeSlack, slack: SlackAdapter) -> None:
    """users.info is asked once per person, not once per message."""
    await mention(fake, "UALICE", "status")
    await mention(fake, "UALICE", "help")

    assert [call["user"] for call in fake.calls_to("users.info")] == ["UALICE"]


async def test_deploybot_run_serves_slack_and_stops_on_sigterm(
    fake: FakeSlack, redis_server_url: str, namespace: str, tmp_path: Any
) -> None:
    """`deploybot run` with Slack tokens connects, answers, and exits 0 on SIGTERM."""
    import os
    import signal
    import sys
    from pathlib import Path

    env = {
        **os.environ,
        "REDIS_URL": redis_server_url,
        "DEPLOYBOT_NAMESPACE": namespace,
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_APP_TOKEN": "xapp-test",
        "SLACK_API_URL": fake.api_url,
    }
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "deploybot"),
        "-v",
        "run",
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await fake.wait_for_connections(1, timeout=20)
        reply = await mention(fake, "UALICE", "lock backend")
        assert "<@UALICE> locked `backend`" in reply["text"]
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(process.communicate(), timeout=15)

    assert process.returncode == 0, err.decode()
    assert b"xoxb-test" not in err and b"xapp-test" not in err


async def test_socket_drop_mid_command_still_posts_the_reply(
    fake: FakeSlack, slack: SlackAdapter, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command in flight when the socket drops is finished and answered, then the bot
    reconnects; the lock is taken exactly once."""
    release = asyncio.Event()
    handle = slack._runtime.commands.handle

    async def held(message: Any) -> Any:
        await release.wait()
        return await handle(message)

    monkeypatch.setattr(slack._runtime.commands, "handle", held)
    event = fake.app_mention_event(
        user_id="UALICE", channel_id=CHANNEL, text=f"<@{BOT_USER_ID}> lock backend"
    )
    envelope = await fake.send_events_api(event)
    await fake.wait_for_ack(envelope)
    await fake.drop_connections()
    release.set()

    reply = await fake.wait_for_call("chat.postMessage")
    await fake.wait_for_connections(2, timeout=10)
    assert "<@UALICE> locked `backend`" in reply["text"]
    assert [e.type for e in await store.history("backend", count=5)] == ["acquired"]
