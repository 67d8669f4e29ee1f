"""deploybot on Mattermost: REST API v4 and the websocket's `posted` events.

mattermostdriver is the client; every workaround for its flaws stays in this package. Its
REST calls block, so each runs in a worker thread; its websocket is replaced by
`ReconnectingWebsocket`. Every websocket gets every event, so when several deploybot
processes are connected each post is handled by the one that records its id first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import tzinfo
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from mattermostdriver import Driver
from mattermostdriver.exceptions import NoAccessTokenProvided

from adapters.mattermost.format import PLATFORM, render_markdown
from adapters.mattermost.websocket import MattermostAuthError, ReconnectingWebsocket
from bot.errors import StoreUnavailable
from bot.messages import Message, Reply
from bot.runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")

USER_CACHE_TTL_S = 3600
SEEN_TTL_S = 3600
MAX_RATE_LIMIT_RETRIES = 3


class MattermostConfigError(Exception):
    """Mattermost settings are missing or wrong, or the server refused the credentials."""


def driver_options(
    url: str,
    *,
    token: str | None,
    login_id: str | None,
    password: str | None,
    ca_file: Path | None,
) -> dict[str, Any]:
    """mattermostdriver options from a server URL such as https://chat.example.com."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MattermostConfigError(
            f"MATTERMOST_URL must look like https://chat.example.com, not {url!r}."
        )
    if not token and not (login_id and password):
        raise MattermostConfigError(
            "Mattermost needs MATTERMOST_TOKEN (a bot account's token), or "
            "MATTERMOST_LOGIN_ID and MATTERMOST_PASSWORD."
        )
    return {
        "url": parts.hostname,
        "scheme": parts.scheme,
        "port": parts.port or (443 if parts.scheme == "https" else 80),
        "basepath": parts.path.rstrip("/") + "/api/v4",
        "token": token,
        "login_id": None if token else login_id,
        "password": None if token else password,
        "verify": str(ca_file) if ca_file else True,
        "request_timeout": 10,
        "keepalive": True,
        "debug": False,
    }


class MattermostAdapter:
    """Connects one Mattermost server to deploybot's command handler."""

    platform = PLATFORM

    def __init__(
        self,
        runtime: Runtime,
        *,
        url: str,
        token: str | None = None,
        login_id: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        zone: tzinfo | None = None,
        ping_interval: float = 20,
        ping_timeout: float = 20,
    ) -> None:
        self._runtime = runtime
        self._zone = zone
        self._ca_file = ca_file
        self._ping = (ping_interval, ping_timeout)
        self.driver = Driver(
            driver_options(url, token=token, login_id=login_id, password=password, ca_file=ca_file)
        )
        self._bot_id = ""
        self._bot_username = ""
        self._users: dict[str, tuple[dict[str, Any], float]] = {}
        self._websocket: ReconnectingWebsocket | None = None
        self._listener: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._connected = asyncio.Event()
        self._ever_connected = False
        self.reconnects = 0
        self._failure: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @property
    def connected(self) -> bool:
        """Whether the websocket is authenticated right now."""
        return self._connected.is_set()

    async def start(self) -> None:
        """Log in over REST, then connect the websocket; raise on refused credentials."""
        me = await self._login()
        self._bot_id, self._bot_username = str(me["id"]), str(me["username"])
        self._websocket = ReconnectingWebsocket(
            self.driver.options,
            self.driver.client.token,
            ca_file=self._ca_file,
            ping_interval=self._ping[0],
            ping_timeout=self._ping[1],
            on_state=self._on_state,
            token_valid=self._token_valid,
        )
        self._listener = asyncio.create_task(self._listen())
        connected: asyncio.Future[Any] = asyncio.ensure_future(self._connected.wait())
        await asyncio.wait(
            [connected, self._failure], timeout=30, return_when=asyncio.FIRST_COMPLETED
        )
        connected.cancel()
        if self._failure.done():
            raise MattermostConfigError(self._failure.result())
        if not self.connected:
            log.warning("mattermost websocket not up yet; still trying in the background")
        log.info("mattermost started bot_user=%s", self._bot_username)

    async def stop(self) -> None:
        """Stop listening, let in-flight replies finish, close the websocket."""
        if self._websocket is not None:
            self._websocket.disconnect()
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=8)
        log.info("mattermost disconnected")

    async def failure(self) -> str:
        """Wait until the connection fails for good (a refused token); return why."""
        return await asyncio.shield(self._failure)

    async def post(self, channel: str, reply: Reply, *, thread: str | None = None) -> None:
        """Post a reply in a channel (as a thread reply when `thread` is a root post id)."""
        options = {"channel_id": channel, "message": render_markdown(reply.parts, self._zone)}
        if thread:
            options["root_id"] = thread
        await self._rest("posts", self.driver.posts.create_post, options)

    async def send_direct(self, user_id: str, reply: Reply) -> None:
        """Open (or reuse) the direct channel with a person and post there."""
        channel = await self._rest(
            "channels/direct",
            self.driver.channels.create_direct_message_channel,
            [self._bot_id, user_id],
        )
        if isinstance(channel, dict) and channel.get("id"):
            await self.post(str(channel["id"]), reply)

    async def _login(self) -> dict[str, Any]:
        """Log in (checks the token); turn the driver's failures into clear errors."""
        try:
            me = await asyncio.to_thread(self.driver.login)
        except NoAccessTokenProvided:
            raise MattermostConfigError(
                "Mattermost refused the credentials; check MATTERMOST_TOKEN (or the login id "
                "and password)."
            ) from None
        except requests.exceptions.SSLError:
            raise MattermostConfigError(
                "Mattermost's TLS certificate could not be verified; if it is signed by your "
                "own CA, set mattermost_ca_file in config.yaml to that CA's PEM file."
            ) from None
        except requests.RequestException as error:
            raise MattermostConfigError(
                f"Cannot reach Mattermost at {self.driver.client.url} ({type(error).__name__})."
            ) from None
        if not isinstance(me, dict) or "id" not in me:
            raise MattermostConfigError("Mattermost's users/me answer has no user id.")
        return me

    async def _token_valid(self) -> bool:
        """Whether REST still accepts the token (a network error counts as "yes, retry")."""
        try:
            await asyncio.to_thread(self.driver.users.get_user, "me")
        except NoAccessTokenProvided:
            return False
        except requests.RequestException:
            return True
        return True

    async def _listen(self) -> None:
        """Run the websocket until stopped; a refused token is a permanent failure."""
        assert self._websocket is not None
        try:
            await self._websocket.connect(self._on_event)
        except MattermostAuthError as error:
            if not self._failure.done():
                self._failure.set_result(str(error))
            log.error("mattermost stopped: token refused")

    def _on_state(self, up: bool, reason: str) -> None:
        """Track the connection for `connected` and `reconnects`; log each change and why."""
        if up:
            if self._ever_connected and not self._connected.is_set():
                self.reconnects += 1
            self._ever_connected = True
            self._connected.set()
        else:
            self._connected.clear()
        log.info("mattermost websocket %s reason=%s", "up" if up else "down", reason)

    async def _on_event(self, raw: str) -> None:
        """Pick out posts meant for deploybot; answer each in its own task."""
        post, data = _posted(raw)
        if post is None or not self._meant_for_me(post, data):
            return
        task = asyncio.create_task(self._answer(post, data))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _meant_for_me(self, post: dict[str, Any], data: dict[str, Any]) -> bool:
        """A user's post in a DM with the bot, or one that mentions the bot."""
        if post.get("user_id") == self._bot_id or post.get("type"):
            return False  # our own post, or a system post (joins, header changes)
        if str((post.get("props") or {}).get("from_bot", "")).lower() == "true":
            return False
        if data.get("channel_type") == "D":
            return True
        mentions = _json_list(data.get("mentions"))
        return self._bot_id in mentions or self._mention_at(str(post.get("message", ""))) >= 0

    async def _answer(self, post: dict[str, Any], data: dict[str, Any]) -> None:
        """Run the command once across processes and reply (in the thread if it had one)."""
        if not await self._first(str(post.get("id", ""))):
            log.info("mattermost duplicate ignored post=%s", post.get("id"))
            return
        sender = await self._user(str(post.get("user_id", "")))
        if sender.get("is_bot"):
            return
        message = Message(
            platform=PLATFORM,
            user_id=str(post.get("user_id", "")),
            display_name=str(sender.get("username") or post.get("user_id", "")),
            channel=str(post.get("channel_id", "")),
            text=self._without_mention(str(post.get("message", ""))),
            thread=str(post["root_id"]) if post.get("root_id") else None,
            direct=data.get("channel_type") == "D",
            event_id=str(post.get("id", "")),
        )
        reply = await self._runtime.commands.handle(message)
        await self.post(message.channel, reply, thread=message.thread)

    async def _first(self, post_id: str) -> bool:
        """Whether this process is the first to see a post (Redis down: assume so)."""
        try:
            return await self._runtime.store.first_sighting(PLATFORM, post_id, ttl_s=SEEN_TTL_S)
        except StoreUnavailable:
            return True

    async def _user(self, user_id: str) -> dict[str, Any]:
        """A user's record (username, is_bot), cached for an hour."""
        cached = self._users.get(user_id)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        user = await self._rest(f"users/{user_id}", self.driver.users.get_user, user_id)
        if not isinstance(user, dict):
            return {"id": user_id, "username": user_id}
        self._users[user_id] = (user, time.monotonic() + USER_CACHE_TTL_S)
        return user

    def _mention_at(self, text: str) -> int:
        """Where `@<bot username>` starts in `text` (as a whole word), or -1."""
        if not self._bot_username:
            return -1
        match = re.search(rf"@{re.escape(self._bot_username)}\b", text, flags=re.IGNORECASE)
        return match.start() if match else -1

    def _without_mention(self, text: str) -> str:
        """The text after the bot's mention, so `hey @deploybot lock api` works."""
        at = self._mention_at(text)
        return text[at + len(self._bot_username) + 1 :] if at >= 0 else text

    async def _rest(self, what: str, call: Callable[..., T], *args: Any) -> T | None:
        """A blocking REST call in a worker thread; errors are logged, 429 is retried."""
        for attempt in range(MAX_RATE_LIMIT_RETRIES + 1):
            try:
                return await asyncio.to_thread(call, *args)
            except requests.HTTPError as error:
                status = _status_of(error)
                if status == 429 and attempt < MAX_RATE_LIMIT_RETRIES:
                    delay = _retry_after(error.response)
                    log.warning("mattermost rate limited call=%s retry_in_s=%.1f", what, delay)
                    await asyncio.sleep(delay)
                    continue
                log.warning("mattermost api error call=%s status=%s", what, status)
            except requests.RequestException as error:
                log.warning(
                    "mattermost api call failed call=%s error=%s", what, type(error).__name__
                )
            return None
        return None


def _posted(raw: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The post inside a `posted` event (its `post` is a JSON string), or None."""
    try:
        event = json.loads(raw)
        if not isinstance(event, dict) or event.get("event") != "posted":
            return None, {}
        data = event.get("data") or {}
        post = json.loads(data.get("post") or "null")
    except (ValueError, TypeError, AttributeError):
        log.warning("mattermost event unreadable")
        return None, {}
    return (post if isinstance(post, dict) else None), data


def _json_list(raw: object) -> list[str]:
    """`data.mentions` is a JSON string holding a list of user ids."""
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return []
    return [str(item) for item in value] if isinstance(value, list) else []


# mattermostdriver raises these typed errors `from None` with the response dropped, so the
# status has to be read back from the class.
_STATUS_BY_ERROR = {
    "InvalidOrMissingParameters": 400,
    "NoAccessTokenProvided": 401,
    "NotEnoughPermissions": 403,
    "ResourceNotFound": 404,
    "MethodNotAllowed": 405,
    "ContentTooLarge": 413,
    "FeatureDisabled": 501,
}


def _status_of(error: requests.HTTPError) -> int | None:
    """The HTTP status of a driver error, whichever way the driver raised it."""
    if error.response is not None:
        return int(error.response.status_code)
    return _STATUS_BY_ERROR.get(type(error).__name__)


def _retry_after(response: Any) -> float:
    """Seconds to wait from a 429's Retry-After header (1 s when missing, 60 s at most)."""
    try:
        return min(60.0, max(0.1, float(response.headers.get("Retry-After", 1))))
    except (TypeError, ValueError, AttributeError):
        return 1.0
