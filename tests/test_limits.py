"""Allow-lists of channels and users, and the per-user rate limit."""

from __future__ import annotations

from bot.commands import CommandHandler
from bot.config import Settings
from bot.jobs import JobService
from bot.leases import LeaseService
from bot.limits import Gatekeeper
from bot.messages import Message
from bot.model import LeaseKind
from bot.render import render_plain
from bot.store import Store, connect


def handler(store: Store, settings: Settings) -> CommandHandler:
    """A command handler with the gatekeeper, as `deploybot run` builds it."""
    leases, jobs = LeaseService(store, settings), JobService(store, settings)
    return CommandHandler(leases, jobs, settings, gatekeeper=Gatekeeper(store, settings))


def message(text: str, *, user: str = "U1", channel: str = "C1", direct: bool = False) -> Message:
    return Message("slack", user, user.lower(), channel, text, direct=direct)


async def test_unlisted_channel_is_refused_but_dms_work(store: Store, namespace: str) -> None:
    """With allowed_channels set, other channels get a polite refusal; DMs are answered."""
    settings = Settings(namespace=namespace, allowed_channels=["slack:COK"])
    commands = handler(store, settings)

    refused = await commands.handle(message("lock backend", channel="COTHER"))
    allowed = await commands.handle(message("lock api", channel="COK"))
    direct = await commands.handle(message("lock web", channel="D1", direct=True))

    assert not refused.ok and "not enabled in this channel" in render_plain(refused.parts)
    assert await store.get(LeaseKind.LOCK, "backend") is None
    assert allowed.ok and direct.ok


async def test_unlisted_user_is_refused(store: Store, namespace: str) -> None:
    """With allowed_users set, anyone else is told how to get access, and nothing changes."""
    settings = Settings(namespace=namespace, allowed_users=["slack:UOK"])
    commands = handler(store, settings)

    refused = await commands.handle(message("lock backend", user="UNO"))
    allowed = await commands.handle(message("lock backend", user="UOK"))

    assert not refused.ok and "slack:UNO" in render_plain(refused.parts)
    assert allowed.ok


async def test_rate_limit_is_per_user_and_shared_by_replicas(
    store: Store, namespace: str, redis_server_url: str
) -> None:
    """Over the limit a person is asked to slow down, whichever replica they reach."""
    settings = Settings(namespace=namespace, rate_limit_per_minute=3)
    other_store = Store(connect(redis_server_url), namespace=namespace)
    first, second = handler(store, settings), handler(other_store, settings)
    try:
        replies = [await (first if i % 2 else second).handle(message("status")) for i in range(3)]
        over = await first.handle(message("lock backend"))
        someone_else = await second.handle(message("status", user="U2"))
    finally:
        await other_store.close()

    assert all(reply.ok for reply in replies)
    assert not over.ok and "more than 3 commands in a minute" in render_plain(over.parts)
    assert await store.get(LeaseKind.LOCK, "backend") is None
    assert someone_else.ok


async def test_local_console_is_not_rate_limited(store: Store, namespace: str) -> None:
    """Console messages (platform local) are never limited or counted; chat users still are."""
    settings = Settings(namespace=namespace, rate_limit_per_minute=3)
    commands = handler(store, settings)
    console = Message("local", "alice", "alice", "console", "status", direct=True)

    replies = [await commands.handle(console) for _ in range(10)]
    chat_replies = [await commands.handle(message("status")) for _ in range(4)]

    assert all(reply.ok for reply in replies)
    assert await store.redis.exists(store.key("rate", "local", "alice")) == 0
    assert [reply.ok for reply in chat_replies] == [True, True, True, False]


async def test_rate_limit_fails_open_when_redis_is_down(namespace: str) -> None:
    """With Redis unreachable the limiter steps aside and the command reports the outage."""
    settings = Settings(namespace=namespace, rate_limit_per_minute=1)
    store = Store(connect("redis://127.0.0.1:1/0"), namespace=namespace)
    try:
        reply = await handler(store, settings).handle(message("lock backend"))
    finally:
        await store.close()

    assert not reply.ok and "state store is unavailable" in render_plain(reply.parts)
