"""A local fake of Mattermost that speaks the real REST API v4 and websocket wire formats.

The real mattermostdriver talks to it unmodified: give a Driver `driver_options()` (or the
`host`, `port` and `scheme` properties with basepath /api/v4) and its REST calls land here.
Its websocket, or any other client, authenticates at /api/v4/websocket with the
authentication challenge and then receives the events tests push. Every event goes to every
authenticated connection: Mattermost sends each of a user's connections its own copy, so
several bot processes sharing one bot account each see every post.

Shapes follow the Mattermost server source (model/websocket_message.go, the websocket router
and web hub, the `posted` event built in notification.go, AppError, the rate limiter) and
the mattermostdriver 7.3.2 source. Nothing here sleeps: every wait is on a condition.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import trustme
from aiohttp import WSMsgType, web
from fake_server import FakeServer, abort

logger = logging.getLogger(__name__)

BOT_USER_ID = "botuserid0000000000000000a"
BOT_USERNAME = "deploybot"
BOT_TOKEN = "bot-token"
TEAM_ID = "teamid00000000000000000000"

SERVER_VERSION = "9.11.0"
# The form Mattermost uses in the hello event and the X-Version-Id header:
# version, build number, client config hash, whether a license is loaded.
VERSION_ID = f"{SERVER_VERSION}.{SERVER_VERSION}.fakeconfighash.false"

API_PREFIX = "/api/v4"
WEBSOCKET_PATH = f"{API_PREFIX}/websocket"
CHANNEL_TYPES = frozenset({"O", "P", "D", "G"})

# Mattermost ids are 16 random bytes in unpadded base32 with this alphabet: 26 characters.
_ID_ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"
_B32_TO_MATTERMOST = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ID_ALPHABET)

# AppError ids and messages the real server sends; `fail_next` uses these for its status.
_SESSION_EXPIRED = (
    "api.context.session_expired.app_error",
    "Invalid or expired session, please login again.",
)
_NO_PERMISSION = (
    "api.context.permissions.app_error",
    "You do not have the appropriate permissions.",
)
_PAGE_NOT_FOUND = ("api.context.404.app_error", "Sorry, we could not find the page.")
_KNOWN_ERRORS = {401: _SESSION_EXPIRED, 403: _NO_PERMISSION, 404: _PAGE_NOT_FOUND}

_T = TypeVar("_T")

# What the middleware hands the REST handlers: the caller's user id, the parsed body.
_CALLER = web.RequestKey("caller", str)
_BODY = web.RequestKey("body", object)


class ApiCall(NamedTuple):
    """One REST request: method, path under /api/v4, JSON body (None when empty), token.

    mattermostdriver sends `{}` as the body of every GET, so its GETs record `{}`.
    """

    method: str
    path: str
    body: Any
    token: str | None


@dataclass(eq=False)
class _Connection:
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    user_id: str | None = None
    next_seq: int = 0


class FakeMattermost(FakeServer[_Connection]):
    """A Mattermost REST API v4 and websocket server on a free 127.0.0.1 port.

    Use as `async with FakeMattermost() as fake:` or call `start()` and `stop()`. Pass a
    `trustme.CA` as `tls` to serve HTTPS and WSS with a certificate that CA issued.

    The bot user (BOT_USER_ID, "deploybot") exists from the start with token BOT_TOKEN.
    Posts created over REST are echoed as `posted` events to every authenticated
    connection, the bot's own included, as the real server does; `echo_own_posts=False`
    turns that off.
    """

    def __init__(self, *, tls: trustme.CA | None = None, echo_own_posts: bool = True) -> None:
        super().__init__()
        self.calls: list[ApiCall] = []
        self.posts: list[dict[str, Any]] = []
        self.sent_events: list[dict[str, Any]] = []
        self.total_connections = 0
        self.total_authenticated = 0
        self.pings_received = 0
        self.pongs_received = 0
        # One per websocket that ended: the client's close code, ours when the fake closed
        # it, or 1006 when the TCP connection ended without a close frame.
        self.close_codes: list[int | None] = []

        self._tls = tls
        self._echo_own_posts = echo_own_posts
        self._users: dict[str, dict[str, Any]] = {}
        self._tokens: dict[str, str] = {}
        self._passwords: dict[str, str] = {}
        self._channels: dict[str, dict[str, Any]] = {}
        self._injected: dict[str, deque[Callable[[], web.Response]]] = {}
        self._answer_pings = True
        self._last_millis = 0
        self._changed = asyncio.Condition()

        self.add_user(BOT_USER_ID, BOT_USERNAME, is_bot=True, token=BOT_TOKEN)

    # -------------------------------------------------------------------------------------
    # lifecycle

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._api_middleware])
        app.router.add_get(WEBSOCKET_PATH, self._handle_websocket)
        app.router.add_post(f"{API_PREFIX}/users/login", self._login)
        app.router.add_get(f"{API_PREFIX}/users/{{user_id}}", self._get_user)
        app.router.add_post(f"{API_PREFIX}/posts", self._create_post)
        app.router.add_post(f"{API_PREFIX}/channels/direct", self._create_direct_channel)
        app.router.add_get(f"{API_PREFIX}/channels/{{channel_id}}", self._get_channel)
        app.router.add_route("*", f"{API_PREFIX}/{{tail:.*}}", self._unknown_route)
        return app

    def _server_tls_context(self) -> ssl.SSLContext | None:
        if self._tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        return context

    @property
    def host(self) -> str:
        """The host to connect to; the TLS certificate names it (and "localhost")."""
        return "127.0.0.1"

    @property
    def scheme(self) -> str:
        """ "https" when serving TLS, else "http"."""
        return "https" if self._tls is not None else "http"

    @property
    def url(self) -> str:
        """The server's root URL, e.g. http://127.0.0.1:54321, without /api/v4."""
        return f"{self.scheme}://{self.host}:{self.port}"

    def driver_options(self, *, token: str | None = BOT_TOKEN, **overrides: Any) -> dict[str, Any]:
        """mattermostdriver.Driver options pointing at this fake, with `overrides` applied."""
        options: dict[str, Any] = {
            "url": self.host,
            "port": self.port,
            "scheme": self.scheme,
            "basepath": API_PREFIX,
            "token": token,
        }
        options.update(overrides)
        return options

    # -------------------------------------------------------------------------------------
    # users and error injection

    def add_user(
        self,
        user_id: str,
        username: str,
        *,
        is_bot: bool = False,
        token: str | None = None,
        password: str | None = None,
    ) -> dict[str, Any]:
        """Create a user, with a token for the API and websocket and a password to log in."""
        if not user_id or not username:
            msg = f"add_user needs a user id and a username, got {user_id!r} and {username!r}."
            raise ValueError(msg)
        if token is not None and self._tokens.get(token, user_id) != user_id:
            msg = f"add_user({username!r}): that token already belongs to another user."
            raise ValueError(msg)

        self._users[user_id] = _user_record(user_id, username, is_bot=is_bot, at=self._millis())
        if token is not None:
            self._tokens[token] = user_id
        if password is not None:
            self._passwords[user_id] = password
        return dict(self._users[user_id])

    def fail_next(self, path_prefix: str, *, status: int = 403) -> None:
        """Answer the next request whose path starts with `path_prefix` with an error, once.

        `path_prefix` is under /api/v4 ("/posts", "/users/me"). The body is Mattermost's
        error JSON. An injected answer comes before the token check.
        """
        _check_prefix(path_prefix)
        if not 400 <= status <= 599:
            msg = f"fail_next({path_prefix!r}) needs an HTTP error status, got {status}."
            raise ValueError(msg)

        error_id, message = _KNOWN_ERRORS.get(
            status, (f"fake.injected_{status}.app_error", f"FakeMattermost injected {status}.")
        )
        self._inject(path_prefix, lambda: _error_response(status, error_id, message))

    def rate_limit_next(self, path_prefix: str, *, retry_after: int = 1) -> None:
        """Answer the next request under `path_prefix` as Mattermost's rate limiter does, once.

        That is HTTP 429 with a plain-text "limit exceeded" body, Retry-After and the
        X-Ratelimit-Limit, -Remaining and -Reset headers (Reset in seconds from now).
        """
        _check_prefix(path_prefix)
        if retry_after < 0:
            msg = f"rate_limit_next({path_prefix!r}) needs retry_after >= 0, got {retry_after}."
            raise ValueError(msg)

        headers = {
            "Retry-After": str(retry_after),
            "X-Ratelimit-Limit": "10",
            "X-Ratelimit-Remaining": "0",
            "X-Ratelimit-Reset": str(retry_after),
            "X-Version-Id": VERSION_ID,
        }
        self._inject(
            path_prefix,
            lambda: web.Response(status=429, text="limit exceeded\n", headers=headers),
        )

    def _inject(self, path_prefix: str, respond: Callable[[], web.Response]) -> None:
        self._injected.setdefault(path_prefix, deque()).append(respond)

    def _take_injected(self, path: str) -> web.Response | None:
        for prefix, responses in self._injected.items():
            if responses and path.startswith(prefix):
                return responses.popleft()()
        return None

    # -------------------------------------------------------------------------------------
    # REST: inspection

    def calls_to(self, path: str, *, method: str | None = None) -> list[ApiCall]:
        """Every request to exactly `path` (under /api/v4), oldest first."""
        return [
            call
            for call in self.calls
            if call.path == path and (method is None or call.method == method)
        ]

    async def wait_for_post(
        self,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        *,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 - see _wait_until
    ) -> dict[str, Any]:
        """Wait until `count` posts created over REST matched `predicate`; return the last."""
        if count < 1:
            msg = f"wait_for_post needs count >= 1, got {count}."
            raise ValueError(msg)

        def nth_match() -> dict[str, Any] | None:
            matches = [post for post in self.posts if predicate is None or predicate(post)]
            return matches[count - 1] if len(matches) >= count else None

        def describe() -> str:
            return f"post #{count}; messages posted so far: {[p['message'] for p in self.posts]}"

        return await self._wait_until(nth_match, limit=timeout, describe=describe)

    # -------------------------------------------------------------------------------------
    # REST: middleware and handlers

    @web.middleware
    async def _api_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        """Record the call, answer injected errors, check the token, then run the handler."""
        if request.path == WEBSOCKET_PATH or not request.path.startswith(f"{API_PREFIX}/"):
            response: web.StreamResponse = await handler(request)
            return response

        path = request.path.removeprefix(API_PREFIX)
        body = await _read_json(request)
        token = _bearer_token(request)
        self.calls.append(ApiCall(request.method, path, body, token))
        await self._notify()
        logger.debug("rest call method=%s path=%s", request.method, path)

        injected = self._take_injected(path)
        if injected is not None:
            return injected

        user_id = self._tokens.get(token or "")
        if user_id is None and (request.method, path) != ("POST", "/users/login"):
            return _error_response(401, *_SESSION_EXPIRED)

        request[_CALLER] = user_id or ""
        request[_BODY] = body
        response = await handler(request)
        return response

    async def _login(self, request: web.Request) -> web.Response:
        body = _body_object(request)
        login_id, password = body.get("login_id"), body.get("password")
        user = self._find_login(login_id) if isinstance(login_id, str) else None
        if user is None or password is None or self._passwords.get(user["id"]) != password:
            return _error_response(
                401,
                "api.user.login.invalid_credentials_email_username",
                "Enter a valid email or username and/or password.",
            )

        session_token = new_id()
        self._tokens[session_token] = user["id"]
        return _json_response(user, headers={"Token": session_token})

    async def _get_user(self, request: web.Request) -> web.Response:
        wanted = request.match_info["user_id"]
        user_id = request[_CALLER] if wanted == "me" else wanted
        user = self._users.get(user_id)
        if user is None:
            return _error_response(
                404, "app.user.missing_account.const", "Unable to find the user."
            )
        return _json_response(user)

    async def _create_post(self, request: web.Request) -> web.Response:
        body = _body_object(request)
        channel_id = body.get("channel_id")
        if not isinstance(channel_id, str) or not channel_id:
            # The real server checks create_post permission on the (empty) channel first.
            return _error_response(403, *_NO_PERMISSION)

        props = body.get("props")
        post = self._new_post(
            user_id=request[_CALLER],
            channel_id=channel_id,
            message=str(body.get("message", "")),
            root_id=str(body.get("root_id") or ""),
            props=props if isinstance(props, dict) else {},
            pending_post_id=str(body.get("pending_post_id") or ""),
        )
        self.posts.append(post)
        await self._notify()
        logger.debug("post created post_id=%s channel_id=%s", post["id"], channel_id)

        if self._echo_own_posts:
            channel = self._channels.get(channel_id)
            channel_type = channel["type"] if channel else "O"
            await self._broadcast(self._posted_event(post, channel_type=channel_type))
        return _json_response(post, status=201)

    async def _create_direct_channel(self, request: web.Request) -> web.Response:
        user_ids = request[_BODY]
        if (
            not isinstance(user_ids, list)
            or len(user_ids) != 2
            or not all(isinstance(user_id, str) and user_id for user_id in user_ids)
        ):
            return _error_response(
                400,
                "api.context.invalid_body_param.app_error",
                "Invalid or missing user_ids in request body.",
            )

        channel = self._direct_channel(user_ids[0], user_ids[1], creator_id=request[_CALLER])
        return _json_response(channel, status=201)

    async def _get_channel(self, request: web.Request) -> web.Response:
        channel = self._channels.get(request.match_info["channel_id"])
        if channel is None:
            return _error_response(
                404, "app.channel.get.existing.app_error", "Unable to find the existing channel."
            )
        return _json_response(channel)

    async def _unknown_route(self, request: web.Request) -> web.Response:
        return _error_response(404, *_PAGE_NOT_FOUND)

    def _find_login(self, login_id: str) -> dict[str, Any] | None:
        """The user whose username or email is `login_id`, ignoring case, as Mattermost does."""
        wanted = login_id.lower()
        for user in self._users.values():
            if wanted in (user["username"].lower(), user["email"].lower()):
                return user
        return None

    def _direct_channel(self, user_a: str, user_b: str, *, creator_id: str) -> dict[str, Any]:
        """The direct channel of two users, the same whichever order they come in."""
        name = "__".join(sorted((user_a, user_b)))
        channel_id = _derived_id(name)
        if channel_id not in self._channels:
            self._channels[channel_id] = _channel_record(
                channel_id, name, creator_id=creator_id, at=self._millis()
            )
        return self._channels[channel_id]

    # -------------------------------------------------------------------------------------
    # websocket: connections

    @property
    def connection_count(self) -> int:
        """How many websocket connections are open right now, authenticated or not."""
        return len(self._connections)

    @property
    def authenticated_count(self) -> int:
        """How many open websocket connections have authenticated."""
        return sum(1 for connection in self._connections if connection.user_id is not None)

    async def wait_for_connections(
        self,
        count: int,
        *,
        total: bool = False,
        timeout: float = 5.0,  # noqa: ASYNC109 - see _wait_until
    ) -> None:
        """Wait until `count` websockets are open at once (`total`: have ever been opened)."""

        def reached() -> bool:
            return (self.total_connections if total else self.connection_count) >= count

        def describe() -> str:
            return (
                f"{count} websocket connections{' in total' if total else ''}; "
                f"{self.connection_count} open, {self.total_connections} opened in total"
            )

        await self._wait_until(reached, limit=timeout, describe=describe)

    async def wait_for_authenticated(
        self,
        count: int,
        *,
        total: bool = False,
        timeout: float = 5.0,  # noqa: ASYNC109 - see _wait_until
    ) -> None:
        """Wait until `count` open websockets have authenticated (`total`: ever have)."""

        def reached() -> bool:
            return (self.total_authenticated if total else self.authenticated_count) >= count

        def describe() -> str:
            return (
                f"{count} authenticated websockets{' in total' if total else ''}; "
                f"{self.authenticated_count} open, {self.total_authenticated} in total"
            )

        await self._wait_until(reached, limit=timeout, describe=describe)

    async def wait_for_pings(
        self,
        count: int,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - see _wait_until
    ) -> None:
        """Wait until clients have sent `count` PING frames in total, answered or not."""
        await self._wait_for_frames("PING", lambda: self.pings_received >= count, timeout)

    async def wait_for_pongs(
        self,
        count: int,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - see _wait_until
    ) -> None:
        """Wait until clients have sent `count` PONG frames in total.

        The server never pings, so every PONG a client sends is unsolicited.
        """
        await self._wait_for_frames("PONG", lambda: self.pongs_received >= count, timeout)

    async def _wait_for_frames(self, kind: str, reached: Callable[[], bool], limit: float) -> None:
        def describe() -> str:
            return (
                f"more {kind} frames from clients; {self.pings_received} pings and "
                f"{self.pongs_received} pongs so far"
            )

        await self._wait_until(reached, limit=limit, describe=describe)

    def stop_answering_pings(self, stop: bool = True) -> None:
        """Stop (or resume) answering clients' PING frames, as a hung server would."""
        self._answer_pings = not stop

    async def drop_connections(
        self,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - see _wait_until
    ) -> None:
        """Reset every websocket's TCP connection, with no close frame.

        Returns once the server has seen the connections end.
        """
        for connection in list(self._connections):
            abort(connection)
        await self._wait_for_no_connections(timeout, "dropped")

    async def close_connections(
        self,
        *,
        code: int = 1000,
        timeout: float = 5.0,  # noqa: ASYNC109 - see _wait_until
    ) -> None:
        """Close every websocket cleanly with a close frame carrying `code`.

        Returns once each client has answered the close frame (or the close timed out).
        """
        for connection in list(self._connections):
            await connection.ws.close(code=code)
        await self._wait_for_no_connections(timeout, "closed")

    async def _wait_for_no_connections(self, limit: float, how: str) -> None:
        def none_open() -> bool:
            return not self._connections

        def describe() -> str:
            return f"{how} websockets to end; {self.connection_count} still open"

        await self._wait_until(none_open, limit=limit, describe=describe)

    # -------------------------------------------------------------------------------------
    # websocket: events

    async def send_post(
        self,
        user_id: str,
        channel_id: str,
        message: str,
        *,
        channel_type: str = "O",
        root_id: str = "",
        mentions: Iterable[str] | None = None,
        post_id: str | None = None,
        props: dict[str, Any] | None = None,
        post_type: str = "",
    ) -> dict[str, Any]:
        """Push a `posted` event for a new post by `user_id`; return the post.

        `channel_type` is "O" (public), "P" (private), "D" (direct) or "G" (group).
        `mentions` are the user ids Mattermost found mentioned; it sends them as a JSON
        string, and leaves the key out when nobody was. `post_type` "" is a user's post;
        system posts have types such as "system_join_channel" (see `send_user_joined`).
        """
        if user_id not in self._users:
            msg = f"send_post: no user {user_id!r}; call add_user() for the sender first."
            raise ValueError(msg)
        if channel_type not in CHANNEL_TYPES:
            msg = (
                f"send_post: channel_type must be one of {sorted(CHANNEL_TYPES)}, "
                f"not {channel_type!r}."
            )
            raise ValueError(msg)

        post = self._new_post(
            user_id=user_id,
            channel_id=channel_id,
            message=message,
            root_id=root_id,
            props=props or {},
            post_id=post_id,
            post_type=post_type,
        )
        await self._broadcast(
            self._posted_event(post, channel_type=channel_type, mentions=mentions)
        )
        return post

    async def send_user_joined(
        self, user_id: str, channel_id: str, *, channel_type: str = "O"
    ) -> dict[str, Any]:
        """Push the system post Mattermost makes when a user joins a channel; return it."""
        username = self._username(user_id)
        return await self.send_post(
            user_id,
            channel_id,
            f"@{username} joined the channel.",
            channel_type=channel_type,
            props={"username": username},
            post_type="system_join_channel",
        )

    async def send_event(
        self, event: str, data: dict[str, Any], *, broadcast: dict[str, Any] | None = None
    ) -> None:
        """Push any other event (e.g. "typing", "post_edited") to every authenticated socket."""
        await self._broadcast(
            {"event": event, "data": data, "broadcast": broadcast or _broadcast_scope()}
        )

    def _posted_event(
        self,
        post: dict[str, Any],
        *,
        channel_type: str,
        mentions: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """The `posted` event as notification.go builds it; `post` travels as a JSON string."""
        username = self._username(post["user_id"])
        channel = self._channels.get(post["channel_id"])
        channel_name = channel["name"] if channel else post["channel_id"]
        # A direct channel is shown by the other person's name; the fake names others by id.
        display_name = f"@{username}" if channel_type == "D" else channel_name
        data: dict[str, Any] = {
            "channel_display_name": display_name,
            "channel_name": channel_name,
            "channel_type": channel_type,
            "post": json.dumps(post, separators=(",", ":")),
            "sender_name": f"@{username}",
            "set_online": True,
            # Direct and group channels belong to no team.
            "team_id": "" if channel_type in ("D", "G") else TEAM_ID,
        }
        mentioned = list(mentions or [])
        if mentioned:
            data["mentions"] = json.dumps(mentioned)
        return {
            "event": "posted",
            "data": data,
            "broadcast": _broadcast_scope(channel_id=post["channel_id"]),
        }

    async def _broadcast(self, event: dict[str, Any]) -> None:
        """Send `event` to every authenticated connection, each with its own sequence number."""
        self.sent_events.append(event)
        for connection in list(self._connections):
            if connection.user_id is not None:
                await self._send_event(connection, event)
        await self._notify()

    async def _send_event(self, connection: _Connection, event: dict[str, Any]) -> None:
        sequenced = {**event, "seq": connection.next_seq}
        connection.next_seq += 1
        try:
            await connection.ws.send_str(json.dumps(sequenced))
        except ConnectionError:
            logger.debug("event not delivered; the connection is closing")

    def _new_post(
        self,
        *,
        user_id: str,
        channel_id: str,
        message: str,
        root_id: str,
        props: dict[str, Any],
        post_id: str | None = None,
        post_type: str = "",
        pending_post_id: str = "",
    ) -> dict[str, Any]:
        at = self._millis()
        return {
            "id": post_id or new_id(),
            "create_at": at,
            "update_at": at,
            "edit_at": 0,
            "delete_at": 0,
            "is_pinned": False,
            "user_id": user_id,
            "channel_id": channel_id,
            "root_id": root_id,
            "original_id": "",
            "message": message,
            "type": post_type,
            "props": props,
            "hashtags": "",
            "pending_post_id": pending_post_id,
            "reply_count": 0,
            "last_reply_at": 0,
            "participants": None,
            "metadata": {},
        }

    def _username(self, user_id: str) -> str:
        user = self._users.get(user_id)
        if user is None:
            msg = f"No user {user_id!r}; call add_user() first."
            raise ValueError(msg)
        return str(user["username"])

    def _millis(self) -> int:
        """Milliseconds since the epoch, strictly increasing so posts sort in send order."""
        self._last_millis = max(int(time.time() * 1000), self._last_millis + 1)
        return self._last_millis

    # -------------------------------------------------------------------------------------
    # websocket: handler

    async def _handle_websocket(self, request: web.Request) -> web.StreamResponse:
        # autoping off: PING frames reach us, so stop_answering_pings() can ignore them.
        ws = web.WebSocketResponse(autoping=False, heartbeat=None, receive_timeout=None)
        await ws.prepare(request)
        connection = _Connection(ws, request.transport)
        self._connections.append(connection)
        self.total_connections += 1
        await self._notify()
        logger.info("websocket opened total=%s", self.total_connections)

        try:
            # A valid token on the upgrade request authenticates at once, as on the real
            # server; an invalid one leaves the connection to the challenge.
            header_user = self._tokens.get(_bearer_token(request) or "")
            if header_user is not None:
                await self._register(connection, header_user)
            async for message in ws:
                await self._on_frame(connection, message.type, message.data)
        finally:
            self._connections.remove(connection)
            self.close_codes.append(ws.close_code)
            await self._notify()
            logger.info("websocket closed code=%s open=%s", ws.close_code, self.connection_count)
        return ws

    async def _on_frame(self, connection: _Connection, kind: WSMsgType, data: Any) -> None:
        if kind is WSMsgType.PING:
            self.pings_received += 1
            if self._answer_pings:
                await connection.ws.pong(data)
            await self._notify()
        elif kind is WSMsgType.PONG:
            self.pongs_received += 1
            await self._notify()
        elif kind is WSMsgType.TEXT:
            await self._on_request(connection, data)

    async def _on_request(self, connection: _Connection, data: str) -> None:
        """Serve one websocket request ({"seq", "action", "data"}) as the router does."""
        try:
            request = json.loads(data)
        except json.JSONDecodeError:
            logger.warning("websocket client sent a frame that is not JSON")
            return
        if not isinstance(request, dict):
            return

        seq, action = request.get("seq"), request.get("action")
        if action == "authentication_challenge":
            await self._authenticate(connection, seq, request.get("data"))
        elif connection.user_id is not None and isinstance(seq, int) and seq > 0:
            # The real router would dispatch the action; any other request gets a plain OK.
            await connection.ws.send_str(json.dumps({"status": "OK", "seq_reply": seq}))
        # Errors for an unauthenticated connection are dropped: the real hub has no such
        # connection registered to send them to.

    async def _authenticate(self, connection: _Connection, seq: Any, data: Any) -> None:
        """Answer the authentication challenge exactly as Mattermost's router does.

        A second challenge on an authenticated connection is ignored, with no reply. A bad
        or missing token gets no reply either: the server closes the TCP connection with
        no close frame (gorilla's Conn.Close), so a client sees the socket end mid-handshake.
        On success the hub registers the connection and queues the hello event (seq 0)
        before the router queues {"status": "OK", "seq_reply": <seq>}.
        """
        if connection.user_id is not None:
            return

        token = data.get("token") if isinstance(data, dict) else None
        user_id = self._tokens.get(token) if isinstance(token, str) else None
        if user_id is None:
            logger.info("websocket authentication refused; closing the connection")
            if connection.transport is not None:
                connection.transport.close()
            return

        await self._register(connection, user_id)
        await connection.ws.send_str(json.dumps({"status": "OK", "seq_reply": seq}))

    async def _register(self, connection: _Connection, user_id: str) -> None:
        connection.user_id = user_id
        self.total_authenticated += 1
        hello = {
            "event": "hello",
            "data": {"connection_id": new_id(), "server_version": VERSION_ID},
            "broadcast": _broadcast_scope(user_id=user_id),
        }
        await self._send_event(connection, hello)
        await self._notify()
        logger.info("websocket authenticated user_id=%s", user_id)

    # -------------------------------------------------------------------------------------
    # waiting

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait_until(
        self, predicate: Callable[[], _T | None], *, limit: float, describe: Callable[[], str]
    ) -> _T:
        """Wait until `predicate` returns something other than None or False, for `limit` s.

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


def new_id() -> str:
    """A fresh id in Mattermost's format: 26 characters of its base32 alphabet."""
    return _encode_id(secrets.token_bytes(16))


def _derived_id(seed: str) -> str:
    """An id in Mattermost's format that always comes out the same for `seed`."""
    return _encode_id(hashlib.sha256(seed.encode()).digest()[:16])


def _encode_id(raw: bytes) -> str:
    encoded = base64.b32encode(raw).decode().rstrip("=")
    return encoded.translate(_B32_TO_MATTERMOST)


def _broadcast_scope(
    *, user_id: str = "", channel_id: str = "", team_id: str = ""
) -> dict[str, Any]:
    """An event's `broadcast`: who the server sent it to, as WebsocketBroadcast serialises."""
    return {
        "omit_users": None,
        "user_id": user_id,
        "channel_id": channel_id,
        "team_id": team_id,
        "connection_id": "",
        "omit_connection_id": "",
    }


def _user_record(user_id: str, username: str, *, is_bot: bool, at: int) -> dict[str, Any]:
    """A user as the API returns it; `is_bot` is left out for people, as Go's omitempty does."""
    user: dict[str, Any] = {
        "id": user_id,
        "create_at": at,
        "update_at": at,
        "delete_at": 0,
        "username": username,
        "auth_service": "",
        "email": f"{username}@example.com",
        "nickname": "",
        "first_name": "",
        "last_name": "",
        "position": "",
        "roles": "system_user",
        "locale": "en",
        "timezone": {
            "automaticTimezone": "",
            "manualTimezone": "",
            "useAutomaticTimezone": "true",
        },
        "disable_welcome_email": False,
    }
    if is_bot:
        user["is_bot"] = True
        user["bot_description"] = f"{username} (fake bot)"
    return user


def _channel_record(channel_id: str, name: str, *, creator_id: str, at: int) -> dict[str, Any]:
    """A direct channel as the API returns it: no team, no display name, name "a__b"."""
    return {
        "id": channel_id,
        "create_at": at,
        "update_at": at,
        "delete_at": 0,
        "team_id": "",
        "type": "D",
        "display_name": "",
        "name": name,
        "header": "",
        "purpose": "",
        "last_post_at": 0,
        "total_msg_count": 0,
        "extra_update_at": 0,
        "creator_id": creator_id,
        "scheme_id": None,
        "props": None,
        "group_constrained": None,
        "shared": None,
        "total_msg_count_root": 0,
        "policy_id": None,
        "last_root_post_at": 0,
    }


def _json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """JSON with Content-Type exactly "application/json", as Mattermost sends it.

    mattermostdriver's GET parses a body only when Content-Type equals that string, so
    aiohttp's json_response ("application/json; charset=utf-8") would make it return the
    raw requests.Response instead of a dict.
    """
    all_headers = {
        "Content-Type": "application/json",
        "X-Request-Id": new_id(),
        "X-Version-Id": VERSION_ID,
        **(headers or {}),
    }
    return web.Response(body=json.dumps(data).encode(), status=status, headers=all_headers)


def _error_response(status: int, error_id: str, message: str) -> web.Response:
    """Mattermost's AppError JSON; the server fills request_id and blanks detailed_error."""
    body = {
        "id": error_id,
        "message": message,
        "detailed_error": "",
        "request_id": new_id(),
        "status_code": status,
    }
    return _json_response(body, status=status)


def _body_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON body when it is an object, else an empty dict."""
    body = request[_BODY]
    return body if isinstance(body, dict) else {}


async def _read_json(request: web.Request) -> Any:
    """The request's JSON body; None when it has none, the raw text when it is not JSON."""
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _bearer_token(request: web.Request) -> str | None:
    """The token from "Authorization: Bearer <token>" (Mattermost also accepts "Token")."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() not in ("bearer", "token"):
        return None
    return token.strip() or None


def _check_prefix(path_prefix: str) -> None:
    if not path_prefix.startswith("/") or path_prefix.startswith(f"{API_PREFIX}/"):
        msg = (
            f"Path prefixes are under {API_PREFIX} and start with '/', "
            f"e.g. '/posts'; got {path_prefix!r}."
        )
        raise ValueError(msg)
