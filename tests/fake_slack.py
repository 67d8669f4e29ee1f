"""A local fake of Slack that speaks the real Web API and Socket Mode wire formats.

The real slack_sdk and slack-bolt clients talk to it unmodified: point an AsyncWebClient at
`FakeSlack.api_url` and every Web API call, apps.connections.open included, lands here; the URL
that call returns leads the Socket Mode client to this server's websocket. Tests then push
envelopes down the socket and wait on what the client sends back (acks, Web API calls).

Payload shapes follow Slack's documentation of Socket Mode, the Events API and interactivity,
and the slack_sdk / bolt-python sources. Nothing here sleeps: every wait is on a condition.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from aiohttp import WSMsgType, web
from fake_server import FakeServer, abort

logger = logging.getLogger(__name__)

TEAM_ID = "T0FAKE"
TEAM_DOMAIN = "deploybot-test"
APP_ID = "A0FAKE"
BOT_USER_ID = "UBOT"
BOT_ID = "BBOT"
BOT_NAME = "deploybot"

# The deprecated verification token Slack still puts in every payload; Socket Mode ignores it.
VERIFICATION_TOKEN = "fake-verification-token"

# Slack's hello reports this many seconds until it refreshes the connection (about five hours).
APPROXIMATE_CONNECTION_TIME = 18060

# Message timestamps count up from here in steps of 100 microseconds: "1700000000.000100", ...
_TS_EPOCH = 1_700_000_000
_TS_STEP_MICROS = 100

# The Socket Mode host named in hello and disconnect messages' debug_info.
_HOST = "applink-fake-1"

# Methods that take the app-level token; every other method takes a bot (or user) token.
_APP_TOKEN_METHODS = frozenset({"apps.connections.open"})

# Requests to a response_url are recorded in `calls` under this pseudo method name.
RESPONSE_URL_METHOD = "response_url"

_T = TypeVar("_T")


class ApiCall(NamedTuple):
    """One request the fake received: the Web API method, its merged parameters, the token."""

    method: str
    params: dict[str, Any]
    token: str | None


class _Connection(NamedTuple):
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    ticket: str


class FakeSlack(FakeServer[_Connection]):
    """A Slack Web API and Socket Mode server on a free 127.0.0.1 port.

    Use as `async with FakeSlack() as fake:` or call `start()` and `stop()`. Close Socket Mode
    clients before stopping the fake, or they will keep trying to reconnect to a dead port.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[ApiCall] = []
        self.acks: dict[str, dict[str, Any]] = {}
        self.ack_times: dict[str, float] = {}
        self.sent_envelopes: list[dict[str, Any]] = []
        self.total_connections = 0

        self._users: dict[str, dict[str, Any]] = {}
        self._injected: dict[str, deque[Callable[[], web.Response]]] = {}
        self._tickets: set[str] = set()
        self._sent_at: dict[str, float] = {}
        self._changed = asyncio.Condition()
        self._ts_counter = itertools.count(1)
        self._id_counter = itertools.count(1)
        self._methods: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "auth.test": self._auth_test,
            "apps.connections.open": self._apps_connections_open,
            "chat.postMessage": self._chat_post_message,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.update": self._chat_update,
            "conversations.open": self._conversations_open,
            "users.info": self._users_info,
        }

        self._add_bot_user()

    # -------------------------------------------------------------------------------------
    # lifecycle

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_get("/socket", self._handle_socket)
        app.router.add_post("/response_url/{ref}", self._handle_response_url)
        return app

    @property
    def base_url(self) -> str:
        """The server's root URL, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """The Web API root, ready to pass as `base_url` to slack_sdk's web clients."""
        return f"{self.base_url}/api/"

    # -------------------------------------------------------------------------------------
    # Web API: configuration and error injection

    def add_user(
        self, user_id: str, name: str, display_name: str, *, real_name: str | None = None
    ) -> None:
        """Make users.info know a user; `real_name` defaults to the display name."""
        real_name = real_name if real_name is not None else display_name
        self._users[user_id] = {
            "id": user_id,
            "team_id": TEAM_ID,
            "name": name,
            "deleted": False,
            "real_name": real_name,
            "is_bot": False,
            "profile": {"display_name": display_name, "real_name": real_name},
        }

    def fail_next(self, method: str, *, error: str = "channel_not_found") -> None:
        """Answer the next call to `method` with `{"ok": false, "error": error}`, once."""
        if not error:
            msg = f"fail_next({method!r}) needs a non-empty Slack error code."
            raise ValueError(msg)

        body = {"ok": False, "error": error}
        self._inject(method, lambda: web.json_response(body))

    def rate_limit_next(self, method: str, *, retry_after: int = 1) -> None:
        """Answer the next call to `method` with HTTP 429 and a Retry-After header, once."""
        if retry_after < 0:
            msg = f"rate_limit_next({method!r}) needs retry_after >= 0, got {retry_after}."
            raise ValueError(msg)

        body = {"ok": False, "error": "ratelimited"}
        headers = {"Retry-After": str(retry_after)}
        self._inject(method, lambda: web.json_response(body, status=429, headers=headers))

    def _inject(self, method: str, respond: Callable[[], web.Response]) -> None:
        self._injected.setdefault(method, deque()).append(respond)

    # -------------------------------------------------------------------------------------
    # Web API: inspection

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        """The parameters of every call to `method` so far, oldest first."""
        return [call.params for call in self.calls if call.method == method]

    async def wait_for_call(
        self,
        method: str,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        *,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 - see _wait_until
    ) -> dict[str, Any]:
        """Wait until `count` calls to `method` matched `predicate`; return the last one's params.

        Calls the fake answered with an injected error count too: a retried call shows up twice.
        """
        if count < 1:
            msg = f"wait_for_call({method!r}) needs count >= 1, got {count}."
            raise ValueError(msg)

        def nth_match() -> ApiCall | None:
            matches = [
                call
                for call in self.calls
                if call.method == method and (predicate is None or predicate(call.params))
            ]
            return matches[count - 1] if len(matches) >= count else None

        def describe() -> str:
            return f"call #{count} to {method}; calls so far: {[c.method for c in self.calls]}"

        call = await self._wait_until(nth_match, limit=timeout, describe=describe)
        return call.params

    def assert_tokens(self, *, bot_token: str, app_token: str) -> None:
        """Check apps.connections.open used `app_token` and every other method `bot_token`."""
        wrong = [
            (call.method, _token_kind(call.token))
            for call in self.calls
            if call.method != RESPONSE_URL_METHOD
            and call.token != (app_token if call.method in _APP_TOKEN_METHODS else bot_token)
        ]
        if wrong:
            msg = f"Calls made with the wrong token (method, token kind): {wrong}."
            raise AssertionError(msg)

    # -------------------------------------------------------------------------------------
    # Socket Mode: connections

    @property
    def connection_count(self) -> int:
        """How many Socket Mode connections are open right now."""
        return len(self._connections)

    async def wait_for_connections(
        self,
        count: int,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - see _wait_until
    ) -> None:
        """Wait until `count` connections have been opened in total and one of them is open."""

        def reached() -> bool:
            return self.total_connections >= count and bool(self._connections)

        def describe() -> str:
            return (
                f"{count} Socket Mode connections; {self.total_connections} opened so far, "
                f"{self.connection_count} open now"
            )

        await self._wait_until(reached, limit=timeout, describe=describe)

    async def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Ask the newest connection's client to reconnect, as Slack does before a refresh.

        The fake leaves the socket open: the client closes it itself once it has a new one.
        """
        message = {"type": "disconnect", "reason": reason, "debug_info": {"host": _HOST}}
        await self._current_connection().ws.send_json(message)

    async def drop_connections(
        self,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - see _wait_until
    ) -> None:
        """Reset every open socket's TCP connection, with no disconnect message or close frame.

        Returns once the server has seen the connections end.
        """
        for connection in list(self._connections):
            abort(connection)

        def none_open() -> bool:
            return not self._connections

        def describe() -> str:
            return f"dropped sockets to close; {self.connection_count} still open"

        await self._wait_until(none_open, limit=timeout, describe=describe)

    # -------------------------------------------------------------------------------------
    # Socket Mode: envelopes

    async def send_events_api(
        self,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        retry_attempt: int = 0,
        retry_reason: str = "",
        envelope_id: str | None = None,
        to_all: bool = False,
    ) -> str:
        """Deliver `event` inside an event_callback payload; return the envelope id.

        Slack sends `retry_attempt` 0 and an empty `retry_reason` on a first delivery.
        `to_all` sends the same envelope over every open connection, as when several bot
        processes each receive one event.
        """
        payload = self._event_callback(event, event_id=event_id)
        envelope = {
            "envelope_id": envelope_id or str(uuid.uuid4()),
            "payload": payload,
            "type": "events_api",
            "accepts_response_payload": False,
            "retry_attempt": retry_attempt,
            "retry_reason": retry_reason,
        }
        return await self._send_envelope(envelope, to_all=to_all)

    async def send_slash_command(
        self,
        *,
        command: str = "/deploy",
        text: str = "",
        user_id: str = "U0USER",
        channel_id: str = "C0DEPLOY",
        user_name: str = "alice",
        channel_name: str = "deploys",
        envelope_id: str | None = None,
    ) -> str:
        """Deliver a slash command invocation; return the envelope id.

        Every value is a string, as Slack forwards the form fields it would POST over HTTP.
        """
        ref = next(self._id_counter)
        payload = {
            "token": VERIFICATION_TOKEN,
            "team_id": TEAM_ID,
            "team_domain": TEAM_DOMAIN,
            "channel_id": channel_id,
            "channel_name": channel_name,
            "user_id": user_id,
            "user_name": user_name,
            "command": command,
            "text": text,
            "api_app_id": APP_ID,
            "is_enterprise_install": "false",
            "response_url": f"{self.base_url}/response_url/{ref}",
            "trigger_id": _trigger_id(ref),
        }
        envelope = {
            "envelope_id": envelope_id or str(uuid.uuid4()),
            "payload": payload,
            "type": "slash_commands",
            "accepts_response_payload": True,
        }
        return await self._send_envelope(envelope)

    async def send_interactive(
        self,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool = True,
        envelope_id: str | None = None,
    ) -> str:
        """Deliver an interactive payload (see `block_action_payload`); return the envelope id."""
        envelope = {
            "envelope_id": envelope_id or str(uuid.uuid4()),
            "payload": payload,
            "type": "interactive",
            "accepts_response_payload": accepts_response_payload,
        }
        return await self._send_envelope(envelope)

    async def _send_envelope(self, envelope: dict[str, Any], *, to_all: bool = False) -> str:
        connections = list(self._connections) if to_all else [self._current_connection()]
        envelope_id: str = envelope["envelope_id"]

        self.sent_envelopes.append(envelope)
        self._sent_at[envelope_id] = time.monotonic()
        for connection in connections:
            await connection.ws.send_json(envelope)
        logger.debug("envelope sent type=%s envelope_id=%s", envelope["type"], envelope_id)
        return envelope_id

    async def wait_for_ack(
        self,
        envelope_id: str,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - see _wait_until
    ) -> dict[str, Any]:
        """Wait for the client's ack of an envelope; return it (`envelope_id`, maybe `payload`)."""

        def acked() -> dict[str, Any] | None:
            return self.acks.get(envelope_id)

        def describe() -> str:
            return f"the ack of envelope {envelope_id}; acked so far: {list(self.acks)}"

        return await self._wait_until(acked, limit=timeout, describe=describe)

    # -------------------------------------------------------------------------------------
    # payload builders

    def app_mention_event(
        self, *, user_id: str, channel_id: str, text: str, thread_ts: str | None = None
    ) -> dict[str, Any]:
        """An app_mention event; `text` is as Slack sends it, e.g. "<@UBOT> lock api"."""
        ts = self.next_ts()
        event = {
            "client_msg_id": str(uuid.uuid4()),
            "type": "app_mention",
            "text": text,
            "user": user_id,
            "ts": ts,
            "blocks": _rich_text_blocks(text),
            "team": TEAM_ID,
            "channel": channel_id,
            "event_ts": ts,
        }
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        return event

    def direct_message_event(
        self,
        *,
        user_id: str,
        text: str,
        channel_id: str | None = None,
        bot_id: str | None = None,
    ) -> dict[str, Any]:
        """A message.im event: a message in the bot's DM channel (default "D" + user id).

        Pass `bot_id` to shape a message a bot posted, as Slack echoes the bot's own posts.
        """
        ts = self.next_ts()
        event: dict[str, Any] = {
            "client_msg_id": str(uuid.uuid4()),
            "type": "message",
            "text": text,
            "user": user_id,
            "ts": ts,
            "blocks": _rich_text_blocks(text),
            "team": TEAM_ID,
            "channel": channel_id or _dm_channel(user_id),
            "event_ts": ts,
            "channel_type": "im",
        }
        if bot_id is not None:
            del event["client_msg_id"]
            event["bot_id"] = bot_id
            event["app_id"] = APP_ID
        return event

    def block_action_payload(
        self,
        *,
        user_id: str,
        action_id: str,
        value: str,
        channel_id: str,
        message_ts: str,
        user_name: str = "alice",
        block_id: str = "deploy_actions",
        button_text: str = "Approve",
        message_text: str = "",
    ) -> dict[str, Any]:
        """A block_actions payload for a button click on a message the bot posted."""
        ref = next(self._id_counter)
        return {
            "type": "block_actions",
            "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": TEAM_ID},
            "api_app_id": APP_ID,
            "token": VERIFICATION_TOKEN,
            "container": {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": channel_id,
                "is_ephemeral": False,
            },
            "trigger_id": _trigger_id(ref),
            "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel_id, "name": channel_id},
            "message": {
                "type": "message",
                "subtype": "bot_message",
                "text": message_text,
                "user": BOT_USER_ID,
                "bot_id": BOT_ID,
                "app_id": APP_ID,
                "ts": message_ts,
                "team": TEAM_ID,
            },
            "state": {"values": {}},
            "response_url": f"{self.base_url}/response_url/{ref}",
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": block_id,
                    "text": {"type": "plain_text", "text": button_text, "emoji": True},
                    "value": value,
                    "type": "button",
                    "action_ts": self.next_ts(),
                }
            ],
        }

    def next_ts(self) -> str:
        """A fresh message timestamp, later than every one handed out before."""
        micros = next(self._ts_counter) * _TS_STEP_MICROS
        return f"{_TS_EPOCH + micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _event_callback(self, event: dict[str, Any], *, event_id: str | None) -> dict[str, Any]:
        event_id = event_id or f"Ev0FAKE{next(self._id_counter):06d}"
        return {
            "token": VERIFICATION_TOKEN,
            "team_id": TEAM_ID,
            "context_team_id": TEAM_ID,
            "context_enterprise_id": None,
            "api_app_id": APP_ID,
            "event": event,
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": TEAM_ID,
                    "user_id": BOT_USER_ID,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": _event_context(event),
        }

    # -------------------------------------------------------------------------------------
    # HTTP handlers

    async def _handle_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await _read_params(request)
        token = _bearer_token(request) or params.pop("token", None)

        self.calls.append(ApiCall(method, params, token))
        await self._notify()
        logger.debug("web api call method=%s", method)
        return self._answer(method, params, token)

    def _answer(self, method: str, params: dict[str, Any], token: str | None) -> web.Response:
        injected = self._injected.get(method)
        if injected:
            return injected.popleft()()

        handler = self._methods.get(method)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})

        token_error = _token_error(method, token)
        if token_error is not None:
            return web.json_response({"ok": False, "error": token_error})

        return web.json_response(handler(params))

    async def _handle_response_url(self, request: web.Request) -> web.Response:
        params = await _read_params(request)
        params["ref"] = request.match_info["ref"]
        self.calls.append(ApiCall(RESPONSE_URL_METHOD, params, None))
        await self._notify()
        return web.Response(text="ok")

    # -------------------------------------------------------------------------------------
    # Web API methods

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": "Deploybot Test",
            "user": BOT_NAME,
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        ticket = str(next(self._id_counter))
        self._tickets.add(ticket)
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket?ticket={ticket}"}

    def _chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not (params.get("text") or params.get("blocks") or params.get("attachments")):
            return {"ok": False, "error": "no_text"}

        ts = self.next_ts()
        return {
            "ok": True,
            "channel": _resolve_channel(channel),
            "ts": ts,
            "message": self._bot_message(params, ts),
        }

    def _chat_post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not params.get("user"):
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "message_ts": self.next_ts()}

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = params.get("channel"), params.get("ts")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not ts:
            return {"ok": False, "error": "message_not_found"}

        return {
            "ok": True,
            "channel": _resolve_channel(channel),
            "ts": ts,
            "text": params.get("text", ""),
            "message": self._bot_message(params, ts),
        }

    def _conversations_open(self, params: dict[str, Any]) -> dict[str, Any]:
        users = [user for user in str(params.get("users", "")).split(",") if user]
        if not users:
            return {"ok": False, "error": "users_list_not_supplied"}
        return {"ok": True, "channel": {"id": _dm_channel(users[0])}}

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self._users.get(str(params.get("user", "")))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": user}

    def _bot_message(self, params: dict[str, Any], ts: str) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "message",
            "text": params.get("text", ""),
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "app_id": APP_ID,
            "ts": ts,
            "team": TEAM_ID,
        }
        if "blocks" in params:
            message["blocks"] = _json_field(params["blocks"])
        if "thread_ts" in params:
            message["thread_ts"] = params["thread_ts"]
        return message

    def _add_bot_user(self) -> None:
        self._users[BOT_USER_ID] = {
            "id": BOT_USER_ID,
            "team_id": TEAM_ID,
            "name": BOT_NAME,
            "deleted": False,
            "real_name": BOT_NAME,
            "is_bot": True,
            "profile": {"display_name": BOT_NAME, "real_name": BOT_NAME, "bot_id": BOT_ID},
        }

    # -------------------------------------------------------------------------------------
    # Socket Mode handler

    async def _handle_socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            msg = f"Unknown Socket Mode ticket {ticket!r}; get a URL from apps.connections.open."
            raise web.HTTPUnauthorized(text=msg)

        # autoping answers the client's PING frames (aiohttp heartbeats and slack_sdk's
        # "sdk-ping-pong" pings alike); no heartbeat or receive timeout, so idle sockets stay.
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, receive_timeout=None)
        await ws.prepare(request)
        connection = _Connection(ws, request.transport, ticket)
        self._connections.append(connection)
        self.total_connections += 1
        await ws.send_json(self._hello())
        await self._notify()
        logger.info("socket mode connection opened ticket=%s", ticket)

        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    await self._record_ack(message.data)
        finally:
            self._connections.remove(connection)
            await self._notify()
            logger.info("socket mode connection closed ticket=%s", ticket)
        return ws

    def _hello(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "num_connections": len(self._connections),
            "debug_info": {
                "host": _HOST,
                "build_number": 1,
                "approximate_connection_time": APPROXIMATE_CONNECTION_TIME,
            },
            "connection_info": {"app_id": APP_ID},
        }

    async def _record_ack(self, data: str) -> None:
        try:
            message = json.loads(data)
        except json.JSONDecodeError:
            logger.warning("socket mode client sent a frame that is not JSON")
            return

        envelope_id = message.get("envelope_id") if isinstance(message, dict) else None
        if envelope_id is None:
            logger.warning("socket mode client sent a message without an envelope id")
            return

        self.acks[envelope_id] = message
        sent_at = self._sent_at.get(envelope_id)
        if sent_at is not None:
            self.ack_times[envelope_id] = time.monotonic() - sent_at
        await self._notify()

    def _current_connection(self) -> _Connection:
        if not self._connections:
            msg = "No Socket Mode client is connected; await wait_for_connections() first."
            raise RuntimeError(msg)
        return self._connections[-1]

    # -------------------------------------------------------------------------------------
    # waiting

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait_until(
        self, predicate: Callable[[], _T | None], *, limit: float, describe: Callable[[], str]
    ) -> _T:
        """Wait until `predicate` returns something other than None, for at most `limit` s.

        Every public wait takes a timeout with a default, rather than leaving callers to wrap
        it in asyncio.timeout: a test that forgets one then fails within seconds, with a
        message naming what never happened, instead of hanging the run.
        """
        try:
            async with asyncio.timeout(limit), self._changed:
                result = await self._changed.wait_for(predicate)
        except TimeoutError:
            msg = f"Timed out after {limit} s waiting for {describe()}."
            raise TimeoutError(msg) from None
        assert result is not None
        return result


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Merge query string, form and JSON body parameters, as Slack accepts all three."""
    params: dict[str, Any] = dict(request.query)
    if not request.body_exists:
        return params

    if request.content_type == "application/json":
        body = await request.json()
        if isinstance(body, dict):
            params.update(body)
    elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        params.update({key: value for key, value in form.items() if isinstance(value, str)})
    return params


def _bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def _token_error(method: str, token: str | None) -> str | None:
    """The error Slack gives for a missing token or one of the wrong kind, if any."""
    if not token:
        return "not_authed"

    is_app_token = token.startswith("xapp-")
    if (method in _APP_TOKEN_METHODS) != is_app_token:
        return "not_allowed_token_type"
    return None


def _token_kind(token: str | None) -> str:
    """A token's prefix ("xoxb", "xapp"), so failure messages never show a whole token."""
    return token.partition("-")[0] if token else "none"


def _dm_channel(user_id: str) -> str:
    return f"D{user_id}"


def _resolve_channel(channel: str) -> str:
    """The channel id Slack reports back: posting to a user id lands in their DM channel."""
    return _dm_channel(channel) if channel.startswith(("U", "W")) else channel


def _json_field(value: Any) -> Any:
    """Form-encoded requests carry blocks as a JSON string; JSON requests carry the list."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _rich_text_blocks(text: str) -> list[dict[str, Any]]:
    """The rich_text block Slack adds to a user's message.

    The fake keeps the whole text as one text element; Slack would split out mentions as
    user elements, which matters only to code that reads blocks instead of `text`.
    """
    section = {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}
    return [{"type": "rich_text", "block_id": "fake0", "elements": [section]}]


def _event_context(event: dict[str, Any]) -> str:
    """Slack's opaque event_context: a version prefix and base64 JSON of team, app, channel."""
    context = {"et": event.get("type"), "tid": TEAM_ID, "aid": APP_ID, "cid": event.get("channel")}
    encoded = base64.urlsafe_b64encode(json.dumps(context).encode()).decode().rstrip("=")
    return f"4-{encoded}"


def _trigger_id(ref: int) -> str:
    return f"{ref}.{_TS_EPOCH}.{uuid.uuid4().hex}"
