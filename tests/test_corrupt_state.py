"""Values of the wrong type written by hand into deploybot's keys are reported, not fatal."""

from __future__ import annotations

import pytest

from bot.commands import CommandHandler
from bot.messages import Message
from bot.render import render_plain
from bot.store import Store

COMMANDS = ["lock backend", "unlock backend", "status", "history backend", "jobs", "queue api"]


@pytest.mark.parametrize("key", ["leases", "timeline", "events", "jobs", "queue:lock:api"])
@pytest.mark.parametrize("text", COMMANDS)
async def test_a_key_of_the_wrong_type_gets_a_reply_not_a_crash(
    commands: CommandHandler, store: Store, key: str, text: str
) -> None:
    """Every command answers politely when one of deploybot's keys holds the wrong type."""
    await store.redis.delete(store.key(key))
    await store.redis.set(store.key(key), "hand-written")
    if key.startswith("queue"):
        await store.redis.set(store.key("lease", "lock", "api"), "{}")

    reply = await commands.handle(Message("local", "alice", "alice", "console", text))
    rendered = render_plain(reply.parts)

    assert "Something went wrong" not in rendered, rendered
    assert "Traceback" not in rendered and "WRONGTYPE" not in rendered


async def test_a_wrong_type_does_not_claim_that_nothing_changed(
    commands: CommandHandler, store: Store
) -> None:
    """A script stopped midway by a wrong-type key keeps its earlier writes, so the reply
    says the change may be partial and names the way out, never that nothing changed."""
    await store.redis.set(store.key("timeline"), "hand-written")

    reply = await commands.handle(Message("local", "alice", "alice", "console", "lock t5"))
    rendered = render_plain(reply.parts)

    assert reply.ok is False
    assert "nothing" not in rendered, rendered
    assert "partly" in rendered
    assert "inspect or delete" in rendered
