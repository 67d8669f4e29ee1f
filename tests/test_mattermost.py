"""The Mattermost adapter, driven through the real mattermostdriver against a fake server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from fake_mattermost import BOT_TOKEN, BOT_USER_ID, FakeMattermost, new_id
from fake_slack import BOT_USER_ID as SLACK_BOT_ID
from fake_slack import FakeSlack
from test_slack import make_runtime

from adapters.mattermost import MattermostAdapter, MattermostConfigError
from adapters.slack import SlackAdapter
from bot.config import Settings
from bot.messages import Reply
from bot.model import LeaseKind
from bot.store import Store, connect

CHANNEL = new_id()
ALICE, BOB, OTHER_BOT = new_id(), new_id(), new_id()


@pytest.fixture
async def fake() -> AsyncIterator[FakeMattermost]:
    """A fake Mattermost with two people and another bot."""
    async with FakeMattermost() as fake:
        fake.add_user(ALICE, "alice")
        fake.add_user(BOB, "bob")
        fake.add_user(OTHER_BOT, "ci-notifier", is_bot=True)
        yield fake


def adapter_for(
    fake: FakeMattermost, store: Store, settings: Settings, **kwargs: Any
) -> MattermostAdapter:
    """An adapter pointed at the fake, with fast liveness pings."""
    options: dict[str, Any] = {"token": BOT_TOKEN, "ping_interval": 0.5, "ping_timeout": 0.5}
    options.update(kwargs)
    return MattermostAdapter(make_runtime(store, settings), url=fake.url, **options)


@pytest.fixture
async def mattermost(
    fake: FakeMattermost, store: Store, settings: Settings
) -> AsyncIterator[MattermostAdapter]:
    """A started adapter."""
    adapter = adapter_for(fake, store, settings)
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.stop()


async def wait_for(condition: Any) -> None:
    """Poll `condition` until true (for at most five seconds)."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - the fake has no event for this
            await asyncio.sleep(0.02)


def bot_posts(fake: FakeMattermost) -> list[dict[str, Any]]:
    return [post for post in fake.posts if post["user_id"] == BOT_USER_ID]


async def say(
    fake: FakeMattermost, user: str, text: str, *, channel: str = CHANNEL, **kwargs: Any
) -> dict[str, Any]:
    """Post as `user` and return deploybot's answer."""
    before = len(bot_posts(fake))
    await fake.send_post(user, channel, text, **kwargs)
    return await fake.wait_for_post(lambda post: post["user_id"] == BOT_USER_ID, count=before + 1)


async def test_mention_takes_a_lock_and_replies(
    fake: FakeMattermost, mattermost: MattermostAdapter, store: Store
) -> None:
    """`@deploybot lock backend 30m note` locks and answers in the channel with @username."""
    reply = await say(fake, ALICE, "@deploybot lock backend 30m hotfix", mentions=[BOT_USER_ID])

    assert reply["channel_id"] == CHANNEL
    assert "@alice locked `backend`" in reply["message"]
    assert "hotfix" in reply["message"] and "(in 30 minutes)" in reply["message"]
    lease = await store.get(LeaseKind.LOCK, "backend")
    assert lease is not None and lease.holder.user_id == ALICE


async def test_reply_goes_to_the_thread_of_a_threaded_post(
    fake: FakeMattermost, mattermost: MattermostAdapter
) -> None:
    """A mention inside a thread is answered with the thread's root id."""
    root = new_id()
    reply = await say(fake, ALICE, "@deploybot status", root_id=root, mentions=[BOT_USER_ID])

    assert reply["root_id"] == root


async def test_direct_message_needs_no_mention(
    fake: FakeMattermost, mattermost: MattermostAdapter
) -> None:
    """Any post in a DM with the bot is a command."""
    dm = new_id()
    reply = await say(fake, BOB, "claim staging-2 feature/x", channel=dm, channel_type="D")

    assert reply["channel_id"] == dm
    assert "@bob claimed `staging-2`" in reply["message"]


async def test_channel_posts_without_mention_are_ignored(
    fake: FakeMattermost, mattermost: MattermostAdapter
) -> None:
    """Chatter in a channel that does not mention the bot gets no answer."""
    await fake.send_post(ALICE, CHANNEL, "lock backend")
    reply = await say(fake, ALICE, "@deploybot help", mentions=[BOT_USER_ID])

    assert "Commands" in reply["message"]
    assert len(bot_posts(fake)) == 1


async def test_own_other_bots_and_system_posts_are_ignored(
    fake: FakeMattermost, mattermost: MattermostAdapter
) -> None:
    """The bot's own (echoed) posts, other bots' posts and system posts never get answers."""
    dm = new_id()
    await fake.send_post(OTHER_BOT, dm, "lock backend", channel_type="D")
    await fake.send_post(
        ALICE,
        CHANNEL,
        "@deploybot joined",
        post_type="system_join_channel",
        mentions=[BOT_USER_ID],
    )
    await fake.send_post(ALICE, dm, "lock api", channel_type="D", props={"from_bot": "true"})
    reply = await say(fake, ALICE, "status", channel=dm, channel_type="D")

    assert "Deploy locks" in reply["message"]
    # The reply itself is echoed back to the bot's websocket; it must not answer itself.
    await say(fake, BOB, "help", channel=dm, channel_type="D")
    assert len(bot_posts(fake)) == 2


async def test_answers_again_after_the_connection_drops(
    fake: FakeMattermost, mattermost: MattermostAdapter
) -> None:
    """After an abrupt disconnect the adapter reconnects by itself and answers posts."""
    await fake.drop_connections()
    await fake.wait_for_authenticated(2, total=True, timeout=15)

    reply = await say(fake, ALICE, "@deploybot status", mentions=[BOT_USER_ID])
    assert reply["channel_id"] == CHANNEL


async def test_dead_connection_is_detected_by_unanswered_pings(
    fake: FakeMattermost, mattermost: MattermostAdapter
) -> None:
    """A server that stops answering pings is treated as gone and replaced."""
    fake.stop_answering_pings(True)
    await fake.wait_for_connections(2, total=True, timeout=15)
    fake.stop_answering_pings(False)
    await fake.wait_for_authenticated(2, total=True, timeout=15)

    reply = await say(fake, ALICE, "@deploybot status", mentions=[BOT_USER_ID])
    assert reply["channel_id"] == CHANNEL


async def test_invalid_token_is_a_clear_error_not_a_loop(
    fake: FakeMattermost, store: Store, settings: Settings
) -> None:
    """A wrong token stops start() with a message naming MATTERMOST_TOKEN."""
    adapter = adapter_for(fake, store, settings, token="wrong-token")

    with pytest.raises(MattermostConfigError, match="MATTERMOST_TOKEN"):
        await adapter.start()
    assert fake.total_connections == 0


async def test_token_revoked_while_running_stops_cleanly(
    fake: FakeMattermost, mattermost: MattermostAdapter
) -> None:
    """A token refused on reconnect ends the adapter with a clear reason, not a retry loop."""
    fake._tokens.pop(BOT_TOKEN)
    await fake.drop_connections()

    reason = await asyncio.wait_for(mattermost.failure(), timeout=15)

    assert "MATTERMOST_TOKEN" in reason
    attempts = fake.total_connections
    await asyncio.sleep(1)
    assert fake.total_connections == attempts


async def test_login_with_password_works(
    fake: FakeMattermost, store: Store, settings: Settings
) -> None:
    """A login id and password are accepted instead of a token."""
    fake.add_user(new_id(), "botlogin", is_bot=True, password="s3cret")
    adapter = MattermostAdapter(
        make_runtime(store, settings), url=fake.url, login_id="botlogin", password="s3cret"
    )
    await adapter.start()
    try:
        assert adapter.connected
    finally:
        await adapter.stop()


async def test_tls_with_the_configured_ca_connects_and_without_it_refuses(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    """wss:// works with a custom CA file, and verification refuses a server without it."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with FakeMattermost(tls=ca) as fake:
        fake.add_user(ALICE, "alice")
        verified = adapter_for(fake, store, settings, ca_file=ca_file)
        await verified.start()
        try:
            assert verified.connected
            reply = await say(fake, ALICE, "@deploybot status", mentions=[BOT_USER_ID])
            assert reply["channel_id"] == CHANNEL
        finally:
            await verified.stop()

        unverified = adapter_for(fake, store, settings)
        with pytest.raises(MattermostConfigError, match="certificate"):
            await unverified.start()


async def test_two_processes_handle_each_post_once(
    fake: FakeMattermost,
    mattermost: MattermostAdapter,
    redis_server_url: str,
    settings: Settings,
    store: Store,
) -> None:
    """Every websocket gets every post; with two deploybots on one Redis it is answered once."""
    other_store = Store(connect(redis_server_url), namespace=settings.namespace)
    other = adapter_for(fake, other_store, settings)
    await other.start()
    try:
        await fake.wait_for_authenticated(2)
        await say(fake, ALICE, "@deploybot lock backend", mentions=[BOT_USER_ID])
        await say(fake, BOB, "@deploybot help", mentions=[BOT_USER_ID])

        assert len(bot_posts(fake)) == 2
        assert [event.type for event in await store.history("backend", count=5)] == ["acquired"]
    finally:
        await other.stop()
        await other_store.close()


async def test_forbidden_and_rate_limited_posts_are_handled(
    fake: FakeMattermost, mattermost: MattermostAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    """A 403 is logged and skipped; a 429 is retried after Retry-After; no token in logs."""
    fake.fail_next("/posts", status=403)
    await fake.send_post(ALICE, CHANNEL, "@deploybot status", mentions=[BOT_USER_ID])
    await wait_for(lambda: len(fake.calls_to("/posts")) == 1)
    fake.rate_limit_next("/posts", retry_after=1)

    reply = await say(fake, ALICE, "@deploybot help", mentions=[BOT_USER_ID])

    assert "Commands" in reply["message"]
    assert "status=403" in caplog.text and "rate limited" in caplog.text
    assert BOT_TOKEN not in caplog.text


async def test_direct_messages_go_through_channels_direct(
    fake: FakeMattermost, mattermost: MattermostAdapter
) -> None:
    """send_direct opens the DM channel with channels/direct and posts there."""
    await mattermost.send_direct(ALICE, Reply.of("your lock expires soon"))

    post = await fake.wait_for_post(lambda post: post["user_id"] == BOT_USER_ID)
    assert fake.calls_to("/channels/direct")
    assert ALICE in post["channel_id"] or post["channel_id"]
    assert post["message"] == "your lock expires soon"


async def test_a_note_cannot_ping_the_channel(
    fake: FakeMattermost, mattermost: MattermostAdapter
) -> None:
    """`@channel` in a note is defused, so deploybot never pings everyone."""
    reply = await say(
        fake, ALICE, "@deploybot lock backend 30m @channel look", mentions=[BOT_USER_ID]
    )

    assert "@channel" not in reply["message"]


async def test_lock_on_slack_is_seen_and_protected_on_mattermost(
    fake: FakeMattermost, mattermost: MattermostAdapter, store: Store, settings: Settings
) -> None:
    """Both platforms share one state: a Slack lock shows in Mattermost and is not releasable
    by a Mattermost user."""
    async with FakeSlack() as slack_fake:
        slack_fake.add_user("UALICE", "alice", "Alice")
        slack = SlackAdapter(
            make_runtime(store, settings),
            bot_token="xoxb-test",
            app_token="xapp-test",
            api_url=slack_fake.api_url,
        )
        await slack.start()
        try:
            event = slack_fake.app_mention_event(
                user_id="UALICE", channel_id="CSLACK", text=f"<@{SLACK_BOT_ID}> lock backend"
            )
            await slack_fake.send_events_api(event)
            await slack_fake.wait_for_call("chat.postMessage")
        finally:
            await slack.stop()

    status = await say(fake, BOB, "@deploybot status backend", mentions=[BOT_USER_ID])
    assert "`backend`" in status["message"] and "Alice" in status["message"]
    refusal = await say(fake, BOB, "@deploybot unlock backend", mentions=[BOT_USER_ID])
    assert "held by Alice" in refusal["message"]
    lease = await store.get(LeaseKind.LOCK, "backend")
    assert lease is not None and lease.holder.platform == "slack"


async def test_one_deploybot_run_serves_slack_and_mattermost(
    fake: FakeMattermost, redis_server_url: str, namespace: str, tmp_path: Path
) -> None:
    """With both platforms configured, one `deploybot run` answers on both, on one state."""
    import os
    import signal
    import sys

    async with FakeSlack() as slack_fake:
        slack_fake.add_user("UALICE", "alice", "Alice")
        env = {
            **os.environ,
            "REDIS_URL": redis_server_url,
            "DEPLOYBOT_NAMESPACE": namespace,
            "SLACK_BOT_TOKEN": "xoxb-test",
            "SLACK_APP_TOKEN": "xapp-test",
            "SLACK_API_URL": slack_fake.api_url,
            "MATTERMOST_URL": fake.url,
            "MATTERMOST_TOKEN": BOT_TOKEN,
        }
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "deploybot"),
            "run",
            cwd=tmp_path,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await slack_fake.wait_for_connections(1, timeout=20)
            await fake.wait_for_authenticated(1, timeout=20)
            event = slack_fake.app_mention_event(
                user_id="UALICE", channel_id="CSLACK", text=f"<@{SLACK_BOT_ID}> lock backend"
            )
            await slack_fake.send_events_api(event)
            await slack_fake.wait_for_call("chat.postMessage")

            refusal = await say(fake, BOB, "@deploybot unlock backend", mentions=[BOT_USER_ID])
            assert "held by Alice" in refusal["message"]
        finally:
            process.send_signal(signal.SIGTERM)
            _out, err = await asyncio.wait_for(process.communicate(), timeout=15)

    assert process.returncode == 0, err.decode()
    assert BOT_TOKEN.encode() not in err and b"xoxb-test" not in err


async def test_connection_drop_mid_command_still_posts_the_reply(
    fake: FakeMattermost,
    mattermost: MattermostAdapter,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A post being handled when the websocket drops is still answered over REST, once."""
    release = asyncio.Event()
    handle = mattermost._runtime.commands.handle

    async def held(message: Any) -> Any:
        await release.wait()
        return await handle(message)

    monkeypatch.setattr(mattermost._runtime.commands, "handle", held)
    await fake.send_post(ALICE, CHANNEL, "@deploybot lock backend", mentions=[BOT_USER_ID])
    await wait_for(lambda: bool(mattermost._in_flight))
    await fake.drop_connections()
    release.set()

    reply = await fake.wait_for_post(lambda post: post["user_id"] == BOT_USER_ID)
    await fake.wait_for_authenticated(2, total=True, timeout=15)
    assert "@alice locked `backend`" in reply["message"]
    assert [e.type for e in await store.history("backend", count=5)] == ["acquired"]
