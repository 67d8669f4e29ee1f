"""End to end: the `deploybot` CLI on its embedded server, with no REDIS_URL at all."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

DEPLOYBOT = Path(sys.executable).parent / "deploybot"

Run = Callable[..., subprocess.CompletedProcess[str]]


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
def deploybot(data_dir: Path, tmp_path: Path) -> Iterator[Run]:
    """Runs `deploybot` with no REDIS_URL; teardown always stops the server it started."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REDIS_URL", "REDIS_PASSWORD") and not key.startswith("DEPLOYBOT_")
    }
    env["DEPLOYBOT_DATA_DIR"] = str(data_dir)

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
    assert "stopped" in deploybot("server", "status").stdout

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


def test_server_stop_without_a_server_says_so(deploybot: Run, data_dir: Path) -> None:
    """`server stop` with nothing running exits 0 and says the server was not running."""
    result = deploybot("server", "stop")

    assert result.returncode == 0
    assert result.stdout.strip() == "embedded server was not running"
    assert server_pids(data_dir) == []
