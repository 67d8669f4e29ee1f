"""Shared fixtures: a real Redis-compatible server for the session, and clients to it."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

# tests/ has no __init__.py, so pytest puts tests/ itself on sys.path.
from servers import start_test_server, stop_test_server

from bot.commands import CommandHandler
from bot.config import Settings
from bot.jobs import JobService
from bot.leases import LeaseService
from bot.store import Store, connect

# `deploybot run` started by tests must not take the default HTTP port 8080 (tests that
# check the HTTP server choose their own port).
os.environ.setdefault("DEPLOYBOT_HTTP_PORT", "0")


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The redis:// URL of a throwaway server shared by the whole test session."""
    process, url = start_test_server(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop_test_server(process)


@pytest.fixture
async def redis_client(redis_server_url: str) -> AsyncIterator[Redis]:
    """An async client to the session server, with the database emptied so no keys leak in."""
    client = Redis.from_url(redis_server_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A namespace of this test's own, so tests never see each other's keys."""
    return "t-" + secrets.token_hex(6)


@pytest.fixture
def settings(namespace: str) -> Settings:
    """Default settings in this test's namespace; tests copy and adjust them as needed."""
    return Settings(namespace=namespace)


@pytest.fixture
async def store(redis_server_url: str, settings: Settings) -> AsyncIterator[Store]:
    """A store on the session server, in this test's namespace."""
    store = Store(connect(redis_server_url), namespace=settings.namespace)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def leases(store: Store, settings: Settings) -> LeaseService:
    """The lease service over the test store."""
    return LeaseService(store, settings)


@pytest.fixture
def jobs(store: Store, settings: Settings) -> JobService:
    """The job service over the test store."""
    return JobService(store, settings)


@pytest.fixture
def commands(leases: LeaseService, jobs: JobService, settings: Settings) -> CommandHandler:
    """The chat command handler over the test store."""
    return CommandHandler(leases, jobs, settings)
