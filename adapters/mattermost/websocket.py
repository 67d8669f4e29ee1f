"""A Mattermost websocket that fixes mattermostdriver 7.3.2's flaws without forking it.

The stock `mattermostdriver.websocket.Websocket`:

- builds its TLS context with `Purpose.CLIENT_AUTH`, so `wss://` fails on Python >= 3.10
  (and on older Pythons the server certificate was never verified);
- returns silently when the server closes the connection with keepalive off, and retries
  at a fixed delay forever with it on, including after a refused token;
- answers idle timeouts with an unsolicited pong instead of a ping that must be answered,
  so a dead connection is never noticed.

This subclass keeps the driver's options and authentication challenge, and replaces the
connection loop: verified TLS (with an optional CA file), pings that must be answered,
reconnects with exponential backoff and jitter, and a clear error on a refused token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import websockets
from mattermostdriver.websocket import Websocket
from websockets.asyncio.client import ClientConnection

log = logging.getLogger(__name__)

EventHandler = Callable[[str], Awaitable[None]]


class MattermostAuthError(Exception):
    """The server refused the bot's token; retrying cannot help."""


class _ClosedDuringAuthentication(Exception):
    """The server hung up before accepting the token: what it does with a bad one."""


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client context that verifies the server certificate and host name."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


class ReconnectingWebsocket(Websocket):  # type: ignore[misc]
    """The driver's websocket with verified TLS, liveness checks and backoff."""

    def __init__(
        self,
        options: dict[str, Any],
        token: str,
        *,
        ca_file: Path | None = None,
        ping_interval: float = 20,
        ping_timeout: float = 20,
        max_delay: float = 60,
        on_state: Callable[[bool, str], None] | None = None,
        token_valid: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        super().__init__(options, token)
        self._ca_file = ca_file
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._max_delay = max_delay
        self._on_state = on_state or (lambda up, reason: None)
        self._token_valid = token_valid
        self._connection: ClientConnection | None = None
        self._closing: asyncio.Future[None] | None = None

    @property
    def url(self) -> str:
        """The websocket URL derived from the driver's options."""
        scheme = "wss" if self.options["scheme"] == "https" else "ws"
        host, port, base = self.options["url"], self.options["port"], self.options["basepath"]
        return f"{scheme}://{host}:{port}{base}/websocket"

    async def connect(self, event_handler: EventHandler) -> None:
        """Stay connected until `disconnect()`; raise MattermostAuthError on a bad token."""
        self._alive = True
        failures = 0
        while self._alive:
            reason = "closed"
            try:
                async with websockets.connect(
                    self.url,
                    ssl=tls_context(self._ca_file) if self.url.startswith("wss") else None,
                    ping_interval=self._ping_interval,
                    ping_timeout=self._ping_timeout,
                    open_timeout=10,
                    max_size=4 * 1024 * 1024,
                ) as connection:
                    self._connection = connection
                    await self._authenticate(connection, event_handler)
                    failures = 0
                    self._on_state(True, "connected")
                    async for message in connection:
                        await event_handler(str(message))
            except MattermostAuthError:
                self._on_state(False, "authentication refused")
                raise
            except _ClosedDuringAuthentication:
                # Mattermost closes the socket on a bad token without saying why; ask REST
                # whether the token still works before retrying, so a revoked one stops us.
                if self._token_valid is not None and not await self._token_valid():
                    self._on_state(False, "authentication refused")
                    raise MattermostAuthError(_REFUSED) from None
                reason = "closed during authentication"
            except (TimeoutError, OSError, websockets.WebSocketException) as error:
                reason = type(error).__name__
            finally:
                self._connection = None

            if not self._alive:
                break
            failures += 1
            delay = self._backoff(failures)
            self._on_state(False, reason)
            log.warning(
                "mattermost websocket lost reason=%s retry_in_s=%.1f attempt=%s",
                reason,
                delay,
                failures,
            )
            await asyncio.sleep(delay)

    def disconnect(self) -> None:
        """Stop reconnecting and close the current connection."""
        self._alive = False
        if self._connection is not None:
            self._closing = asyncio.ensure_future(self._connection.close())

    async def _authenticate(
        self, connection: ClientConnection, event_handler: EventHandler
    ) -> None:
        """Send the token; return on the server's OK (or hello), raise on a refusal."""
        challenge = {
            "seq": 1,
            "action": "authentication_challenge",
            "data": {"token": self._token},
        }
        await connection.send(json.dumps(challenge))
        async with asyncio.timeout(10):
            while True:
                try:
                    raw = await connection.recv()
                except websockets.ConnectionClosed:
                    raise _ClosedDuringAuthentication() from None
                message = _json(raw)
                if message.get("seq_reply") == 1 and message.get("status") == "FAIL":
                    raise MattermostAuthError(_REFUSED)
                await event_handler(str(raw))
                if message.get("event") == "hello" or (
                    message.get("seq_reply") == 1 and message.get("status") == "OK"
                ):
                    log.info("mattermost websocket authenticated")
                    return

    def _backoff(self, failures: int) -> float:
        """Exponential backoff with full jitter, so replicas do not reconnect in lockstep."""
        ceiling = min(self._max_delay, 0.5 * 2 ** min(failures, 10))
        return random.uniform(ceiling / 2, ceiling)


_REFUSED = (
    "Mattermost refused the bot's token; check MATTERMOST_TOKEN (or the login id and password)."
)


def _json(raw: str | bytes) -> dict[str, Any]:
    """Parse a websocket message; anything that is not a JSON object is an empty dict."""
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
