"""Tests for bot.commands: chat text in, polite replies out, against a real server."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bot import errors
from bot.commands import Command, CommandHandler, parse
from bot.config import Settings
from bot.errors import UnknownCommand, UsageError
from bot.jobs import JobService
from bot.leases import LeaseService
from bot.messages import Message, Reply, When
from bot.model import LeaseKind
from bot.render import clock_time, render_plain
from bot.store import Store, connect

# Who talks to the bot in these tests: short name -> (Slack user id, display name).
PEOPLE = {
    "alice": ("U_ALICE", "Alice"),
    "bob": ("U_BOB", "Bob"),
    "admin": ("U_ADMIN", "Ada"),
}
CHANNEL = "C_DEPLOYS"

SERVICES = ["backend", "frontend", "api"]
ENVIRONMENTS = ["staging-1", "staging-2", "staging-3"]

CRASH_TEXT = "Something went wrong"

# Words that must never reach a person: a traceback, or the name of an exception class.
_ERROR_CLASS_NAMES = [
    name
    for name, value in vars(errors).items()
    if isinstance(value, type) and issubclass(value, BaseException)
]
_EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b")


def message(text: str, who: str = "alice", platform: str = "slack") -> Message:
    """A channel message from one of PEOPLE."""
    user_id, display = PEOPLE[who]
    return Message(
        platform=platform,
        user_id=user_id,
        display_name=display,
        channel=CHANNEL,
        text=text,
    )


async def say(handler: CommandHandler, text: str, who: str = "alice") -> tuple[Reply, str]:
    """Send `text` as `who` and return the reply and its plain-text rendering."""
    reply = await handler.handle(message(text, who))
    return reply, render_plain(reply.parts)


def assert_polite_refusal(reply: Reply, text: str) -> None:
    """A refusal: not ok, not a crash, and nothing a developer would recognise as an error."""
    assert reply.ok is False
    assert text.strip()
    assert CRASH_TEXT not in text
    assert "Traceback" not in text
    assert not _EXCEPTION_NAME.search(text), text
    for name in _ERROR_CLASS_NAMES:
        assert name not in text


async def snapshot(store: Store) -> dict[str, Any]:
    """Every key of the test's namespace with its value (TTLs aside), to prove nothing changed."""
    client = store.redis
    state: dict[str, Any] = {}
    for key in sorted(await client.keys(store.key("*"))):
        kind = await client.type(key)
        if kind == "string":
            value: Any = await client.get(key)
        elif kind == "hash":
            value = await client.hgetall(key)
        elif kind == "zset":
            value = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = await client.xrange(key)
        elif kind == "list":
            value = await client.lrange(key, 0, -1)
        else:
            value = kind
        state[str(key)] = (kind, value)
    return state


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (never the machine's 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != 6379:
            return port


def team_settings(namespace: str) -> Settings:
    """Settings of a team that lists its services and environments and has one admin."""
    return Settings(
        namespace=namespace,
        admins=["slack:U_ADMIN"],
        services=SERVICES,
        environments=ENVIRONMENTS,
    )


@pytest.fixture
def team(store: Store, namespace: str) -> CommandHandler:
    """A command handler over the test store with listed names and an admin."""
    settings = team_settings(namespace)
    return CommandHandler(LeaseService(store, settings), JobService(store, settings), settings)


@pytest.fixture
async def unreachable(namespace: str) -> AsyncIterator[CommandHandler]:
    """A command handler whose store points at a loopback port nobody listens on."""
    settings = team_settings(namespace)
    store = Store(connect(f"redis://127.0.0.1:{free_loopback_port()}/0"), namespace=namespace)
    try:
        yield CommandHandler(LeaseService(store, settings), JobService(store, settings), settings)
    finally:
        await store.close()


# parse()


def test_parse_strips_a_leading_at_mention() -> None:
    """`@deploybot lock ...` parses as if the mention were not there."""
    assert parse("@deploybot lock backend 30m") == Command("lock", ["backend", "30m"])


def test_parse_strips_a_slack_user_mention() -> None:
    """A Slack `<@U123>` mention at the start is optional."""
    assert parse("<@U123> status backend") == Command("status", ["backend"])


def test_parse_strips_a_labelled_mention_followed_by_a_colon() -> None:
    """`<@U123|deploybot>: unlock backend` parses as `unlock backend`."""
    assert parse("<@U123|deploybot>: unlock backend") == Command("unlock", ["backend"])


@pytest.mark.parametrize("text", ["LOCK backend", "Lock backend", "lOcK backend"])
def test_parse_reads_command_words_in_any_case(text: str) -> None:
    """Command words are case-insensitive."""
    assert parse(text) == Command("lock", ["backend"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("locks", Command("status", ["locks"])),
        ("envs", Command("status", ["envs"])),
        ("ENVS staging-2", Command("status", ["envs", "staging-2"])),
    ],
)
def test_parse_maps_aliases_to_status(text: str, expected: Command) -> None:
    """`locks` and `envs` are aliases of `status` that keep the word that narrows it."""
    assert parse(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "@deploybot", "<@U123>", "<@U123|deploybot>:"])
def test_parse_treats_empty_text_as_help(text: str) -> None:
    """A message with nothing after the mention asks for help."""
    assert parse(text) == Command("help", [])


def test_parse_suggests_the_closest_command_for_a_typo() -> None:
    """An unknown first word raises UnknownCommand suggesting `lock` for `lokc`."""
    with pytest.raises(UnknownCommand) as caught:
        parse("lokc backend")

    assert caught.value.suggestions[0] == "lock"


def test_parse_refuses_text_over_the_limit() -> None:
    """Text longer than the limit is refused before it is split."""
    with pytest.raises(UsageError, match="4000"):
        parse("lock backend " + "x" * 4000)


# lock


async def test_lock_reply_names_holder_note_expiry_and_token(
    commands: CommandHandler, store: Store
) -> None:
    """`lock backend 30m hotfix for INC-12` shows holder, note, clock time, time left, token."""
    reply, text = await say(commands, "@deploybot lock backend 30m hotfix for INC-12")

    lease = await store.get(LeaseKind.LOCK, "backend")
    assert reply.ok is True
    assert lease is not None
    assert lease.holder.user_id == "U_ALICE"
    assert lease.note == "hotfix for INC-12"
    when = next(part for part in reply.parts if isinstance(part, When))
    assert when.at_ms == lease.expires_at
    assert "Alice" in text
    assert "hotfix for INC-12" in text
    assert clock_time(when.at_ms, when.now_ms, None) in text
    assert "in 30 minutes" in text
    assert str(lease.token) in text
    assert [held.name for held in reply.leases] == ["backend"]


@pytest.mark.parametrize(
    ("take", "wrong", "hint"),
    [
        ("lock web5", "release web5", "There is a deploy lock on it: `unlock web5`."),
        ("claim web5", "unlock web5", "There is a staging claim on it: `release web5`."),
    ],
)
async def test_releasing_with_the_other_verb_points_to_the_right_one(
    commands: CommandHandler, store: Store, take: str, wrong: str, hint: str
) -> None:
    """`release` of a name that is locked (or `unlock` of a claimed one) frees nothing and
    says which verb would."""
    await say(commands, take)
    before = await snapshot(store)

    reply, text = await say(commands, wrong)

    assert_polite_refusal(reply, text)
    assert "is not held by anyone right now; nothing changed." in text
    assert text.endswith(hint)
    assert await snapshot(store) == before


async def test_lock_again_by_the_holder_refreshes_with_the_same_token(
    commands: CommandHandler, store: Store
) -> None:
    """The holder locking again refreshes the lease and keeps its token."""
    await say(commands, "lock backend 30m first")
    first = await store.get(LeaseKind.LOCK, "backend")

    reply, text = await say(commands, "lock backend 2h")

    again = await store.get(LeaseKind.LOCK, "backend")
    assert reply.ok is True
    assert first is not None and again is not None
    assert again.token == first.token
    assert again.expires_at > first.expires_at
    assert "in 2 hours" in text


async def test_lock_held_by_someone_else_is_refused_with_holder_details(
    commands: CommandHandler, store: Store
) -> None:
    """Bob's `lock backend` names Alice, her note, since and until, and changes nothing."""
    await say(commands, "lock backend 30m hotfix for INC-12")
    before = await snapshot(store)

    reply, text = await say(commands, "lock backend 1h mine now", who="bob")

    assert_polite_refusal(reply, text)
    assert "Alice" in text
    assert "hotfix for INC-12" in text
    assert "since" in text
    assert "until" in text
    assert "in 30 minutes" in text
    assert await snapshot(store) == before


# claim


@pytest.mark.parametrize(
    ("text", "note", "time_left"),
    [
        ("claim staging-2 feature/x 2h", "feature/x", "in 2 hours"),
        ("claim staging-2 2h", "", "in 2 hours"),
        ("claim staging-2 feature/x", "feature/x", "in 4 hours"),
    ],
)
async def test_claim_takes_optional_branch_and_duration(
    commands: CommandHandler, store: Store, text: str, note: str, time_left: str
) -> None:
    """`claim <env> [branch] [duration]`: the branch becomes the note; claims default to 4h."""
    reply, rendered = await say(commands, text)

    lease = await store.get(LeaseKind.CLAIM, "staging-2")
    assert reply.ok is True
    assert lease is not None
    assert lease.note == note
    assert "Alice" in rendered
    assert time_left in rendered
    assert str(lease.token) in rendered


async def test_claim_keeps_a_branch_that_starts_with_a_digit(
    commands: CommandHandler, store: Store
) -> None:
    """A branch such as `1234-fix-login` (GitLab's issue branches) is a branch, not a duration."""
    reply, text = await say(commands, "claim staging-2 1234-fix-login")

    lease = await store.get(LeaseKind.CLAIM, "staging-2")
    assert reply.ok is True, text
    assert lease is not None
    assert lease.note == "1234-fix-login"


async def test_release_by_the_holder_frees_the_claim(
    commands: CommandHandler, store: Store
) -> None:
    """The holder's `release staging-2` frees it and says so."""
    await say(commands, "claim staging-2 feature/x")

    reply, text = await say(commands, "release staging-2")

    assert reply.ok is True
    assert "Alice released `staging-2`" in text
    assert await store.get(LeaseKind.CLAIM, "staging-2") is None


# unlock


async def test_unlock_by_the_holder_frees_the_lock(commands: CommandHandler, store: Store) -> None:
    """The holder's `unlock backend` frees the lock."""
    await say(commands, "lock backend")

    reply, text = await say(commands, "unlock backend")

    assert reply.ok is True
    assert "Alice unlocked `backend`" in text
    assert await store.get(LeaseKind.LOCK, "backend") is None


async def test_unlock_by_someone_else_is_refused_naming_the_holder(
    commands: CommandHandler, store: Store
) -> None:
    """Bob's `unlock backend` is refused, names Alice, and leaves her lock alone."""
    await say(commands, "lock backend 30m hotfix")
    before = await snapshot(store)

    reply, text = await say(commands, "unlock backend", who="bob")

    assert_polite_refusal(reply, text)
    assert "Alice" in text
    assert await snapshot(store) == before


async def test_unlock_without_a_service_asks_which_listing_what_the_sender_holds(
    commands: CommandHandler, store: Store
) -> None:
    """A bare `unlock` releases nothing and asks which, naming the sender's own locks."""
    await say(commands, "lock backend")
    await say(commands, "lock frontend")
    await say(commands, "lock api", who="bob")
    await say(commands, "claim staging-2")
    before = await snapshot(store)

    reply, text = await say(commands, "unlock")

    assert_polite_refusal(reply, text)
    assert "`backend`" in text
    assert "`frontend`" in text
    assert "api" not in text
    assert "staging-2" not in text
    assert await snapshot(store) == before


async def test_a_lock_on_a_duration_is_refused_so_unlock_never_suggests_one(
    commands: CommandHandler, store: Store
) -> None:
    """`lock 1h` and `queue 5m` take no lease called `1h` or `5m`; a bare `unlock` then
    suggests a real service, not a duration."""
    await say(commands, "lock backend")
    before = await snapshot(store)

    lock, lock_text = await say(commands, "lock 1h")
    queue, queue_text = await say(commands, "queue 5m", who="bob")
    _, unlock_text = await say(commands, "unlock")

    assert_polite_refusal(lock, lock_text)
    assert_polite_refusal(queue, queue_text)
    assert "`queue <service> 5m`" in queue_text
    assert await snapshot(store) == before
    assert "e.g. `unlock backend`" in unlock_text


async def test_unlock_without_a_service_holding_nothing_still_asks_politely(
    commands: CommandHandler, store: Store
) -> None:
    """A bare `unlock` from someone holding nothing gets the usage, and nothing changes."""
    await say(commands, "lock backend")
    before = await snapshot(store)

    reply, text = await say(commands, "unlock", who="bob")

    assert_polite_refusal(reply, text)
    assert "unlock" in text
    assert "hold" not in text
    assert await snapshot(store) == before


# extend


async def test_extend_without_a_duration_uses_the_default(
    commands: CommandHandler, store: Store
) -> None:
    """`extend backend` moves the expiry to now + the lock default (1h), same token."""
    await say(commands, "lock backend 5m")
    before = await store.get(LeaseKind.LOCK, "backend")

    reply, text = await say(commands, "extend backend")

    after = await store.get(LeaseKind.LOCK, "backend")
    assert reply.ok is True
    assert before is not None and after is not None
    assert after.token == before.token
    assert after.expires_at > before.expires_at
    assert "in 1 hour" in text
    assert "Alice" in text


async def test_extend_with_a_duration_uses_it(commands: CommandHandler, store: Store) -> None:
    """`extend backend 3h` moves the expiry to now + 3h."""
    await say(commands, "lock backend 5m")

    reply, text = await say(commands, "extend backend 3h")

    lease = await store.get(LeaseKind.LOCK, "backend")
    assert reply.ok is True
    assert lease is not None
    assert 3 * 3600_000 - 5_000 <= lease.expires_at - lease.acquired_at <= 3 * 3600_000 + 5_000
    assert "in 3 hours" in text


# status, history, jobs


async def test_status_lists_locks_and_claims_with_details(commands: CommandHandler) -> None:
    """`status` shows every lock and claim with holder, note, time left and token."""
    lock_reply, _ = await say(commands, "lock backend 30m hotfix")
    await say(commands, "claim staging-2 feature/x 2h", who="bob")

    reply, text = await say(commands, "status")

    token = lock_reply.leases[0].token
    assert reply.ok is True
    assert "Deploy locks:" in text
    assert "Staging claims:" in text
    assert re.search(rf"`backend` — Alice until .*\(in 30 minutes\): hotfix .*{token}", text)
    assert re.search(r"`staging-2` — Bob until .*\(in 2 hours\): feature/x", text)


@pytest.mark.parametrize(
    ("text", "shown", "hidden"),
    [
        ("locks", "backend", "staging-2"),
        ("envs", "staging-2", "backend"),
        ("status backend", "backend", "staging-2"),
        ("status staging-2", "staging-2", "backend"),
    ],
)
async def test_status_narrows_to_a_kind_or_a_name(
    commands: CommandHandler, text: str, shown: str, hidden: str
) -> None:
    """`locks`, `envs` and `status <name>` show only what was asked for."""
    await say(commands, "lock backend")
    await say(commands, "claim staging-2")

    reply, rendered = await say(commands, text)

    assert reply.ok is True
    assert f"`{shown}`" in rendered
    assert hidden not in rendered


async def test_status_shows_listed_names_nobody_holds_as_free(team: CommandHandler) -> None:
    """With services listed, `status` names the free ones too."""
    await say(team, "lock backend")

    _, text = await say(team, "status")

    assert re.search(r"free: .*frontend", text)
    assert re.search(r"free: .*staging-1", text)


async def test_status_with_nothing_held_says_so(commands: CommandHandler) -> None:
    """`status <name>` for a free name answers that nothing by that name is held."""
    reply, text = await say(commands, "status backend")

    assert reply.ok is True
    assert "Nothing by that name" in text


async def test_history_lists_events_newest_first(commands: CommandHandler) -> None:
    """`history backend` lists acquired, extended and released, newest first, with holders."""
    await say(commands, "lock backend 30m hotfix")
    await say(commands, "extend backend 1h")
    await say(commands, "unlock backend")

    reply, text = await say(commands, "history backend")

    lines = text.splitlines()
    assert reply.ok is True
    assert "backend" in lines[0]
    assert [line.split(")", 1)[1].split()[0] for line in lines[1:]] == [
        "released",
        "extended",
        "acquired",
    ]
    assert all("Alice" in line for line in lines[1:])


async def test_history_of_a_name_never_used_says_so(commands: CommandHandler) -> None:
    """`history` of an untouched name says there is none yet."""
    reply, text = await say(commands, "history backend")

    assert reply.ok is True
    assert "No history for `backend`" in text


async def test_jobs_and_job_show_statuses_set_by_a_pipeline(
    commands: CommandHandler, jobs: JobService
) -> None:
    """`jobs` and `job <name>` show what a pipeline recorded through the JobService."""
    await jobs.set(
        "api/build#42",
        "running",
        updated_by="ci-bot",
        url="https://ci.example/42",
        detail="step 3 of 5",
    )

    list_reply, list_text = await say(commands, "jobs")
    one_reply, one_text = await say(commands, "job API/Build#42")

    assert list_reply.ok is True
    assert one_reply.ok is True
    for text in (list_text, one_text):
        assert "`api/build#42` running" in text
        assert "ci-bot" in text
        assert "step 3 of 5" in text
        assert "https://ci.example/42" in text


async def test_jobs_with_none_reported_says_so(commands: CommandHandler) -> None:
    """`jobs` with nothing recorded says there are none."""
    reply, text = await say(commands, "jobs")

    assert reply.ok is True
    assert text == "No jobs reported."


async def test_job_never_reported_is_a_polite_refusal(commands: CommandHandler) -> None:
    """`job <name>` for an unknown job says so."""
    reply, text = await say(commands, "job nightly")

    assert_polite_refusal(reply, text)
    assert "nightly" in text


# force


async def test_force_unlock_by_a_non_admin_is_refused(team: CommandHandler, store: Store) -> None:
    """Bob, no admin, cannot force-unlock Alice's lock; nothing changes."""
    await say(team, "lock backend 30m hotfix")
    before = await snapshot(store)

    reply, text = await say(team, "force-unlock backend it is stuck", who="bob")

    assert_polite_refusal(reply, text)
    assert "admin" in text
    assert await snapshot(store) == before


async def test_force_unlock_by_an_admin_frees_it_and_history_shows_who_and_why(
    team: CommandHandler, store: Store
) -> None:
    """An admin's force-unlock frees the lock; history names the admin, the reason, the holder."""
    await say(team, "lock backend 30m hotfix")

    reply, text = await say(team, "force-unlock backend deploy is stuck", who="admin")
    _, history = await say(team, "history backend", who="bob")

    assert reply.ok is True
    assert "Alice" in text
    assert "Ada" in text
    assert "deploy is stuck" in text
    assert await store.get(LeaseKind.LOCK, "backend") is None
    newest = history.splitlines()[1]
    assert "forced" in newest
    assert "Ada" in newest
    assert "deploy is stuck" in newest
    assert "Alice" in newest


async def test_force_release_by_an_admin_frees_a_claim(team: CommandHandler, store: Store) -> None:
    """An admin's force-release frees someone's staging claim."""
    await say(team, "claim staging-2 feature/x")

    reply, _ = await say(team, "force-release staging-2 env needed for the demo", who="admin")

    assert reply.ok is True
    assert await store.get(LeaseKind.CLAIM, "staging-2") is None


# help


async def test_help_lists_every_command(commands: CommandHandler) -> None:
    """`help` lists each command's usage and the duration format."""
    reply, text = await say(commands, "help")

    assert reply.ok is True
    for word in ("lock <service>", "unlock", "claim <env>", "release", "extend", "status"):
        assert word in text
    for word in ("history", "jobs", "job <name>", "force-unlock", "force-release", "help"):
        assert word in text
    assert "1h30m" in text


async def test_empty_message_answers_with_help(commands: CommandHandler) -> None:
    """A bare mention gets the command list."""
    reply, text = await say(commands, "<@U123>")

    assert reply.ok is True
    assert "Commands" in text


async def test_help_for_one_command_shows_its_usage(commands: CommandHandler) -> None:
    """`help lock` shows lock's usage and how durations look."""
    reply, text = await say(commands, "help lock")

    assert reply.ok is True
    assert "lock <service> [duration] [note...]" in text
    assert "30m" in text
    assert "claim" not in text


# bad input

# (sender, text, words the reply must contain). Alice holds backend and staging-2; a job
# `api/build#42` is recorded; the team lists its services and environments.
BAD_INPUTS = [
    ("alice", "lokc backend", ["`lock`"]),
    ("alice", "deploy backend", ["help"]),
    ("alice", "help lokc", ["`lock`"]),
    ("bob", "lock", ["service", "lock <service>"]),
    ("bob", "claim", ["claim <env>"]),
    ("bob", "force-unlock", ["force-unlock <service>"]),
    ("bob", "force-release", ["force-release <env>"]),
    ("bob", "history", ["history backend"]),
    ("bob", "job", ["job"]),
    ("bob", "release", ["release"]),
    ("bob", "extend", ["extend"]),
    ("bob", "status backend frontend", ["one name"]),
    ("bob", "history backend frontend", ["one name"]),
    ("bob", "jobs nightly", ["job <name>"]),
    ("bob", "unlock backend frontend", ["one name"]),
    ("alice", "extend backend 1h extra", ["extend backend 30m"]),
    ("bob", "lock frontend 5x", ["5x", "30m"]),
    ("bob", "lock frontend 1h30", ["1h30"]),
    ("bob", "lock frontend 0m", ["0m", "positive"]),
    ("bob", "lock frontend 0", ["`0`", "30m"]),
    ("bob", "lock frontend -5m", ["-5m", "positive"]),
    ("bob", "lock frontend 30s", ["30s", "1 minute"]),
    ("bob", "lock frontend 2d", ["2d", "1 day"]),
    ("bob", "lock frontend 99999999999999999999d", ["too long"]),
    ("bob", "claim staging-1 feature/x 8d", ["8d", "7 days"]),
    ("bob", "claim staging-1 feature/x -1h", ["positive"]),
    ("alice", "extend backend 5x", ["5x"]),
    ("alice", "extend backend 0m", ["positive"]),
    ("alice", "extend backend 25h", ["25h", "1 day"]),
    ("alice", "extend staging-2 30d", ["30d", "7 days"]),
    ("bob", "lock 1h", ["`1h` looks like a duration, not a service name", "`lock <service> 1h`"]),
    ("bob", "lock 5m frontend", ["`5m` looks like a duration", "`lock <service> 5m`"]),
    ("bob", "claim 2h", ["`2h` looks like a duration, not an environment", "`claim <env> 2h`"]),
    ("bob", "lock bad/name", ["bad/name", "letters, digits"]),
    ("bob", "lock front;end", ["front;end"]),
    ("bob", "claim {staging}:x", ["{staging}:x"]),
    ("bob", "lock " + "a" * 65, ["at most 64"]),
    ("bob", "lock backedn", ["backedn", "`backend`"]),
    ("bob", "lock staging-1", ["staging-1"]),
    ("bob", "claim staging-9", ["staging-9", "staging-"]),
    ("bob", "claim backend", ["backend"]),
    ("bob", "status nope!", ["nope!"]),
    ("bob", "history backedn", ["`backend`"]),
    ("bob", "job two words", ["job"]),
    ("bob", "job bad!name", ["bad!name", "job"]),
    ("bob", "lock backend", ["Alice", "hotfix"]),
    ("bob", "claim staging-2 feature/y", ["Alice", "feature/x"]),
    ("bob", "unlock backend", ["Alice"]),
    ("bob", "release staging-2", ["Alice"]),
    ("bob", "extend backend", ["Alice"]),
    ("bob", "extend staging-2 1h", ["Alice"]),
    ("bob", "unlock frontend", ["frontend", "not held"]),
    ("bob", "release staging-1", ["staging-1", "not held"]),
    ("bob", "extend frontend", ["frontend"]),
    ("bob", "force-unlock backend it is stuck", ["admin"]),
    ("bob", "force-release staging-2 need it", ["admin"]),
    ("alice", "force-unlock backend mine anyway", ["admin"]),
    ("admin", "force-unlock backend", ["why"]),
    ("admin", "force-unlock frontend nobody holds it", ["frontend", "not held"]),
    ("bob", "lock frontend 1h " + "n" * 501, ["note", "500"]),
    ("bob", "x" * 4001, ["4001", "4000"]),
    ("bob", "lock frontend 1h " + "n" * 4000, ["4000"]),
]


@pytest.mark.parametrize(("who", "text", "expected"), BAD_INPUTS)
async def test_bad_input_gets_a_polite_reply_and_changes_nothing(
    team: CommandHandler,
    store: Store,
    jobs: JobService,
    who: str,
    text: str,
    expected: list[str],
) -> None:
    """Every bad input from the issue is refused politely, says what works, changes nothing."""
    await say(team, "lock backend 30m hotfix")
    await say(team, "claim staging-2 feature/x")
    await jobs.set("api/build#42", "running", updated_by="ci-bot")
    before = await snapshot(store)

    reply, rendered = await say(team, text, who=who)

    assert_polite_refusal(reply, rendered)
    for words in expected:
        assert words in rendered
    assert len(rendered) < 600
    assert await snapshot(store) == before


@pytest.mark.parametrize(
    "text",
    ["lock backend", "unlock backend", "unlock", "extend backend", "claim staging-2", "status"],
)
async def test_unreachable_store_says_state_store_unavailable_nothing_changed(
    unreachable: CommandHandler, text: str
) -> None:
    """With Redis unreachable, every state command says the state store is unavailable."""
    reply, rendered = await asyncio.wait_for(say(unreachable, text), timeout=15)

    assert_polite_refusal(reply, rendered)
    assert "state store" in rendered
    assert "unavailable" in rendered
    assert "nothing changed" in rendered


async def test_unreachable_store_still_answers_help(unreachable: CommandHandler) -> None:
    """`help` needs no Redis, so it still works during an outage."""
    reply, text = await say(unreachable, "help")

    assert reply.ok is True
    assert "Commands" in text


async def _corrupt_lock(store: Store, name: str) -> str:
    """Overwrite a lock's record (and its index entry) with text that is not JSON."""
    key = store.key("lease", "lock", name)
    await store.redis.set(key, "{not json")
    await store.redis.hset(store.key("leases"), f"lock:{name}", "{not json")
    return key


@pytest.mark.parametrize(
    ("who", "text"),
    [
        ("alice", "lock backend"),
        ("alice", "unlock backend"),
        ("alice", "extend backend"),
        ("bob", "lock backend 30m mine"),
    ],
)
async def test_corrupt_lease_record_is_reported_not_crashed(
    commands: CommandHandler, store: Store, who: str, text: str
) -> None:
    """A lease value that is not JSON is reported as corrupt and left untouched."""
    key = await _corrupt_lock(store, "backend")
    before = await snapshot(store)

    reply, rendered = await say(commands, text, who=who)

    assert_polite_refusal(reply, rendered)
    assert "corrupt" in rendered
    assert "backend" in rendered
    assert await store.redis.get(key) == "{not json"
    assert await snapshot(store) == before


async def test_status_reports_a_corrupt_lease_and_lists_the_rest(
    commands: CommandHandler, store: Store
) -> None:
    """`status` lists readable leases and flags the corrupt one instead of failing."""
    await say(commands, "lock frontend 30m fine")
    await _corrupt_lock(store, "backend")

    reply, text = await say(commands, "status")

    assert reply.ok is True
    assert "frontend" in text
    assert re.search(r"backend.*corrupt", text)


async def test_status_lists_a_corrupt_lock_under_deploy_locks(
    commands: CommandHandler, store: Store
) -> None:
    """A corrupt lock record is flagged among the deploy locks, not under the staging claims."""
    await _corrupt_lock(store, "backend")

    _, text = await say(commands, "status")

    claims_at = text.index("Staging claims:")
    corrupt_at = text.index("corrupt")
    assert corrupt_at < claims_at, text


async def test_force_unlock_by_an_admin_clears_a_corrupt_record(
    team: CommandHandler, store: Store
) -> None:
    """Force-unlock is the way out of a corrupt record; afterwards the lock can be taken."""
    await _corrupt_lock(store, "backend")

    forced, _ = await say(team, "force-unlock backend record was damaged", who="admin")
    relock, _ = await say(team, "lock backend", who="bob")

    assert forced.ok is True
    assert relock.ok is True


async def test_crash_gets_a_ref_id_and_the_log_gets_the_stack_trace(
    commands: CommandHandler,
    leases: LeaseService,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected exception: the user sees a ref id only; the log has the stack trace."""

    async def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(leases, "acquire", explode)
    caplog.set_level(logging.INFO, logger="bot.commands")

    reply, text = await say(commands, "lock backend")

    match = re.fullmatch(r"Something went wrong.*\(ref ([0-9a-f]{6})\).*", text)
    assert reply.ok is False
    assert match is not None, text
    assert "secret detail" not in text
    assert "RuntimeError" not in text
    assert "Traceback" not in text
    crashes = [record for record in caplog.records if record.exc_info]
    assert len(crashes) == 1
    assert match.group(1) in crashes[0].getMessage()
    assert "secret detail" in caplog.text
    assert "Traceback" in caplog.text


async def test_text_with_an_unencodable_character_gets_a_polite_reply(
    commands: CommandHandler, store: Store
) -> None:
    """A lone UTF-16 surrogate (valid in JSON, not in UTF-8) is refused, not a crash."""
    reply, text = await say(commands, "lock backend 30m fix \ud800 login")

    assert CRASH_TEXT not in text
    assert reply.ok is False or await store.get(LeaseKind.LOCK, "backend") is not None


# Command-shaped text reaches deeper than random text: known words, names and durations.
_WORDS = [
    *("lock", "unlock", "claim", "release", "extend", "status", "locks", "envs"),
    *("history", "jobs", "job", "force-unlock", "force-release", "help", "LOCK", "lokc"),
]
_ARGS = [
    *("backend", "staging-2", "api/build#42", "feature/x", "30m", "0m", "-5m", "1h30m"),
    *("99999d", "1:00", "1e400", "nan", "<@U123>", "`x`", "{deploybot}", "a" * 65),
]
_PREFIXES = ["", "@deploybot ", "<@U123> ", "<@U123|deploybot>: ", "@deploybot, "]

_argument = st.one_of(
    st.sampled_from(_ARGS),
    st.from_regex(r"[+-]?[0-9]{1,8}(\.[0-9]{1,3})?[smhdw]?", fullmatch=True),
    st.text(max_size=20),
)
_command_text = st.builds(
    lambda prefix, word, args: prefix + " ".join([word, *args]),
    st.sampled_from(_PREFIXES),
    st.sampled_from(_WORDS),
    st.lists(_argument, max_size=5),
)


def test_arbitrary_text_never_crashes_the_handler(redis_server_url: str) -> None:
    """Whatever text arrives, handle() answers with a reply, never with a crash."""
    namespace = "t-" + secrets.token_hex(6)
    settings = Settings(namespace=namespace, admins=["slack:U_ADMIN"])

    with asyncio.Runner() as runner:
        store = Store(connect(redis_server_url), namespace=namespace)
        leases = LeaseService(store, settings)
        handler = CommandHandler(leases, JobService(store, settings), settings)

        @hypothesis_settings(
            max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        )
        @given(
            text=st.one_of(st.text(max_size=300), _command_text),
            who=st.sampled_from(sorted(PEOPLE)),
        )
        def answers(text: str, who: str) -> None:
            reply = runner.run(handler.handle(message(text, who)))
            rendered = render_plain(reply.parts)

            assert CRASH_TEXT not in rendered, (text, rendered)
            assert "Traceback" not in rendered
            assert rendered.strip()

        try:
            answers()
        finally:
            runner.run(store.close())


async def test_status_lists_at_most_a_page_and_says_how_many_more(
    commands: CommandHandler, store: Store
) -> None:
    """With more leases than a chat page holds, status shows a page and counts the rest."""
    from bot.commands import STATUS_LIMIT
    from bot.model import Holder

    holder = Holder("local", "alice", "alice")
    for i in range(STATUS_LIMIT + 5):
        await store.acquire(LeaseKind.LOCK, f"svc-{i:03d}", holder, ttl_ms=600_000)

    reply = await commands.handle(Message("local", "bob", "bob", "console", "status"))
    text = render_plain(reply.parts)

    assert text.count("`svc-") == STATUS_LIMIT
    assert "and 5 more" in text
    one = render_plain(
        (await commands.handle(Message("local", "b", "b", "c", "status svc-054"))).parts
    )
    assert "`svc-054`" in one


def _left_out(section: str, kind: str) -> int:
    """The count on a section's `…and 7 more locks` (or `3 claims not listed`) line, or 0."""
    found = re.findall(rf"(\d+) (?:more )?{kind}s?\b.*`status <name>`", section)
    assert len(found) <= 1, section
    return int(found[0]) if found else 0


@pytest.mark.parametrize(("locks", "claims"), [(204, 2), (3, 55)], ids=["locks", "claims"])
@pytest.mark.parametrize("text", ["status", "locks", "envs"])
async def test_a_long_status_counts_what_it_left_out_under_the_right_kind(
    commands: CommandHandler, store: Store, locks: int, claims: int, text: str
) -> None:
    """However a page is split between locks and claims, each section shows some and counts
    the rest of its own kind; `envs` and `locks` show and count only their kind."""
    from bot.commands import STATUS_LIMIT
    from bot.model import Holder

    holder = Holder("local", "alice", "alice")
    for i in range(locks):
        await store.acquire(LeaseKind.LOCK, f"svc-{i:03d}", holder, ttl_ms=600_000)
    for i in range(claims):
        await store.acquire(LeaseKind.CLAIM, f"env-{i:03d}", holder, ttl_ms=600_000)

    reply = await commands.handle(Message("local", "bob", "bob", "console", text))
    rendered = render_plain(reply.parts)

    locks_part, _, claims_part = rendered.partition("Staging claims:")
    assert rendered.count("`svc-") + rendered.count("`env-") <= STATUS_LIMIT
    if text != "envs":
        assert locks_part.count("`svc-") + _left_out(locks_part, "lock") == locks, rendered
        assert "none" not in locks_part
    if text != "locks":
        assert claims_part.count("`env-") + _left_out(claims_part, "claim") == claims, rendered
        assert "none" not in claims_part
    assert "`svc-" not in claims_part
    assert _left_out(claims_part, "lock") == 0
    assert _left_out(locks_part, "claim") == 0
    counted = bool(_left_out(locks_part, "lock")) + bool(_left_out(claims_part, "claim"))
    assert rendered.count("`status <name>`") == counted, rendered
    if text == "status":  # the page is shared: neither kind hides the other
        assert locks_part.count("`svc-") >= min(locks, STATUS_LIMIT // 2), rendered
        assert claims_part.count("`env-") >= min(claims, STATUS_LIMIT // 2), rendered
        assert rendered.count("`svc-") + rendered.count("`env-") == STATUS_LIMIT
    if text == "locks":  # a page of its own kind, however many claims sort first
        assert locks_part.count("`svc-") == min(STATUS_LIMIT, locks), rendered
    if text == "envs":
        assert claims_part.count("`env-") == min(STATUS_LIMIT, claims), rendered
