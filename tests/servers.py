"""Throwaway Redis-compatible servers for tests, each on a free 127.0.0.1 TCP port."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bot.embedded import find_server_binary

_BIND_ATTEMPTS = 5
_READY_TIMEOUT = 10.0
_POLL_INTERVAL = 0.02


def start_test_server(
    tmp_dir: Path, *, port: int | None = None, persistent: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server on 127.0.0.1; return its process and redis:// URL.

    By default it keeps nothing on disk and listens on a free port. `persistent` turns on
    append-only persistence in `tmp_dir`, and `port` asks for a given port: together they
    restart a stopped server with its data where clients expect it.

    The OS names a free port, but another process can take it before the server binds. The
    server then exits (or a stranger answers on the port), and we retry with a fresh port;
    a port that was asked for is tried once.
    """
    binary = find_server_binary()
    attempts = 1 if port is not None else _BIND_ATTEMPTS
    for _ in range(attempts):
        chosen = port if port is not None else _free_port()
        process = subprocess.Popen(
            _server_args(binary, tmp_dir, chosen, persistent=persistent),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _wait_until_ours(process, chosen):
            return process, f"redis://127.0.0.1:{chosen}/0"
        stop_test_server(process)

    msg = f"No test server started in {attempts} attempt(s); see the logs in {tmp_dir}."
    raise RuntimeError(msg)


def stop_test_server(process: subprocess.Popen[bytes]) -> None:
    """Stop a server from start_test_server; SIGTERM shuts it down cleanly, SIGKILL if hung."""
    process.terminate()
    try:
        process.wait(timeout=_READY_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _free_port() -> int:
    """Ask the OS for a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_args(binary: str, tmp_dir: Path, port: int, *, persistent: bool) -> list[str]:
    """Command line for a foreground server on 127.0.0.1, append-only when `persistent`."""
    return [
        binary,
        *("--bind", "127.0.0.1", "--port", str(port)),
        *("--save", "", "--appendonly", "yes" if persistent else "no"),
        *("--dir", str(tmp_dir), "--logfile", str(tmp_dir / f"server-{port}.log")),
    ]


def _wait_until_ours(process: subprocess.Popen[bytes], port: int) -> bool:
    """Wait until the server answers PING on the port, checking that it is our process.

    Comparing process ids matters when the port was taken by another server: that one
    answers PING while ours is still failing to bind.
    """
    client = redis.Redis(port=port, socket_timeout=1.0, retry=Retry(NoBackoff(), 0))
    deadline = time.monotonic() + _READY_TIMEOUT
    with client:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if client.info("server")["process_id"] == process.pid:
                    return True
            except redis.RedisError:
                pass
            time.sleep(_POLL_INTERVAL)
    return False
