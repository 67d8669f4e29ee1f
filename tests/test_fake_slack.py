"""FakeSlack speaks Slack's wire protocols: the real slack-bolt and slack_sdk clients run on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fake_slack import BOT_ID, BOT_USER_ID, FakeSlack
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.web.async_client import AsyncWebClient

BOT_TOKEN = "xoxb-test"
APP_TOKEN = "xapp-test"
USER_ID = "U0ALICE"
CHANNEL_ID = "C0DEPLOY"

# AsyncSocketModeHandler's default ping_interval: its session monitor wakes this often, and
# only the monitor notices a socket that died without a close frame.
HANDLER_PING_INTERVAL = 10


@dataclass
class Heard:
    """What the bot's listeners saw, so tests can wait on it instead of sleeping."""

    socket_messages: list[dict[str, Any]] = field(default_factory=list)
    mentions: list[dict[str, Any]] = field(default_factory=list)
    replies: list[dict[str, Any]] = field(default_factory=list)
    retry_headers: list[tuple[Any, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    messages_finished: int = 0
    actions: list[str] = field(default_factory=list)
    # The message listener waits here; clear it to hold the listener mid-flight.
    message_gate: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def __post_init__(self) -> None:
        self.message_gate.set()

    async def changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], object], *, limit: float = 5.0) -> None:
        async with asyncio.timeout(limit), self._changed:
            await self._changed.wait_for(predicate)


def build_app(client: AsyncWebClient, heard: Heard) -> AsyncApp:
    """A bolt app with one listener per kind of envelope, each recording into `heard`."""
    app = AsyncApp(client=client)

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Any, request: AsyncBoltRequest) -> None:
        heard.mentions.append(event)
        heard.retry_headers.append(
            (request.headers.get("x-slack-retry-num"), request.headers.get("x-slack-retry-reason"))
        )
        reply = await say(f"On it, <@{event['user']}>.")
        heard.replies.append(reply.data)
        await heard.changed()

    @app.message()
    async def on_message(message: dict[str, Any]) -> None:
        heard.messages.append(message)
        await heard.changed()
        await heard.message_gate.wait()
        heard.messages_finished += 1
        await heard.changed()

    @app.command("/deploy")
    async def on_deploy(ack: Any, respond: Any, command: dict[str, Any]) -> None:
        await ack(f"Deploying {command['text']}...")
        await respond(f"Deployed {command['text']}.")

    @app.action("approve_deploy")
    async def on_approve(ack: Any, action: dict[str, Any]) -> None:
        await ack()
        heard.actions.append(action["value"])
        await heard.changed()

    return app


ConnectBot = Callable[..., Awaitable[tuple[AsyncSocketModeHandler, Heard]]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    """A running FakeSlack, stopped after the test."""
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def connect_bot(fake: FakeSlack) -> AsyncIterator[ConnectBot]:
    """Connect a bolt app over Socket Mode to the fake; every handler is closed afterwards."""
    handlers: list[AsyncSocketModeHandler] = []

    async def connect(
        *, client: AsyncWebClient | None = None, ping_interval: float = HANDLER_PING_INTERVAL
    ) -> tuple[AsyncSocketModeHandler, Heard]:
        heard = Heard()
        client = client or AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)
        app = build_app(client, heard)
        handler = AsyncSocketModeHandler(app, APP_TOKEN, ping_interval=ping_interval)
        handlers.append(handler)

        async def record(_: AsyncBaseSocketModeClient, message: dict[str, Any], raw: Any) -> None:
            heard.socket_messages.append(message)
            await heard.changed()

        handler.client.message_listeners.append(record)
        await handler.connect_async()
        await fake.wait_for_connections(1)
        return handler, heard

    yield connect
    for handler in handlers:
        await handler.close_async()


def mention(fake: FakeSlack, text: str = "lock api") -> dict[str, Any]:
    return fake.app_mention_event(
        user_id=USER_ID, channel_id=CHANNEL_ID, text=f"<@{BOT_USER_ID}> {text}"
    )


async def test_client_connects_with_the_app_token_and_gets_hello(
    fake: FakeSlack, connect_bot: ConnectBot
) -> None:
    """The client opens a socket via apps.connections.open (app token) and receives hello."""
    _, heard = await connect_bot()
    await heard.wait_for(lambda: heard.socket_messages)

    hello = heard.socket_messages[0]
    assert hello["type"] == "hello"
    assert hello["num_connections"] == 1
    assert hello["connection_info"] == {"app_id": "A0FAKE"}
    assert set(hello["debug_info"]) == {"host", "build_number", "approximate_connection_time"}
    assert (fake.connection_count, fake.total_connections) == (1, 1)
    assert [call.token for call in fake.calls if call.method == "apps.connections.open"] == [
        APP_TOKEN
    ]


async def test_app_mention_is_acked_and_answered_in_its_channel_with_the_bot_token(
    fake: FakeSlack, connect_bot: ConnectBot
) -> None:
    """An app_mention envelope is acked without payload, and say() posts with the bot token."""
    await connect_bot()

    envelope_id = await fake.send_events_api(mention(fake))
    ack = await fake.wait_for_ack(envelope_id)
    post = await fake.wait_for_call("chat.postMessage")

    assert ack == {"envelope_id": envelope_id}
    assert 0 <= fake.ack_times[envelope_id] < 5
    assert post["channel"] == CHANNEL_ID
    assert post["text"] == f"On it, <@{USER_ID}>."
    assert [call.token for call in fake.calls if call.method == "chat.postMessage"] == [BOT_TOKEN]
    fake.assert_tokens(bot_token=BOT_TOKEN, app_token=APP_TOKEN)


async def test_events_are_acked_before_the_listener_finishes(
    fake: FakeSlack, connect_bot: ConnectBot
) -> None:
    """Bolt acks an events_api envelope while its listener is still running."""
    _, heard = await connect_bot()
    heard.message_gate.clear()

    event = fake.direct_message_event(user_id=USER_ID, text="status")
    envelope_id = await fake.send_events_api(event)
    await heard.wait_for(lambda: heard.messages)
    await fake.wait_for_ack(envelope_id)
    assert heard.messages_finished == 0

    heard.message_gate.set()
    await heard.wait_for(lambda: heard.messages_finished == 1)
    assert heard.messages[0]["channel_type"] == "im"


async def test_retry_attempt_reaches_bolt_as_retry_headers(
    fake: FakeSlack, connect_bot: ConnectBot
) -> None:
    """The envelope's retry_attempt and retry_reason become x-slack-retry-* request headers."""
    _, heard = await connect_bot()

    first = await fake.send_events_api(mention(fake))
    await fake.wait_for_ack(first)
    await heard.wait_for(lambda: len(heard.retry_headers) == 1)
    retry = await fake.send_events_api(mention(fake), retry_attempt=2, retry_reason="http_timeout")
    await fake.wait_for_ack(retry)
    await heard.wait_for(lambda: len(heard.replies) == 2)

    assert heard.retry_headers == [(["0"], [""]), (["2"], ["http_timeout"])]


async def test_bot_own_messages_are_acked_but_not_dispatched(
    fake: FakeSlack, connect_bot: ConnectBot
) -> None:
    """A message from the bot itself (auth.test's user and bot ids) is acked and dropped."""
    _, heard = await connect_bot()

    own = fake.direct_message_event(user_id=BOT_USER_ID, text="Lock taken.", bot_id=BOT_ID)
    own_id = await fake.send_events_api(own)
    await fake.wait_for_ack(own_id)
    other_id = await fake.send_events_api(fake.direct_message_event(user_id=USER_ID, text="hi"))
    await fake.wait_for_ack(other_id)
    await heard.wait_for(lambda: heard.messages)

    assert [message["text"] for message in heard.messages] == ["hi"]


async def test_slash_command_ack_carries_the_response_payload(
    fake: FakeSlack, connect_bot: ConnectBot
) -> None:
    """ack(text) comes back as the ack's payload; respond() posts to the fake's response_url."""
    await connect_bot()

    envelope_id = await fake.send_slash_command(command="/deploy", text="api", user_id=USER_ID)
    ack = await fake.wait_for_ack(envelope_id)
    followup = await fake.wait_for_call("response_url")

    assert ack == {"envelope_id": envelope_id, "payload": {"text": "Deploying api..."}}
    assert followup["text"] == "Deployed api."


async def test_block_action_is_acked_and_the_listener_sees_the_value(
    fake: FakeSlack, connect_bot: ConnectBot
) -> None:
    """A button click in a block_actions payload reaches the action listener with its value."""
    _, heard = await connect_bot()
    payload = fake.block_action_payload(
        user_id=USER_ID,
        action_id="approve_deploy",
        value="deploy-42",
        channel_id=CHANNEL_ID,
        message_ts=fake.next_ts(),
    )

    envelope_id = await fake.send_interactive(payload)
    ack = await fake.wait_for_ack(envelope_id)
    await heard.wait_for(lambda: heard.actions)

    assert ack == {"envelope_id": envelope_id}
    assert heard.actions == ["deploy-42"]


async def test_disconnect_message_makes_the_client_reconnect(
    fake: FakeSlack, connect_bot: ConnectBot
) -> None:
    """After a disconnect message the client opens a fresh socket and keeps answering."""
    await connect_bot()

    await fake.send_disconnect(reason="refresh_requested")
    await fake.wait_for_connections(2)
    envelope_id = await fake.send_events_api(mention(fake))
    await fake.wait_for_ack(envelope_id)
    post = await fake.wait_for_call("chat.postMessage")

    assert post["channel"] == CHANNEL_ID
    assert len(fake.calls_to("apps.connections.open")) == 2


async def test_idle_socket_stays_healthy_through_ping_checks(
    fake: FakeSlack, connect_bot: ConnectBot
) -> None:
    """The fake answers pings, so neither aiohttp's heartbeat nor slack_sdk's check reconnects.

    With ping_interval 0.5 s, a missing PONG closes the socket after 0.75 s (aiohttp heartbeat)
    and slack_sdk calls the session stale after 2 s without one; the window covers both.
    """
    handler, _ = await connect_bot(ping_interval=0.5)

    with pytest.raises(TimeoutError):
        await fake.wait_for_connections(2, timeout=4)
    envelope_id = await fake.send_events_api(mention(fake))
    await fake.wait_for_ack(envelope_id)

    assert fake.total_connections == 1
    assert handler.client.last_ping_pong_time is not None


async def test_dropped_socket_is_replaced_within_one_ping_interval(
    fake: FakeSlack, connect_bot: ConnectBot
) -> None:
    """A socket reset without a close frame is noticed by the session monitor and replaced.

    The monitor sleeps ping_interval between checks, so this test takes up to ten seconds.
    """
    handler, _ = await connect_bot()
    connected_at = time.monotonic()
    assert handler.client.ping_interval == HANDLER_PING_INTERVAL

    await fake.drop_connections()
    await fake.wait_for_connections(2, timeout=HANDLER_PING_INTERVAL + 5)
    assert time.monotonic() - connected_at < HANDLER_PING_INTERVAL + 5

    envelope_id = await fake.send_events_api(mention(fake))
    await fake.wait_for_ack(envelope_id)
    await fake.wait_for_call("chat.postMessage")


async def test_rate_limited_post_is_retried_after_retry_after(
    fake: FakeSlack, connect_bot: ConnectBot
) -> None:
    """With a rate-limit retry handler, a 429 on chat.postMessage is retried after Retry-After."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=1))
    _, heard = await connect_bot(client=client)
    fake.rate_limit_next("chat.postMessage", retry_after=1)

    await fake.send_events_api(mention(fake))
    await fake.wait_for_call("chat.postMessage")
    first_at = time.monotonic()
    retried = await fake.wait_for_call("chat.postMessage", count=2)
    waited = time.monotonic() - first_at
    await heard.wait_for(lambda: heard.replies)

    assert waited >= 0.9
    assert retried["channel"] == CHANNEL_ID
    assert heard.replies[0]["ok"] is True


async def test_rate_limit_without_a_retry_handler_raises_ratelimited(fake: FakeSlack) -> None:
    """A 429 surfaces as SlackApiError 'ratelimited' with Retry-After, once."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)
    fake.rate_limit_next("chat.postMessage", retry_after=7)

    with pytest.raises(SlackApiError) as raised:
        await client.chat_postMessage(channel=CHANNEL_ID, text="hello")
    response = await client.chat_postMessage(channel=CHANNEL_ID, text="hello")

    assert raised.value.response.status_code == 429
    assert raised.value.response["error"] == "ratelimited"
    assert raised.value.response.headers["Retry-After"] == "7"
    assert response["ok"] is True


async def test_fail_next_fails_one_call_only(fake: FakeSlack) -> None:
    """An injected error answers the next call to that method and no other."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)
    fake.fail_next("chat.postMessage", error="channel_not_found")

    with pytest.raises(SlackApiError) as raised:
        await client.chat_postMessage(channel="C0GONE", text="hello")
    response = await client.chat_postMessage(channel=CHANNEL_ID, text="hello")

    assert raised.value.response["error"] == "channel_not_found"
    assert response["channel"] == CHANNEL_ID
    assert len(fake.calls_to("chat.postMessage")) == 2


async def test_form_and_json_bodies_are_both_read(fake: FakeSlack) -> None:
    """Parameters arrive the same whether the client form-encodes them or sends JSON."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)

    as_json = await client.chat_postMessage(channel=CHANNEL_ID, text="one")
    as_form = await client.api_call(
        "chat.postMessage", data={"channel": CHANNEL_ID, "text": "two"}
    )

    assert fake.calls_to("chat.postMessage") == [
        {"channel": CHANNEL_ID, "text": "one"},
        {"channel": CHANNEL_ID, "text": "two"},
    ]
    assert as_json["ts"] < as_form["ts"]
    assert as_form["message"]["text"] == "two"
    fake.assert_tokens(bot_token=BOT_TOKEN, app_token=APP_TOKEN)


async def test_users_info_knows_added_users_only(fake: FakeSlack) -> None:
    """users.info returns a user added with add_user and user_not_found for anyone else."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)
    fake.add_user(USER_ID, "alice", "Alice A.")

    found = await client.users_info(user=USER_ID)
    with pytest.raises(SlackApiError) as raised:
        await client.users_info(user="U0NOBODY")

    assert found["user"]["name"] == "alice"
    assert found["user"]["profile"]["display_name"] == "Alice A."
    assert raised.value.response["error"] == "user_not_found"


async def test_dm_ephemeral_and_update_methods_answer_like_slack(fake: FakeSlack) -> None:
    """conversations.open, chat.postEphemeral and chat.update return Slack's response fields."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)

    dm = await client.conversations_open(users=USER_ID)
    ephemeral = await client.chat_postEphemeral(channel=CHANNEL_ID, user=USER_ID, text="psst")
    posted = await client.chat_postMessage(channel=CHANNEL_ID, text="deploying")
    updated = await client.chat_update(channel=CHANNEL_ID, ts=posted["ts"], text="deployed")

    assert dm["channel"] == {"id": f"D{USER_ID}"}
    assert ephemeral["message_ts"]
    assert (updated["channel"], updated["ts"], updated["text"]) == (
        CHANNEL_ID,
        posted["ts"],
        "deployed",
    )


async def test_unknown_methods_and_wrong_token_kinds_are_rejected(fake: FakeSlack) -> None:
    """Unknown methods fail with unknown_method; a token of the wrong kind is refused."""
    bot_client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)
    app_client = AsyncWebClient(token=APP_TOKEN, base_url=fake.api_url)

    errors = []
    for call in (
        bot_client.api_call("deploys.list"),
        bot_client.apps_connections_open(app_token=BOT_TOKEN),
        app_client.chat_postMessage(channel=CHANNEL_ID, text="hello"),
    ):
        with pytest.raises(SlackApiError) as raised:
            await call
        errors.append(raised.value.response["error"])

    assert errors == ["unknown_method", "not_allowed_token_type", "not_allowed_token_type"]
    with pytest.raises(AssertionError, match="wrong token"):
        fake.assert_tokens(bot_token=BOT_TOKEN, app_token=APP_TOKEN)
