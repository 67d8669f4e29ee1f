"""Graceful shutdown of `deploybot run`: SIGTERM stops taking events, finishes the work in
hand, closes the connections and exits 0 within 10 seconds, losing nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web
from fake_slack import BOT_USER_ID, FakeSlack
from test_announcer import ORIGIN, drained, wait_for

from bot.announcer import GROUP
from bot.config import Settings
from bot.model import Holder, LeaseKind
from bot.store import LeasePolicy, Store, connect

DEPLOYBOT = Path(sys.executable).parent / "deploybot"
CHANNEL = "C0DEPLOY"
# The bound: from SIGTERM to exit.
EXIT_WITHIN_S = 10.0
# What deploybot logs while it lets a command in progress finish.
WAITING = "slack finishing commands in_flight=1"


class GatedSlack(FakeSlack):
    """A fake Slack that holds users.info requests until the test opens the gate.

    deploybot looks up a person's display name before it runs their first command, so a held
    lookup is a command in progress, for as long as the test wants.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.held = 0

    async def _handle_api(self, request: web.Request) -> web.Response:
        if request.match_info["method"] == "users.info" and not self.gate.is_set():
            self.held += 1
            await self.gate.wait()
        return await super()._handle_api(request)


@asynccontextmanager
async def deploybot_run(
    fake: FakeSlack, redis_url: str, namespace: str, tmp_path: Path, name: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`deploybot run` serving the fake Slack; its stderr goes to tmp_path/<name>.log.

    The body sends the signal and waits for the exit; leaving it kills a process still
    running, so a failing test never leaves one behind.
    """
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DEPLOYBOT_NAMESPACE": namespace,
        "DEPLOYBOT_HTTP_PORT": "0",
        "DEPLOYBOT_SWEEP_INTERVAL_S": "0.1",
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_APP_TOKEN": "xapp-test",
        "SLACK_API_URL": fake.api_url,
    }
    with (tmp_path / f"{name}.log").open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            str(DEPLOYBOT), "-v", "run", cwd=tmp_path, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def terminate(process: asyncio.subprocess.Process, log: Path) -> None:
    """SIGTERM, then expect exit status 0 within the issue's 10 seconds."""
    process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.wait(), timeout=EXIT_WITHIN_S)
    assert process.returncode == 0, read(log)


def read(log: Path) -> str:
    return log.read_text()


async def test_a_command_in_progress_is_answered_before_exit(
    redis_server_url: str, namespace: str, store: Store, tmp_path: Path
) -> None:
    """SIGTERM while a mention is being handled: the socket closes first (no new events),
    the command completes and its reply is posted, then deploybot exits 0."""
    log = tmp_path / "run.log"
    async with GatedSlack() as fake:
        fake.add_user("UALICE", "alice", "Alice")
        async with deploybot_run(fake, redis_server_url, namespace, tmp_path, "run") as bot:
            await fake.wait_for_connections(1, timeout=20)
            event = fake.app_mention_event(
                user_id="UALICE", channel_id=CHANNEL, text=f"<@{BOT_USER_ID}> lock backend"
            )
            await fake.send_events_api(event)
            await wait_for(lambda: fake.held == 1, "the command to be in progress")

            bot.send_signal(signal.SIGTERM)
            await wait_for(lambda: fake.connection_count == 0, "the socket to be closed")
            await wait_for(lambda: WAITING in read(log), "deploybot to wait for the command")
            fake.gate.set()
            reply = await fake.wait_for_call("chat.postMessage", timeout=EXIT_WITHIN_S)
            await asyncio.wait_for(bot.wait(), timeout=EXIT_WITHIN_S)

    assert bot.returncode == 0, read(log)
    assert "<@UALICE> locked `backend`" in reply["text"]
    lease = await store.get(LeaseKind.LOCK, "backend")
    assert lease is not None and lease.holder.user_id == "UALICE"
    assert "xoxb-test" not in read(log) and "xapp-test" not in read(log)


async def test_sigterm_during_a_backlog_of_expiries_loses_and_repeats_nothing(
    redis_server_url: str, settings: Settings, tmp_path: Path
) -> None:
    """Hundreds of expiries fall due while no bot runs. SIGTERM as soon as the first is
    announced: exit 0; after a restart every expiry has been announced exactly once."""
    count = 600  # more than one sweep batch (500)
    store = Store(
        connect(redis_server_url),
        namespace=settings.namespace,
        policy=LeasePolicy(reminder_offsets_ms=()),
    )
    # DMs to a console user are skipped when only Slack runs: one channel post per expiry.
    holder = Holder("local", "alice", "alice")
    try:
        await store.ensure_event_group(GROUP)
        for number in range(count):
            await store.acquire(
                LeaseKind.LOCK, f"svc-{number:03}", holder, ttl_ms=500, origin=ORIGIN, via=ORIGIN
            )
        last_due = await store.now_ms() + 500
        await wait_for(lambda: _after(store, last_due), "every lease to fall due")

        async with FakeSlack() as fake:
            first, second = tmp_path / "first.log", tmp_path / "second.log"
            args = (fake, redis_server_url, settings.namespace, tmp_path)
            async with deploybot_run(*args, "first") as bot:
                await fake.wait_for_call("chat.postMessage", timeout=20)
                await terminate(bot, first)
            announced_before_restart = len(expiries(fake))

            async with deploybot_run(*args, "second") as bot:
                await wait_for(lambda: len(expiries(fake)) >= count, "every expiry", limit=30)
                await wait_for(lambda: drained(store), "the announcer to catch up")
                await terminate(bot, second)

            names = [text.split("`")[1] for text in expiries(fake)]
    finally:
        await store.close()

    assert 0 < announced_before_restart < count, "SIGTERM came too late to test anything"
    assert sorted(names) == [f"svc-{number:03}" for number in range(count)]
    assert await _timeline_empty(redis_server_url, settings.namespace)


def expiries(fake: FakeSlack) -> list[str]:
    """The texts of expiry announcements posted so far."""
    return [
        str(call["text"])
        for call in fake.calls_to("chat.postMessage")
        if "auto-released" in str(call.get("text", ""))
    ]


async def _after(store: Store, at_ms: int) -> bool:
    return await store.now_ms() > at_ms


async def _timeline_empty(url: str, namespace: str) -> bool:
    check = Store(connect(url), namespace=namespace)
    try:
        return int(await check.redis.zcard(check.key("timeline"))) == 0
    finally:
        await check.close()


async def test_sigterm_in_console_mode_exits_0(
    redis_server_url: str, namespace: str, tmp_path: Path
) -> None:
    """Without chat credentials `deploybot run` serves the console; SIGTERM ends it with 0."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLACK_", "MATTERMOST_"))
    } | {"REDIS_URL": redis_server_url, "DEPLOYBOT_NAMESPACE": namespace}
    env["DEPLOYBOT_HTTP_PORT"] = "0"
    process = await asyncio.create_subprocess_exec(
        str(DEPLOYBOT), "run", "--as", "alice", cwd=tmp_path, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b"lock backend\n")
    await process.stdin.drain()
    line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
    assert b"alice locked `backend`" in line

    process.send_signal(signal.SIGTERM)
    _out, err = await asyncio.wait_for(process.communicate(), timeout=EXIT_WITHIN_S)

    assert process.returncode == 0, err.decode()
