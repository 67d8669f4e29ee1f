"""Wiring: settings + a Redis (yours, or the embedded one) -> store, services, commands."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bot.commands import CommandHandler
from bot.config import Secrets, Settings
from bot.embedded import EmbeddedServerError, ensure_server, start_server
from bot.jobs import JobService
from bot.leases import LeaseService
from bot.limits import Gatekeeper
from bot.store import LeasePolicy, Store, connect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """Everything an adapter or CLI command needs, sharing one connection pool."""

    settings: Settings
    store: Store
    leases: LeaseService
    jobs: JobService
    commands: CommandHandler
    embedded_dir: Path | None = None

    async def recover_store(self) -> None:
        """Restart the embedded server if it was stopped or crashed (your own Redis is left
        to its operators); a failure is logged, and the next tick tries again."""
        if self.embedded_dir is None:
            return

        try:
            started = await asyncio.to_thread(start_server, self.embedded_dir)
        except EmbeddedServerError as error:
            log.warning("embedded server could not be restarted: %s", error)
            return
        if started:
            log.warning(
                "embedded server was not running; restarted data_dir=%s", self.embedded_dir
            )


async def resolve_redis_url(settings: Settings, secrets: Secrets, override: str | None) -> str:
    """The Redis to use: --redis-url, else REDIS_URL, else the embedded server.

    Starting the embedded server runs a subprocess and waits for it, so it goes to a thread.
    """
    url = override or secrets.redis_url
    if url:
        return url
    return await asyncio.to_thread(ensure_server, settings.resolved_data_dir())


def policy_of(settings: Settings) -> LeasePolicy:
    """The store's lease policy from the settings."""
    return LeasePolicy(
        events_max=settings.events_max,
        handoff=settings.handoff,
        default_ttl_ms=(settings.lock.default_ttl, settings.claim.default_ttl),
        reminder_offsets_ms=tuple(settings.reminder_offsets),
    )


@asynccontextmanager
async def open_runtime(
    settings: Settings, secrets: Secrets, *, redis_url: str | None = None
) -> AsyncIterator[Runtime]:
    """Build the services for one process and close the connections afterwards."""
    url = await resolve_redis_url(settings, secrets, redis_url)
    password = secrets.redis_password.get_secret_value() if secrets.redis_password else None
    client = connect(url, password=password, ca_file=settings.redis_ca_file)
    store = Store(client, namespace=settings.namespace, policy=policy_of(settings))
    leases = LeaseService(store, settings)
    jobs = JobService(store, settings)
    embedded = None if (redis_url or secrets.redis_url) else settings.resolved_data_dir()
    commands = CommandHandler(leases, jobs, settings, gatekeeper=Gatekeeper(store, settings))
    try:
        yield Runtime(settings, store, leases, jobs, commands, embedded_dir=embedded)
    finally:
        await store.close()
