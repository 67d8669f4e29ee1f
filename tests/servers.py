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


def start_test_server(tmp_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server that keeps nothing on disk; return its process and redis:// URL.

    The OS names a free port, but another process can take it before the server binds. The
    server then exits (or a stranger answers on the port), and we retry with a fresh port.
    """
    binary = find_server_binary()
    for _ in range(_BIND_ATTEMPTS):
        port = _free_port()
        process = subprocess.Popen(
            _server_args(binary, tmp_dir, port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _wait_until_ours(process, port):
            return process, f"redis://127.0.0.1:{port}/0"
        stop_test_server(process)

    msg = f"No test server started in {_BIND_ATTEMPTS} attempts; see the logs in {tmp_dir}."
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


def _server_args(binary: str, tmp_dir: Path, port: int) -> list[str]:
    """Command line for a foreground server on 127.0.0.1 without any persistence."""
    return [
        binary,
        *("--bind", "127.0.0.1", "--port", str(port)),
        *("--save", "", "--appendonly", "no"),
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
