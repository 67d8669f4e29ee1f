"""FakeMattermost speaks Mattermost's wire formats: the real mattermostdriver runs on it.

Tests named `test_stock_...` pin down flaws of mattermostdriver 7.3.2 against the fake. They
assert the flawed behaviour as it is, so a driver upgrade that fixes one fails its test and
says which workaround in adapters/mattermost may go. Each is bounded by a timeout: the
flaws include loops that never end on their own.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
import websockets
from fake_mattermost import BOT_TOKEN, BOT_USER_ID, BOT_USERNAME, TEAM_ID, FakeMattermost
from mattermostdriver import Driver
from mattermostdriver.exceptions import (
    ContentTooLarge,
    FeatureDisabled,
    InvalidOrMissingParameters,
    MethodNotAllowed,
    NoAccessTokenProvided,
    NotEnoughPermissions,
    ResourceNotFound,
)
from mattermostdriver.websocket import Websocket

ALICE_ID = "aliceid0000000000000000000"
CHANNEL_ID = "deployschannel00000000000a"

# How long any stock-driver coroutine may run before a test gives up on it.
LIMIT = 5.0
# The stock websocket sleeps this long between attempts; small so its loops show quickly.
RETRY_DELAY = 0.05
FAILED_TO_CONNECT = "Failed to establish websocket connection"


@dataclass
class Received:
    """What a websocket handler was given, so tests can wait on it instead of sleeping."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, raw: str) -> None:
        self.messages.append(json.loads(raw))
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first message matching `predicate`, waiting up to LIMIT seconds for it."""

        def first() -> dict[str, Any] | None:
            return next((message for message in self.messages if predicate(message)), None)

        async with asyncio.timeout(LIMIT), self._changed:
            found = await self._changed.wait_for(first)
        assert found is not None
        return found

    async def wait_for_event(self, event: str) -> dict[str, Any]:
        return await self.wait_for(lambda message: message.get("event") == event)


class ConnectFailures(logging.Handler):
    """Collects the stock websocket's "Failed to establish" warnings for tests to wait on.

    The stock websocket logs one per failed attempt from inside its coroutine, so `emit`
    runs on the event loop's thread and may set an asyncio.Event.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self._added = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(FAILED_TO_CONNECT):
            self.messages.append(message)
            self._added.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(LIMIT):
            while len(self.messages) < count:
                self._added.clear()
                await self._added.wait()


StartStock = Callable[..., tuple[Websocket, "asyncio.Task[None]", Received]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeMattermost]:
    """A running FakeMattermost over plain HTTP with "alice" as a person, stopped after."""
    async with FakeMattermost() as fake:
        fake.add_user(ALICE_ID, "alice", token="alice-token", password="alice-password")
        yield fake


@pytest.fixture
def ca() -> trustme.CA:
    """A throwaway certificate authority for the TLS tests."""
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    """The CA's certificate as a PEM file, as requests' `verify` and `cafile=` take it."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def tls_fake(ca: trustme.CA) -> AsyncIterator[FakeMattermost]:
    """A running FakeMattermost serving HTTPS and WSS with a certificate from `ca`."""
    async with FakeMattermost(tls=ca) as fake:
        yield fake


@pytest.fixture
def connect_failures() -> Iterator[ConnectFailures]:
    """The stock websocket's connection-failure warnings during the test."""
    handler = ConnectFailures()
    stock_logger = logging.getLogger("mattermostdriver.websocket")
    stock_logger.addHandler(handler)
    try:
        yield handler
    finally:
        stock_logger.removeHandler(handler)


def stock_options(fake: FakeMattermost, **overrides: Any) -> dict[str, Any]:
    """The full options dict a Driver builds (its defaults included) for this fake."""
    options: dict[str, Any] = Driver(
        fake.driver_options(keepalive_delay=RETRY_DELAY, **overrides)
    ).options
    return options


@pytest.fixture
async def start_stock(fake: FakeMattermost) -> AsyncIterator[StartStock]:
    """Run the stock Websocket.connect as a task; every task is cancelled after the test."""
    tasks: list[asyncio.Task[None]] = []

    def start(
        *, target: FakeMattermost | None = None, token: str = BOT_TOKEN, **options: Any
    ) -> tuple[Websocket, asyncio.Task[None], Received]:
        websocket = Websocket(stock_options(target or fake, **options), token)
        received = Received()
        task = asyncio.create_task(websocket.connect(received.handle))
        tasks.append(task)
        return websocket, task, received

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def logged_in(fake: FakeMattermost, **options: Any) -> Driver:
    """A Driver that has run login() against the fake, in a worker thread as it blocks."""
    driver = Driver(fake.driver_options(**options))
    await asyncio.to_thread(driver.login)
    return driver


def challenge(token: str) -> str:
    return json.dumps({"seq": 1, "action": "authentication_challenge", "data": {"token": token}})


# -----------------------------------------------------------------------------------------
# REST


async def test_token_login_returns_the_bot_user(fake: FakeMattermost) -> None:
    """Driver.login() with a token reads users/me and keeps the bot's id and username."""
    driver = Driver(fake.driver_options())

    me = await asyncio.to_thread(driver.login)

    assert me["id"] == BOT_USER_ID
    assert me["username"] == BOT_USERNAME
    assert me["is_bot"] is True
    assert (driver.client.userid, driver.client.username) == (BOT_USER_ID, BOT_USERNAME)


async def test_get_user_returns_a_dict_for_a_person(fake: FakeMattermost) -> None:
    """get_user parses the body (Content-Type is exactly application/json); people lack is_bot."""
    driver = await logged_in(fake)

    alice = await asyncio.to_thread(driver.users.get_user, ALICE_ID)

    assert isinstance(alice, dict)
    assert alice["username"] == "alice"
    assert "is_bot" not in alice


async def test_every_rest_call_is_recorded_with_its_token(fake: FakeMattermost) -> None:
    """calls holds method, path under /api/v4, JSON body and token; the driver's GETs send {}."""
    driver = await logged_in(fake)
    await asyncio.to_thread(driver.posts.create_post, {"channel_id": CHANNEL_ID, "message": "hi"})

    assert [tuple(call) for call in fake.calls] == [
        ("GET", "/users/me", {}, BOT_TOKEN),
        ("POST", "/posts", {"channel_id": CHANNEL_ID, "message": "hi"}, BOT_TOKEN),
    ]
    assert fake.calls_to("/posts", method="POST")[0].body["message"] == "hi"


async def test_bad_token_login_raises_no_access_token_provided(fake: FakeMattermost) -> None:
    """A refused token is HTTP 401, which the driver raises as NoAccessTokenProvided."""
    driver = Driver(fake.driver_options(token="wrong-token"))

    with pytest.raises(NoAccessTokenProvided) as excinfo:
        await asyncio.to_thread(driver.login)

    assert not isinstance(excinfo.value, InvalidOrMissingParameters)
    assert str(excinfo.value) == "Invalid or expired session, please login again."


async def test_bad_token_gets_mattermosts_error_body(fake: FakeMattermost) -> None:
    """The 401 body is Mattermost's AppError JSON, with the session_expired id."""
    response = await asyncio.to_thread(
        requests.get,
        f"{fake.url}/api/v4/users/me",
        headers={"Authorization": "Bearer wrong-token"},
        timeout=LIMIT,
    )

    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["id"] == "api.context.session_expired.app_error"
    assert body["message"] == "Invalid or expired session, please login again."
    assert body["status_code"] == 401
    assert body["detailed_error"] == ""
    assert len(body["request_id"]) == 26


async def test_password_login_returns_a_session_token_that_works(fake: FakeMattermost) -> None:
    """login_id and password log in: the Token header becomes the driver's token."""
    driver = Driver(fake.driver_options(token=None, login_id="alice", password="alice-password"))

    me = await asyncio.to_thread(driver.login)
    again = await asyncio.to_thread(driver.users.get_user, "me")

    assert me["id"] == ALICE_ID
    assert driver.client.token not in ("", "alice-token")
    assert again["id"] == ALICE_ID
    assert fake.calls[-1].token == driver.client.token


async def test_wrong_password_raises_no_access_token_provided(fake: FakeMattermost) -> None:
    """A wrong password is HTTP 401 with the invalid-credentials message."""
    driver = Driver(fake.driver_options(token=None, login_id="alice", password="guess"))

    with pytest.raises(NoAccessTokenProvided, match="Enter a valid email or username"):
        await asyncio.to_thread(driver.login)


async def test_create_post_returns_and_records_the_post(fake: FakeMattermost) -> None:
    """create_post returns the created post, which fake.posts and wait_for_post then hold."""
    driver = await logged_in(fake)
    options = {
        "channel_id": CHANNEL_ID,
        "message": "Locked api.",
        "root_id": "rootpost000000000000000000",
        "props": {"from_deploybot": "true"},
    }

    post = await asyncio.to_thread(driver.posts.create_post, options)
    waited = await fake.wait_for_post(lambda p: p["message"] == "Locked api.")

    assert waited == post == fake.posts[0]
    assert len(post["id"]) == 26
    assert post["create_at"] > 0
    assert post["user_id"] == BOT_USER_ID
    assert post["channel_id"] == CHANNEL_ID
    assert post["root_id"] == "rootpost000000000000000000"
    assert post["props"] == {"from_deploybot": "true"}


async def test_wait_for_post_times_out_naming_what_was_posted(fake: FakeMattermost) -> None:
    """A wait that is never satisfied fails within its timeout with a helpful message."""
    with pytest.raises(TimeoutError, match="post #1; messages posted so far"):
        await fake.wait_for_post(timeout=0.05)


async def test_direct_channel_is_the_same_in_either_order(fake: FakeMattermost) -> None:
    """channels/direct gives one "D" channel per pair of users, named "<id>__<id>"."""
    driver = await logged_in(fake)
    create = driver.channels.create_direct_message_channel

    first = await asyncio.to_thread(create, [BOT_USER_ID, ALICE_ID])
    second = await asyncio.to_thread(create, [ALICE_ID, BOT_USER_ID])
    fetched = await asyncio.to_thread(driver.channels.get_channel, first["id"])

    assert first["id"] == second["id"] == fetched["id"]
    assert len(first["id"]) == 26
    assert first["type"] == "D"
    assert first["name"] == "__".join(sorted([BOT_USER_ID, ALICE_ID]))
    assert first["team_id"] == ""


async def test_direct_channel_needs_two_user_ids(fake: FakeMattermost) -> None:
    """A body that is not a pair of user ids is HTTP 400: InvalidOrMissingParameters."""
    driver = await logged_in(fake)

    with pytest.raises(InvalidOrMissingParameters, match="user_ids"):
        await asyncio.to_thread(driver.channels.create_direct_message_channel, [ALICE_ID])


async def test_unknown_user_raises_resource_not_found(fake: FakeMattermost) -> None:
    """GET users/<unknown id> is HTTP 404, which the driver raises as ResourceNotFound."""
    driver = await logged_in(fake)

    with pytest.raises(ResourceNotFound, match="Unable to find the user"):
        await asyncio.to_thread(driver.users.get_user, "nobody00000000000000000000")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, InvalidOrMissingParameters),
        (401, NoAccessTokenProvided),
        (403, NotEnoughPermissions),
        (404, ResourceNotFound),
        (405, MethodNotAllowed),
        (413, ContentTooLarge),
        (501, FeatureDisabled),
        (500, requests.HTTPError),
        (503, requests.HTTPError),
    ],
)
async def test_fail_next_maps_to_the_drivers_exception_once(
    fake: FakeMattermost, status: int, expected: type[Exception]
) -> None:
    """Each injected status raises the driver's class for it (others plain HTTPError), once."""
    driver = await logged_in(fake)
    fake.fail_next("/posts", status=status)
    post = {"channel_id": CHANNEL_ID, "message": "hi"}

    with pytest.raises(requests.HTTPError) as excinfo:
        await asyncio.to_thread(driver.posts.create_post, post)
    retried = await asyncio.to_thread(driver.posts.create_post, post)

    assert type(excinfo.value) is expected
    assert retried["message"] == "hi"
    assert len(fake.calls_to("/posts")) == 2
    assert len(fake.posts) == 1


async def test_fail_next_rejects_a_prefix_with_the_api_root(fake: FakeMattermost) -> None:
    """Path prefixes are under /api/v4, so one that repeats it is a mistake worth an error."""
    with pytest.raises(ValueError, match="under /api/v4"):
        fake.fail_next("/api/v4/posts")


async def test_stock_typed_errors_drop_the_response(fake: FakeMattermost) -> None:
    """Flaw: the driver's typed exceptions carry only the message, not the response.

    It raises them `from None` with just the server's message, so status code, error id
    and headers are gone and `error.response` is None.
    """
    driver = await logged_in(fake)
    fake.fail_next("/posts", status=403)

    with pytest.raises(NotEnoughPermissions) as excinfo:
        await asyncio.to_thread(driver.posts.create_post, {"channel_id": CHANNEL_ID})

    assert str(excinfo.value) == "You do not have the appropriate permissions."
    assert excinfo.value.response is None
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__


async def test_stock_client_does_not_retry_a_rate_limit(fake: FakeMattermost) -> None:
    """Flaw: HTTP 429 raises a plain requests.HTTPError at once, with no retry.

    Retry-After and the X-Ratelimit-* headers survive only on `error.response`; the
    caller has to wait and retry itself.
    """
    driver = await logged_in(fake)
    fake.rate_limit_next("/posts", retry_after=2)

    with pytest.raises(requests.HTTPError) as excinfo:
        await asyncio.to_thread(driver.posts.create_post, {"channel_id": CHANNEL_ID})

    response = excinfo.value.response
    assert type(excinfo.value) is requests.HTTPError
    assert response is not None
    assert response.status_code == 429
    assert response.text == "limit exceeded\n"
    assert response.headers["Retry-After"] == "2"
    assert response.headers["X-Ratelimit-Remaining"] == "0"
    assert {"X-Ratelimit-Limit", "X-Ratelimit-Reset"} <= set(response.headers)
    assert len(fake.calls_to("/posts")) == 1


# -----------------------------------------------------------------------------------------
# websocket protocol, checked frame by frame with a plain websockets client


async def test_challenge_gets_hello_then_ok(fake: FakeMattermost) -> None:
    """A good token gets the hello event (seq 0) and then {"status":"OK","seq_reply":1}."""
    url = f"ws://{fake.host}:{fake.port}/api/v4/websocket"
    async with asyncio.timeout(LIMIT), websockets.connect(url) as ws:
        await ws.send(challenge(BOT_TOKEN))
        hello = json.loads(await ws.recv())
        reply = json.loads(await ws.recv())

    assert hello["event"] == "hello"
    assert hello["seq"] == 0
    assert hello["data"]["server_version"].startswith("9.11.0.")
    assert hello["broadcast"]["user_id"] == BOT_USER_ID
    assert hello["broadcast"]["omit_users"] is None
    assert (hello["broadcast"]["channel_id"], hello["broadcast"]["team_id"]) == ("", "")
    assert reply == {"status": "OK", "seq_reply": 1}
    assert fake.total_authenticated == 1


async def test_bad_token_closes_the_socket_without_a_reply(fake: FakeMattermost) -> None:
    """A refused token gets no reply and no close frame: the server just drops the socket."""
    url = f"ws://{fake.host}:{fake.port}/api/v4/websocket"
    async with asyncio.timeout(LIMIT), websockets.connect(url) as ws:
        await ws.send(challenge("wrong-token"))
        with pytest.raises(websockets.ConnectionClosedError) as excinfo:
            await ws.recv()

    assert excinfo.value.rcvd is None
    assert fake.total_authenticated == 0


async def test_token_header_authenticates_without_a_challenge(fake: FakeMattermost) -> None:
    """A valid Authorization header on the upgrade request gets the hello straight away."""
    url = f"ws://{fake.host}:{fake.port}/api/v4/websocket"
    headers = {"Authorization": f"Bearer {BOT_TOKEN}"}
    async with asyncio.timeout(LIMIT), websockets.connect(url, additional_headers=headers) as ws:
        hello = json.loads(await ws.recv())

    assert hello["event"] == "hello"
    assert hello["broadcast"]["user_id"] == BOT_USER_ID


# -----------------------------------------------------------------------------------------
# websocket with the stock mattermostdriver client


async def test_stock_websocket_authenticates(
    fake: FakeMattermost, start_stock: StartStock
) -> None:
    """The stock client's challenge succeeds; its handler sees the hello, then the OK."""
    _, _, received = start_stock()

    await fake.wait_for_authenticated(1)
    hello = await received.wait_for_event("hello")
    reply = await received.wait_for(lambda message: "seq_reply" in message)

    assert hello["seq"] == 0
    assert received.messages.index(hello) < received.messages.index(reply)
    assert reply == {"status": "OK", "seq_reply": 1}


async def test_posted_event_carries_the_post_as_a_json_string(
    fake: FakeMattermost, start_stock: StartStock
) -> None:
    """`posted` has data.post and data.mentions as JSON strings, plus the channel and sender."""
    _, _, received = start_stock()
    await fake.wait_for_authenticated(1)

    sent = await fake.send_post(
        ALICE_ID,
        CHANNEL_ID,
        "@deploybot lock api",
        channel_type="P",
        root_id="rootpost000000000000000000",
        mentions=[BOT_USER_ID],
    )
    event = await received.wait_for_event("posted")

    data = event["data"]
    post = json.loads(data["post"])
    assert post == sent
    assert post["message"] == "@deploybot lock api"
    assert post["root_id"] == "rootpost000000000000000000"
    assert (post["type"], post["edit_at"], post["delete_at"], post["metadata"]) == ("", 0, 0, {})
    assert json.loads(data["mentions"]) == [BOT_USER_ID]
    assert data["channel_type"] == "P"
    assert data["sender_name"] == "@alice"
    assert data["set_online"] is True
    assert data["team_id"] == TEAM_ID
    assert event["broadcast"]["channel_id"] == CHANNEL_ID
    assert event["seq"] == 1


async def test_direct_post_has_no_team_and_no_mentions(
    fake: FakeMattermost, start_stock: StartStock
) -> None:
    """A "D" post belongs to no team; without mentions the key is left out, as Mattermost does."""
    _, _, received = start_stock()
    await fake.wait_for_authenticated(1)

    await fake.send_post(ALICE_ID, "dmchannel00000000000000000", "status", channel_type="D")
    data = (await received.wait_for_event("posted"))["data"]

    assert data["channel_type"] == "D"
    assert data["team_id"] == ""
    assert data["channel_display_name"] == "@alice"
    assert "mentions" not in data


async def test_user_joined_is_a_system_post(fake: FakeMattermost, start_stock: StartStock) -> None:
    """send_user_joined pushes a `posted` event whose post has type system_join_channel."""
    _, _, received = start_stock()
    await fake.wait_for_authenticated(1)

    await fake.send_user_joined(ALICE_ID, CHANNEL_ID)
    post = json.loads((await received.wait_for_event("posted"))["data"]["post"])

    assert post["type"] == "system_join_channel"
    assert post["message"] == "@alice joined the channel."
    assert post["props"] == {"username": "alice"}


async def test_every_authenticated_connection_gets_every_event(
    fake: FakeMattermost, start_stock: StartStock
) -> None:
    """Two connected bot processes each receive the post, each with its own seq."""
    _, _, first = start_stock()
    _, _, second = start_stock()
    await fake.wait_for_authenticated(2)

    sent = await fake.send_post(ALICE_ID, CHANNEL_ID, "@deploybot status")
    events = [await first.wait_for_event("posted"), await second.wait_for_event("posted")]

    assert [json.loads(event["data"]["post"])["id"] for event in events] == [sent["id"]] * 2
    assert [event["seq"] for event in events] == [1, 1]


async def test_rest_posts_are_echoed_to_the_websocket(
    fake: FakeMattermost, start_stock: StartStock
) -> None:
    """The bot's own REST post comes back as a `posted` event, as on the real server."""
    _, _, received = start_stock()
    await fake.wait_for_authenticated(1)
    driver = await logged_in(fake)

    created = await asyncio.to_thread(
        driver.posts.create_post, {"channel_id": CHANNEL_ID, "message": "Locked api."}
    )
    event = await received.wait_for_event("posted")

    assert json.loads(event["data"]["post"]) == created
    assert event["data"]["sender_name"] == f"@{BOT_USERNAME}"


async def test_send_event_pushes_any_event(fake: FakeMattermost, start_stock: StartStock) -> None:
    """send_event delivers other events (here "typing") with the next seq number."""
    _, _, received = start_stock()
    await fake.wait_for_authenticated(1)

    await fake.send_event("typing", {"parent_id": "", "user_id": ALICE_ID})
    event = await received.wait_for_event("typing")

    assert event["data"] == {"parent_id": "", "user_id": ALICE_ID}
    assert event["seq"] == 1


async def test_rest_posts_are_not_echoed_when_turned_off() -> None:
    """With echo_own_posts=False the first `posted` event a socket gets is a pushed one."""
    async with FakeMattermost(echo_own_posts=False) as quiet:
        url = f"ws://{quiet.host}:{quiet.port}/api/v4/websocket"
        async with asyncio.timeout(LIMIT), websockets.connect(url) as ws:
            await ws.send(challenge(BOT_TOKEN))
            driver = await logged_in(quiet)
            await asyncio.to_thread(
                driver.posts.create_post, {"channel_id": CHANNEL_ID, "message": "mine"}
            )
            await quiet.send_post(BOT_USER_ID, CHANNEL_ID, "pushed")
            events = [json.loads(await ws.recv()) for _ in range(3)]

    posted = [event for event in events if event.get("event") == "posted"]
    assert [json.loads(event["data"]["post"])["message"] for event in posted] == ["pushed"]


async def test_stock_websocket_with_keepalive_reconnects_after_a_drop(
    fake: FakeMattermost, start_stock: StartStock
) -> None:
    """With keepalive on, the stock client reconnects and re-authenticates after a reset."""
    _, task, _ = start_stock(keepalive=True)
    await fake.wait_for_authenticated(1)

    await fake.drop_connections()
    await fake.wait_for_authenticated(2, total=True)

    assert fake.authenticated_count == 1
    assert not task.done()


# -----------------------------------------------------------------------------------------
# TLS


async def test_tls_rest_verifies_with_the_ca_file_and_refuses_without(
    tls_fake: FakeMattermost, ca_file: Path
) -> None:
    """HTTPS verifies with the CA file as `verify`, and fails verification without it."""
    url = f"{tls_fake.url}/api/v4/users/me"
    headers = {"Authorization": f"Bearer {BOT_TOKEN}"}

    trusted = await asyncio.to_thread(
        requests.get, url, headers=headers, verify=str(ca_file), timeout=LIMIT
    )
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        await asyncio.to_thread(requests.get, url, headers=headers, timeout=LIMIT)

    assert tls_fake.url.startswith("https://127.0.0.1:")
    assert trusted.json()["id"] == BOT_USER_ID


async def test_tls_driver_rest_works_with_the_ca_file(
    tls_fake: FakeMattermost, ca_file: Path
) -> None:
    """The driver's REST calls pass `verify` to requests, so a CA file path works."""
    driver = await logged_in(tls_fake, verify=str(ca_file))

    assert driver.client.userid == BOT_USER_ID


async def test_tls_websocket_verifies_with_the_ca_and_refuses_without(
    tls_fake: FakeMattermost, ca_file: Path
) -> None:
    """WSS works with a client context that trusts the CA; the default context refuses it."""
    url = f"wss://{tls_fake.host}:{tls_fake.port}/api/v4/websocket"
    trusting = ssl.create_default_context(cafile=str(ca_file))

    async with asyncio.timeout(LIMIT), websockets.connect(url, ssl=trusting) as ws:
        await ws.send(challenge(BOT_TOKEN))
        hello = json.loads(await ws.recv())
    with pytest.raises(ssl.SSLCertVerificationError):
        async with asyncio.timeout(LIMIT):
            await websockets.connect(url, ssl=ssl.create_default_context())

    assert hello["event"] == "hello"


# -----------------------------------------------------------------------------------------
# flaws of the stock websocket client


@pytest.mark.parametrize(
    ("kw_args", "error"),
    [
        (None, "Cannot create a client socket with a PROTOCOL_TLS_SERVER context"),
        ("client-context", "got multiple values for keyword argument 'ssl'"),
    ],
)
async def test_stock_websocket_cannot_open_wss(
    tls_fake: FakeMattermost,
    ca_file: Path,
    start_stock: StartStock,
    connect_failures: ConnectFailures,
    kw_args: str | None,
    error: str,
) -> None:
    """Flaw: the stock Websocket cannot open wss:// at all, and retries forever.

    It builds its TLS context with Purpose.CLIENT_AUTH, which makes a server-side context,
    so every attempt fails before the handshake and is only logged. `verify` (a CA path)
    is ignored for the websocket, and a client context passed in websocket_kw_args
    collides with its own `ssl=` argument.
    """
    websocket_kw_args = None
    if kw_args == "client-context":
        websocket_kw_args = {"ssl": ssl.create_default_context(cafile=str(ca_file))}

    _, task, received = start_stock(
        target=tls_fake, verify=str(ca_file), websocket_kw_args=websocket_kw_args
    )
    await connect_failures.wait_for(3)

    assert all(error in message for message in connect_failures.messages)
    assert tls_fake.total_connections == 0
    assert received.messages == []
    assert not task.done()


async def test_stock_websocket_returns_silently_when_the_connection_drops(
    fake: FakeMattermost, start_stock: StartStock
) -> None:
    """Flaw: with keepalive False, connect() just returns when the socket is reset.

    No exception and no event reach the caller; the bot stops hearing Mattermost.
    """
    _, task, _ = start_stock(keepalive=False)
    await fake.wait_for_authenticated(1)

    await fake.drop_connections()
    async with asyncio.timeout(LIMIT):
        await task

    assert task.exception() is None
    assert fake.total_connections == 1


async def test_stock_websocket_reconnects_after_a_clean_close_despite_keepalive_off(
    fake: FakeMattermost, start_stock: StartStock, connect_failures: ConnectFailures
) -> None:
    """Flaw: with keepalive False a clean close (code 1000) still makes it reconnect.

    Only ConnectionClosedError ends its loop; ConnectionClosedOK falls into the generic
    "Failed to establish" handler, which sleeps and connects again.
    """
    _, task, _ = start_stock(keepalive=False)
    await fake.wait_for_authenticated(1)

    await fake.close_connections(code=1000)
    await fake.wait_for_authenticated(2, total=True)

    assert connect_failures.messages == [
        f"{FAILED_TO_CONNECT}: received 1000 (OK); then sent 1000 (OK)"
    ]
    assert not task.done()


async def test_stock_websocket_retries_a_refused_token_forever(
    fake: FakeMattermost, start_stock: StartStock, connect_failures: ConnectFailures
) -> None:
    """Flaw: a bad token makes the stock websocket loop on authentication, keepalive or not.

    The server closes the socket without a reply; the stock client logs the closed socket
    as a failure to connect, sleeps keepalive_delay and tries the same token again.
    """
    _, task, received = start_stock(token="wrong-token", keepalive=False)

    await fake.wait_for_connections(3, total=True)
    await connect_failures.wait_for(2)

    assert "no close frame received or sent" in connect_failures.messages[0]
    assert fake.total_authenticated == 0
    assert received.messages == []
    assert not task.done()


async def test_stock_heartbeat_is_an_unsolicited_pong(
    fake: FakeMattermost, start_stock: StartStock
) -> None:
    """Flaw: on an idle `timeout` the stock client sends a PONG, which asks for no answer.

    So a server that answers nothing goes unnoticed: here the fake answers no pings and
    the client carries on. Only websockets' own pings (ping_interval) could notice.
    """
    fake.stop_answering_pings()
    _, task, _ = start_stock(timeout=0.05, websocket_kw_args={"ping_interval": None})
    await fake.wait_for_authenticated(1)

    await fake.wait_for_pongs(3)

    assert fake.pings_received == 0
    assert fake.authenticated_count == 1
    assert not task.done()


async def test_unanswered_pings_end_the_stock_websocket_silently(
    fake: FakeMattermost, start_stock: StartStock
) -> None:
    """websockets' own pings notice a server that stops answering them (close code 1011).

    The fake answers pings until told to stop. The stock client, with keepalive False,
    then returns silently, as after any other lost connection.
    """
    kw_args = {"ping_interval": 0.05, "ping_timeout": 0.5}
    _, task, _ = start_stock(keepalive=False, websocket_kw_args=kw_args)
    await fake.wait_for_authenticated(1)
    await fake.wait_for_pings(3)
    assert not task.done()

    fake.stop_answering_pings()
    async with asyncio.timeout(LIMIT):
        await task

    assert task.exception() is None
    assert fake.close_codes == [1011]


async def test_stock_disconnect_leaves_the_socket_open(
    fake: FakeMattermost, start_stock: StartStock
) -> None:
    """Flaw: Websocket.disconnect() only ends the loop; the socket is never closed.

    connect() returns once the next message arrives (or `timeout` passes), and the server
    still has the connection open afterwards.
    """
    websocket, task, _ = start_stock()
    await fake.wait_for_authenticated(1)

    websocket.disconnect()
    await fake.send_post(ALICE_ID, CHANNEL_ID, "wake up")
    async with asyncio.timeout(LIMIT):
        await task

    assert fake.connection_count == 1


async def test_stock_init_websocket_cannot_run_inside_an_event_loop(fake: FakeMattermost) -> None:
    """Flaw: Driver.init_websocket cannot be called from async code.

    It drives the loop itself with run_until_complete, which fails inside a running loop
    and leaves its connect() coroutine unawaited.
    """
    driver = Driver(fake.driver_options())
    gc.collect()  # so garbage from earlier tests warns before, not inside, pytest.warns

    with pytest.warns(RuntimeWarning, match="was never awaited"):
        with pytest.raises(RuntimeError, match="already running"):
            driver.init_websocket(Received().handle)
        gc.collect()

    assert fake.total_connections == 0
