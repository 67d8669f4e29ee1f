"""End to end: the `deploybot` CLI on its embedded server, with no REDIS_URL at all."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from asyncio.subprocess import PIPE
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from servers import _free_port
from test_announcer import wait_for

from bot.embedded import server_running

DEPLOYBOT = Path(sys.executable).parent / "deploybot"

Run = Callable[..., subprocess.CompletedProcess[str]]
# What a running bot logs when it has started the embedded server again.
RESTARTED = "embedded server was not running; restarted"


def server_pids(data_dir: Path) -> list[int]:
    """Pids of processes whose command line names the data dir (the embedded server does)."""
    result = subprocess.run(
        ["pgrep", "-f", str(data_dir)], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in result.stdout.split()]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short data dir under /tmp (unix socket paths are length-limited)."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="dbe-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def embedded_env(data_dir: Path) -> dict[str, str]:
    """The environment with no REDIS_URL and no DEPLOYBOT_* settings but the data dir."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REDIS_URL", "REDIS_PASSWORD") and not key.startswith("DEPLOYBOT_")
    }
    return env | {"DEPLOYBOT_DATA_DIR": str(data_dir), "DEPLOYBOT_HTTP_PORT": "0"}


@pytest.fixture
def deploybot(data_dir: Path, embedded_env: dict[str, str], tmp_path: Path) -> Iterator[Run]:
    """Runs `deploybot` with no REDIS_URL; teardown always stops the server it started."""
    env = embedded_env

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DEPLOYBOT), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )

    try:
        yield run
    finally:
        run("server", "stop")
        # Only a server stuck past `server stop` is left here; it runs in our own data dir.
        for pid in server_pids(data_dir):
            os.kill(pid, signal.SIGKILL)


def test_lock_survives_an_embedded_server_restart(deploybot: Run, data_dir: Path) -> None:
    """Lock starts the server; status in another process sees it; it survives stop and restart."""
    locked = deploybot("lock", "backend", "--as", "alice", "--note", "INC-12", "--json")
    assert locked.returncode == 0, locked.stderr
    token = json.loads(locked.stdout)["token"]
    assert (data_dir / "redis.sock").exists()
    assert server_pids(data_dir)

    seen = deploybot("status", "--json")
    assert seen.returncode == 0, seen.stderr
    [lease] = json.loads(seen.stdout)["leases"]
    assert (lease["name"], lease["token"]) == ("backend", token)

    stopped = deploybot("server", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == "embedded server stopped"
    assert server_pids(data_dir) == []

    restarted = deploybot("status", "--json")
    assert restarted.returncode == 0, restarted.stderr
    [lease] = json.loads(restarted.stdout)["leases"]
    assert lease["name"] == "backend"
    assert lease["token"] == token
    assert lease["holder"]["user_id"] == "alice"
    assert lease["note"] == "INC-12"
    assert deploybot("check", "backend", "--token", str(token)).returncode == 0

    assert deploybot("server", "stop").returncode == 0
    assert server_pids(data_dir) == []


def test_server_status_exits_3_while_the_server_is_stopped(deploybot: Run, data_dir: Path) -> None:
    """`server status` exits 0 while the server runs and 3 once it is stopped, saying which."""
    assert deploybot("lock", "backend", "--as", "alice").returncode == 0
    running = deploybot("server", "status")
    assert deploybot("server", "stop").returncode == 0
    stopped = deploybot("server", "status")

    assert running.returncode == 0, running.stderr
    assert running.stdout.strip() == f"embedded server running; data in {data_dir}"
    assert stopped.returncode == 3, stopped.stderr
    assert stopped.stdout.strip() == f"embedded server stopped; data in {data_dir}"


def test_server_stop_without_a_server_says_so(deploybot: Run, data_dir: Path) -> None:
    """`server stop` with nothing running exits 0 and says the server was not running."""
    result = deploybot("server", "stop")

    assert result.returncode == 0
    assert result.stdout.strip() == "embedded server was not running"
    assert server_pids(data_dir) == []


async def test_running_bot_restarts_a_stopped_embedded_server(
    deploybot: Run, embedded_env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    """`deploybot server stop` under a running console bot: the bot starts the server again
    by itself, says so in its log, and answers from the kept state; /readyz is 200 again."""
    base = f"http://127.0.0.1:{_free_port()}"
    env = embedded_env | {"DEPLOYBOT_HTTP_PORT": base.rsplit(":", 1)[1]}
    log = tmp_path / "run.log"
    with log.open("wb") as stderr:
        bot = await asyncio.create_subprocess_exec(
            str(DEPLOYBOT), "run", "--as", "alice", cwd=tmp_path, env=env,
            stdin=PIPE, stdout=PIPE, stderr=stderr,
        )  # fmt: skip
    try:
        locked = await say(bot, "lock backend 30m INC-12", "alice locked `backend`")
        await wait_for(lambda: readyz(base, 200), "/readyz 200", limit=20)

        stopped = await asyncio.to_thread(deploybot, "server", "stop")
        assert stopped.stdout.strip() == "embedded server stopped", stopped.stderr
        # The log line comes once the bot has seen the server answer, which may be after
        # the test has seen it.
        await wait_for(lambda: RESTARTED in log.read_text(), "the bot to restart it", limit=20)
        assert server_running(data_dir)
        await wait_for(lambda: readyz(base, 200), "/readyz 200 again", limit=20)
        kept = await say(bot, "status backend", "`backend`")
    finally:
        if bot.returncode is None:
            bot.kill()
        await bot.wait()

    token = re.search(r"Token `(\d+)`", locked)
    assert token is not None and token.group(1) in kept and "alice" in kept


async def say(bot: asyncio.subprocess.Process, line: str, expected: str) -> str:
    """Type `line` into the console; return the first output line containing `expected`."""
    assert bot.stdin is not None and bot.stdout is not None
    bot.stdin.write(f"{line}\n".encode())
    await bot.stdin.drain()
    while True:
        output = await asyncio.wait_for(bot.stdout.readline(), timeout=20)
        assert output, f"the console ended before answering {line!r}"
        if expected in output.decode():
            return output.decode()


async def readyz(base: str, status: int) -> bool:
    """Whether /readyz answers with `status` (False while nothing listens yet)."""
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{base}/readyz") as answer:
            return answer.status == status
    except aiohttp.ClientError:
        return False
