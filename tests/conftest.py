"""Shared fixtures: a real Redis-compatible server for the session, and clients to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

# tests/ has no __init__.py, so pytest puts tests/ itself on sys.path.
from servers import start_test_server, stop_test_server


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
