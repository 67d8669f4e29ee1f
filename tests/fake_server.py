"""What the fake Slack and fake Mattermost servers share: an aiohttp app on a free
127.0.0.1 port, the websockets it holds, and start/stop or `async with`."""

from __future__ import annotations

import asyncio
import socket
import ssl
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

from aiohttp import web


class _HasTransport(Protocol):
    @property
    def transport(self) -> asyncio.Transport | None: ...


ConnectionT = TypeVar("ConnectionT", bound=_HasTransport)


class FakeServer(Generic[ConnectionT]):
    """A local server a subclass gives routes to (`_build_app`), and optionally TLS."""

    def __init__(self) -> None:
        self._connections: list[ConnectionT] = []
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    def _build_app(self) -> web.Application:
        raise NotImplementedError

    def _server_tls_context(self) -> ssl.SSLContext | None:
        return None

    async def start(self) -> None:
        """Start serving on a port the OS picks; read it back from `port`."""
        name = type(self).__name__
        if self._runner is not None:
            msg = f"{name} is already running; stop() it before starting it again."
            raise RuntimeError(msg)

        app = self._build_app()
        # A socket we bind ourselves tells us the port without reaching into aiohttp.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]

        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=self._server_tls_context()).start()

    async def stop(self) -> None:
        """Cut every live websocket and shut the server down."""
        if self._runner is None:
            return

        for connection in list(self._connections):
            abort(connection)
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The TCP port the fake listens on."""
        if self._port is None:
            msg = f"{type(self).__name__} has no port until start() has run."
            raise RuntimeError(msg)
        return self._port


def abort(connection: _HasTransport) -> None:
    """Reset the TCP connection under a websocket, so the client sees no close frame."""
    if connection.transport is not None:
        connection.transport.abort()
