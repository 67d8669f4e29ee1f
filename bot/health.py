"""HTTP for operators: /healthz (alive), /readyz (Redis and chat up), /metrics (Prometheus).

It listens on `http_host:http_port` (127.0.0.1:8080 by default; port 0 turns it off). Its
answers name what is down and nothing else: no settings, URLs or tokens.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from aiohttp import web

from bot.chat import ChatPlatform
from bot.config import Settings
from bot.metrics import CONTENT_TYPE, Metrics
from bot.store import Store

log = logging.getLogger(__name__)

# A readiness probe must answer quickly even when Redis hangs; slower than this is "down".
PING_TIMEOUT_S = 1.0


class Health:
    """What /readyz checks: Redis answers PING and every chat platform is connected."""

    def __init__(self, store: Store, platforms: Mapping[str, ChatPlatform]) -> None:
        self.store = store
        self.platforms = dict(platforms)
        self.stopping = False

    async def checks(self) -> dict[str, str]:
        """Each dependency's state: "up", or why it is not (no details that could leak)."""
        results = {"redis": "up" if await self._redis_answers() else "down"}
        for name, platform in self.platforms.items():
            results[name] = "up" if platform.connected else "disconnected"
        if self.stopping:
            results["deploybot"] = "shutting down"
        return results

    async def _redis_answers(self) -> bool:
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                return await self.store.ping()
        except TimeoutError:
            return False


class HealthServer:
    """The aiohttp application serving the three endpoints."""

    def __init__(self, health: Health, metrics: Metrics) -> None:
        self._health = health
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> bool:
        """Listen on host:port; False (with a warning logged) when that is not possible.

        deploybot serves chat without it, so a taken port is reported, not fatal.
        """
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._render_metrics)
        # No access log: Prometheus and the probes would fill it with a line every few seconds.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            log.warning(
                "http server not started host=%s port=%s reason=%s; serving chat without "
                "/healthz, /readyz and /metrics (set http_port, or 0 to turn it off)",
                host,
                port,
                _why(error),
            )
            return False

        self._runner = runner
        self.port = _bound_port(runner) or port
        log.info("http server listening host=%s port=%s", host, self.port)
        return True

    async def stop(self) -> None:
        """Close the listener and any open requests."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = await self._health.checks()
        down = [name for name, state in checks.items() if state != "up"]
        body = {"ready": not down, "down": down, "checks": checks}
        return web.json_response(body, status=503 if down else 200)

    async def _render_metrics(self, request: web.Request) -> web.Response:
        await self._metrics.refresh(self._health.store)
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})


@asynccontextmanager
async def serving_health(
    settings: Settings, health: Health, metrics: Metrics
) -> AsyncIterator[HealthServer | None]:
    """Serve the endpoints for the duration of the block (not at all when http_port is 0)."""
    if settings.http_port == 0:
        log.info("http server off (http_port is 0)")
        yield None
        return

    server = HealthServer(health, metrics)
    started = await server.start(settings.http_host, settings.http_port)
    try:
        yield server if started else None
    finally:
        await server.stop()


def _why(error: OSError) -> str:
    """A short reason for a failed bind, naming the usual one plainly."""
    if error.errno == errno.EADDRINUSE:
        return "the port is already in use"
    if error.errno == errno.EADDRNOTAVAIL:
        return "no such address on this machine"
    return error.strerror or type(error).__name__


def _bound_port(runner: web.AppRunner) -> int | None:
    """The port actually bound: the one asked for, or the OS's pick when that was 0."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None
