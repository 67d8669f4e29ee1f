"""Tests for adapters.console: a chat in the terminal, scripted through stdin."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
from pathlib import Path

from test_announcer import cli_env

from adapters.console import ConsoleAdapter
from bot.commands import CommandHandler
from bot.model import LeaseKind
from bot.store import Store

DEPLOYBOT = Path(sys.executable).parent / "deploybot"


async def chat(commands: CommandHandler, script: str, user: str = "alice") -> list[str]:
    """Feed `script` to a console session as `user`; return the output lines."""
    stdin, stdout = io.StringIO(script), io.StringIO()
    adapter = ConsoleAdapter(commands, user=user, stdin=stdin, stdout=stdout)

    await asyncio.wait_for(adapter.run(), timeout=15)

    return stdout.getvalue().splitlines()


async def test_each_line_gets_one_reply(commands: CommandHandler) -> None:
    """Each scripted line is a message and gets exactly one reply, in order."""
    script = "lock backend 30m hotfix\nlock backend 30m\nunlock backend\njobs\n"

    lines = await chat(commands, script)

    assert len(lines) == 4
    assert re.match(r"alice locked `backend` until .*: hotfix\. Token `\d+`\.$", lines[0])
    assert lines[1].startswith("alice already held `backend`; refreshed until ")
    assert lines[2].startswith("alice unlocked `backend` after ")
    assert lines[3] == "No jobs reported."


async def test_blank_lines_are_ignored(commands: CommandHandler) -> None:
    """Empty and whitespace-only lines get no reply."""
    lines = await chat(commands, "\n   \nlock backend\n\t\n\nunlock backend\n\n")

    assert len(lines) == 2
    assert lines[0].startswith("alice locked `backend`")
    assert lines[1].startswith("alice unlocked `backend`")


async def test_last_line_without_a_newline_is_answered(commands: CommandHandler) -> None:
    """Input that ends without a newline still has its last line answered."""
    lines = await chat(commands, "lock backend\njobs")

    assert lines[-1] == "No jobs reported."


async def test_empty_input_ends_cleanly_without_output(commands: CommandHandler) -> None:
    """At immediate end of input the session ends and prints nothing (not a tty: no prompt)."""
    assert await chat(commands, "") == []


async def test_multi_line_reply_is_printed_whole(commands: CommandHandler) -> None:
    """A multi-line reply (help) is printed in full, followed by the next reply."""
    lines = await chat(commands, "help\njobs\n")

    assert lines[0].startswith("Commands")
    assert any("force-unlock" in line for line in lines)
    assert lines[-1] == "No jobs reported."


async def test_refusal_is_printed_as_a_reply(commands: CommandHandler) -> None:
    """Bad input gets its polite reply printed, and the session goes on."""
    lines = await chat(commands, "lokc backend\nlock backend 0m\njobs\n")

    assert len(lines) == 3
    assert "Did you mean `lock`" in lines[0]
    assert "positive" in lines[1]
    assert lines[2] == "No jobs reported."


async def test_console_acts_as_the_local_user(commands: CommandHandler, store: Store) -> None:
    """A console lock is held by `local:<name>`, the identity the CLI uses too."""
    await chat(commands, "lock backend\n", user="carol")

    lease = await store.get(LeaseKind.LOCK, "backend")
    assert lease is not None
    assert lease.holder.identity == "local:carol"
    assert lease.origin is None


def console_as_alice(
    redis_server_url: str, namespace: str, tmp_path: Path, script: str
) -> subprocess.CompletedProcess[str]:
    """`deploybot console --as alice` on the test server, with `script` piped in."""
    return subprocess.run(
        [str(DEPLOYBOT), "console", "--as", "alice"],
        input=script,
        capture_output=True,
        text=True,
        env=cli_env(redis_server_url, namespace, tmp_path),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_console_command_answers_piped_input_and_exits_at_eof(
    redis_server_url: str, namespace: str, tmp_path: Path
) -> None:
    """`deploybot console --as alice` with piped stdin prints each reply and exits 0 at EOF."""
    script = "lock backend 30m hotfix\n\nstatus\nunlock backend\nstatus backend\n"

    result = console_as_alice(redis_server_url, namespace, tmp_path, script)

    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert re.search(r"alice locked `backend` until .*: hotfix\. Token `\d+`\.", out)
    assert re.search(r"Deploy locks:\n  `backend` — alice until ", out)
    assert "alice unlocked `backend`" in out
    assert out.rstrip().endswith("Nothing by that name is locked or claimed right now.")
    assert "deploybot>" not in out
    assert "Traceback" not in result.stderr


def test_a_long_piped_script_is_not_rate_limited(
    redis_server_url: str, namespace: str, tmp_path: Path
) -> None:
    """More lines than the chat rate limit (30 a minute) are all answered, none refused."""
    result = console_as_alice(redis_server_url, namespace, tmp_path, "jobs\n" * 40)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["No jobs reported."] * 40
    assert "rate limited" not in result.stderr
