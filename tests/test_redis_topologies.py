"""Tests for bot.store on production Redis set-ups: Sentinel failover, Cluster, TLS.

They run Debian's redis-server and redis-sentinel on loopback ports (tests/topologies.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from topologies import (
    CLUSTER_PASSWORD,
    MASTER_PASSWORD,
    SENTINEL_PASSWORD,
    SERVICE,
    ClusterSetup,
    Node,
    SentinelSetup,
    TlsFiles,
    free_port,
    start_cluster,
    start_sentinel_setup,
    start_tls_sentinel_setup,
    start_tls_server,
    wait_for,
)

from bot.config import Secrets, Settings
from bot.errors import LeaseHeld, StoreUnavailable, UsageError
from bot.model import Holder, Job, LeaseKind
from bot.runtime import open_runtime
from bot.store import RedisClient, Store, Topology, check_redis_url, connect, parse_topology_url

ALICE = Holder("local", "alice", "Alice")
BOB = Holder("local", "bob", "Bob")
CAROL = Holder("slack", "U0CAROL", "Carol")
HOUR_MS = 3_600_000
LOCK = LeaseKind.LOCK
DEPLOYBOT = Path(sys.executable).parent / "deploybot"
EXIT_OK, EXIT_REFUSED, EXIT_UNAVAILABLE = 0, 1, 3
SECRETS = (MASTER_PASSWORD, SENTINEL_PASSWORD, CLUSTER_PASSWORD)


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the `deploybot` command with `env` added to a clean environment."""
    base = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REDIS_URL", "REDIS_PASSWORD") and not key.startswith("DEPLOYBOT_")
    }
    return subprocess.run(
        [str(DEPLOYBOT), *args],
        env=base | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def write_replicated(client: RedisClient) -> None:
    """Wait until the replica has every write so far (Redis WAIT), failing if it does not."""
    assert await client.execute_command("WAIT", 1, 5000) == 1


async def wait_async(
    condition: Callable[[], Awaitable[bool]], *, what: str, timeout_s: float = 5.0
) -> None:
    """Poll an async `condition` until it holds, failing the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting until {what}")
        await asyncio.sleep(0.05)


# URL forms


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26380/mymaster/2?sentinel_password=sp",
            Topology(
                "sentinel",
                tls=False,
                hosts=(("10.0.0.1", 26379), ("10.0.0.2", 26380)),
                service="mymaster",
                db=2,
                password="pw",
                sentinel_password="sp",
            ),
        ),
        (
            "redis+sentinel://sentinel-a,sentinel-b/mymaster",
            Topology(
                "sentinel",
                tls=False,
                hosts=(("sentinel-a", 26379), ("sentinel-b", 26379)),
                service="mymaster",
            ),
        ),
        (
            "rediss+sentinel://deploy:p%40ss@[::1]:5000/main/",
            Topology(
                "sentinel",
                tls=True,
                hosts=(("::1", 5000),),
                service="main",
                username="deploy",
                password="p@ss",
            ),
        ),
        (
            "redis+cluster://:pw@node-1:7000,node-2",
            Topology(
                "cluster", tls=False, hosts=(("node-1", 7000), ("node-2", 6379)), password="pw"
            ),
        ),
        (
            "rediss+cluster://node-1:7000/0",
            Topology("cluster", tls=True, hosts=(("node-1", 7000),)),
        ),
    ],
)
def test_sentinel_and_cluster_urls_are_taken_apart(url: str, expected: Topology) -> None:
    """Host lists, default ports, service, database, passwords and TLS are read from the URL."""
    check_redis_url(url)

    assert parse_topology_url(url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://:secret-pw@host:26379", "names no Sentinel service"),
        ("redis+sentinel://:secret-pw@host:26379/", "names no Sentinel service"),
        ("redis+sentinel://:secret-pw@host/main/x", "database that is not a number"),
        ("redis+sentinel://:secret-pw@host/main/0/extra", "more than /service/db"),
        ("redis+sentinel://:secret-pw@host,,other/main", "empty entry in its host list"),
        ("redis+sentinel://:secret-pw@host:99999/main", "malformed address"),
        ("redis+sentinel://:secret-pw@host:0/main", "port 0"),
        ("redis+sentinel://:secret-pw@/main", "empty entry"),
        ("redis+sentinel://:secret-pw@[::1/main", "malformed"),
        ("redis+sentinel://:secret-pw@host/main?sentinel_pasword=secret-pw", "'sentinel_pasword'"),
        ("redis+cluster://:secret-pw@host:7000/1", "only database 0"),
        ("redis+cluster://:secret-pw@host:7000?sentinel_password=secret-pw", "takes no options"),
        ("redis+clusters://:secret-pw@host:7000", "scheme 'redis+clusters'"),
        ("redis://:secret-pw@host:6379/abc", "database 'abc', which is not a number"),
        ("not a url", "is not a URL"),
        ("localhost:6379", "is not a URL"),
        ("rediss://:secret-pw@host:6379/0x1", "not a number"),
        ("unix://:secret-pw@/run/redis.sock?db=one", "database 'one'"),
    ],
)
def test_malformed_urls_are_refused_saying_why_without_secrets(url: str, complaint: str) -> None:
    """A malformed Sentinel or Cluster URL is a usage error that names the problem, not the
    password."""
    with pytest.raises(UsageError) as raised:
        check_redis_url(url)

    assert complaint in str(raised.value)
    assert "secret-pw" not in str(raised.value)


@pytest.mark.parametrize("option", ["ssl_cert_reqs=none", "ssl_check_hostname=false"])
def test_url_cannot_turn_tls_verification_off(option: str) -> None:
    """redis-py would obey these URL options over deploybot's own; they are refused."""
    with pytest.raises(UsageError, match="always verifies"):
        check_redis_url(f"rediss://redis.internal:6380/0?{option}")


def test_topology_repr_shows_no_passwords() -> None:
    """A parsed URL can be logged by accident without leaking its passwords."""
    topology = parse_topology_url("redis+sentinel://:master-pw@h/main?sentinel_password=sent-pw")

    assert "master-pw" not in repr(topology)
    assert "sent-pw" not in repr(topology)


# Sentinel


@pytest.fixture(scope="module")
def steady_sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """A Sentinel set-up that no test fails over, shared by the tests that only read it."""
    setup = start_sentinel_setup(tmp_path_factory.mktemp("steady-sentinel"))
    try:
        yield setup
    finally:
        setup.stop()


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSetup]:
    """A Sentinel set-up of this test's own, to fail over."""
    setup = start_sentinel_setup(tmp_path)
    try:
        yield setup
    finally:
        setup.stop()


def sentinel_store(setup: SentinelSetup, namespace: str) -> Store:
    """A store that finds the master through the sentinels, as REDIS_URL configures it."""
    return Store(connect(setup.url()), namespace=namespace)


@pytest.fixture
async def steady_store(steady_sentinels: SentinelSetup, namespace: str) -> AsyncIterator[Store]:
    """A store on the steady Sentinel set-up."""
    store = sentinel_store(steady_sentinels, namespace)
    try:
        yield store
    finally:
        await store.close()


async def test_sentinel_url_reaches_the_master(
    steady_sentinels: SentinelSetup, steady_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Writes go to the master Sentinel names, and no password reaches the logs."""
    caplog.set_level(logging.DEBUG)
    change = await steady_store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)

    master = steady_sentinels.server_on(steady_sentinels.master_port())
    with master.client(decode_responses=True) as client:
        assert client.exists(steady_store.key("lease", "lock", "backend")) == 1
    assert (await steady_store.get(LOCK, "backend")) == change.lease
    assert not [r for r in caplog.records if any(s in r.getMessage() for s in SECRETS)]


async def test_writes_to_a_replica_are_store_unavailable(
    steady_sentinels: SentinelSetup, namespace: str
) -> None:
    """A plain URL that points at a replica gets StoreUnavailable, not a READONLY crash."""
    master_port = steady_sentinels.master_port()
    replica = next(node for node in steady_sentinels.servers if node.port != master_port)
    url = f"redis://:{MASTER_PASSWORD}@127.0.0.1:{replica.port}/0"
    store = Store(connect(url), namespace=namespace)
    try:
        with pytest.raises(StoreUnavailable, match="read-only replica"):
            await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
    finally:
        await store.close()


SENTINEL_MISTAKES: dict[str, tuple[Callable[[SentinelSetup], str], str]] = {
    "unknown-service": (
        lambda setup: setup.url(service="no-such-service"),
        "Sentinel names no reachable master",
    ),
    "no-sentinel-password": (
        lambda setup: setup.url(sentinel_password=False),
        "the sentinels refused the password",
    ),
    "wrong-password": (
        lambda setup: setup.url().replace(MASTER_PASSWORD, "wrong-pw"),
        "the password was refused",
    ),
}


@pytest.mark.parametrize(
    ("url_for", "reason"), SENTINEL_MISTAKES.values(), ids=SENTINEL_MISTAKES.keys()
)
async def test_sentinel_misconfiguration_is_store_unavailable(
    steady_sentinels: SentinelSetup,
    namespace: str,
    url_for: Callable[[SentinelSetup], str],
    reason: str,
) -> None:
    """A wrong service name or password is reported with its cause, and no secret."""
    store = Store(connect(url_for(steady_sentinels)), namespace=namespace)
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
        assert await store.ping() is False
    finally:
        await store.close()

    assert reason in str(raised.value)
    assert not any(secret in str(raised.value) for secret in SECRETS)


async def test_unreachable_sentinels_are_store_unavailable(namespace: str) -> None:
    """With no sentinel listening, commands say so and ping says False."""
    store = Store(
        connect(f"redis+sentinel://127.0.0.1:{free_port()}/{SERVICE}"), namespace=namespace
    )
    try:
        assert await store.ping() is False
        with pytest.raises(StoreUnavailable, match="no sentinel could be reached"):
            await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
    finally:
        await store.close()


async def test_store_follows_a_manual_failover(sentinels: SentinelSetup, namespace: str) -> None:
    """After SENTINEL FAILOVER the same store reaches the new master: the replicated lock is
    there, new acquires work, tokens keep increasing, and commands meanwhile either succeed
    or say the store is unavailable."""
    store = sentinel_store(sentinels, namespace)
    try:
        before = await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
        await write_replicated(store.redis)
        old_port = sentinels.master_port()

        stop = asyncio.Event()
        outcomes = asyncio.create_task(commands_until(stop, store))
        with sentinels.sentinels[0].client() as client:
            assert client.sentinel_failover(SERVICE)
        new_port = await sentinels.wait_for_new_master(old_port)
        stop.set()
        assert "ok" in await outcomes

        assert (await store.get(LOCK, "backend")) == before.lease
        await store.acquire(LOCK, "frontend", BOB, ttl_ms=HOUR_MS)
        await store.release(LOCK, "backend", ALICE)
        after = await store.acquire(LOCK, "backend", BOB, ttl_ms=HOUR_MS)
    finally:
        await store.close()

    assert after.lease.token > before.lease.token
    with sentinels.server_on(new_port).client(decode_responses=True) as client:
        assert client.exists(store.key("lease", "lock", "frontend")) == 1


async def commands_until(stop: asyncio.Event, store: Store) -> set[str]:
    """Take and refresh a lock every 50 ms until `stop`; the outcomes seen.

    Only success and StoreUnavailable are acceptable; anything else fails the test.
    """
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            await store.acquire(LOCK, "during-failover", CAROL, ttl_ms=HOUR_MS)
            seen.add("ok")
        except StoreUnavailable:
            seen.add("unavailable")
        await asyncio.sleep(0.05)
    await store.acquire(LOCK, "during-failover", CAROL, ttl_ms=HOUR_MS)
    seen.add("ok")
    return seen


async def test_master_crash_is_unavailable_until_the_replica_takes_over(
    sentinels: SentinelSetup, namespace: str
) -> None:
    """While the master is dead and not yet replaced, commands get StoreUnavailable; after
    the failover the replicated lock is still there and tokens keep increasing."""
    old_port = sentinels.master_port()
    replica = next(node for node in sentinels.servers if node.port != old_port)
    store = sentinel_store(sentinels, namespace)
    try:
        before = await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
        await write_replicated(store.redis)
        # Hold the failover back until the outage has been observed.
        with replica.client() as client:
            client.config_set("replica-priority", 0)
        sentinels.server_on(old_port).kill()

        with pytest.raises(StoreUnavailable, match="nothing changed"):
            await store.acquire(LOCK, "frontend", BOB, ttl_ms=HOUR_MS)
        wait_for(lambda: all_see_master_down(sentinels), what="every sentinel sees o_down")
        with pytest.raises(StoreUnavailable, match="Sentinel names no reachable master"):
            await store.release(LOCK, "backend", ALICE)

        with replica.client() as client:
            client.config_set("replica-priority", 100)
        await sentinels.wait_for_new_master(old_port)
        assert (await store.get(LOCK, "backend")) == before.lease
        await store.release(LOCK, "backend", ALICE)
        after = await store.acquire(LOCK, "backend", BOB, ttl_ms=HOUR_MS)
    finally:
        await store.close()

    assert after.lease.token > before.lease.token


def all_see_master_down(setup: SentinelSetup) -> bool:
    """Whether every sentinel considers the master objectively down."""
    for sentinel in setup.sentinels:
        with sentinel.client() as client:
            if "o_down" not in client.sentinel_master(SERVICE)["flags"]:
                return False
    return True


async def test_lock_lost_in_a_failover_still_fences_its_old_holder(
    sentinels: SentinelSetup, namespace: str, tmp_path: Path
) -> None:
    """A lock the replica never received vanishes in the failover (asynchronous replication);
    the next holder's token is larger, so `deploybot check` fails for the old holder."""
    old_port = sentinels.master_port()
    master = sentinels.server_on(old_port)
    replica = next(node for node in sentinels.servers if node.port != old_port)
    store = sentinel_store(sentinels, namespace)
    try:
        # Cut replication, take the lock, crash the master: only the master ever had it.
        replica.signal(signal.SIGSTOP)
        with master.client() as client:
            assert client.client_kill_filter(_type="replica") == 1
        lost = await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
        master.kill()
        replica.signal(signal.SIGCONT)

        await sentinels.wait_for_new_master(old_port)
        assert await store.get(LOCK, "backend") is None
        taken = await store.acquire(LOCK, "backend", BOB, ttl_ms=HOUR_MS)
    finally:
        await store.close()

    assert taken.lease.token > lost.lease.token
    env = {"REDIS_URL": sentinels.url(), "DEPLOYBOT_NAMESPACE": namespace}
    stale = run_cli("check", "backend", "--token", str(lost.lease.token), env=env, cwd=tmp_path)
    fresh = run_cli("check", "backend", "--token", str(taken.lease.token), env=env, cwd=tmp_path)
    assert stale.returncode == EXIT_REFUSED, stale.stderr
    assert "held by Bob" in stale.stderr
    assert fresh.returncode == EXIT_OK, fresh.stderr


# Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    """A three-master cluster shared by the module's cluster tests."""
    setup = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield setup
    finally:
        setup.stop()


@pytest.fixture
async def cluster_store(cluster: ClusterSetup, namespace: str) -> AsyncIterator[Store]:
    """A store on the cluster, in this test's namespace."""
    store = Store(connect(cluster.url()), namespace=namespace)
    try:
        yield store
    finally:
        await store.close()


async def test_lease_lifecycle_on_a_cluster(cluster_store: Store) -> None:
    """Acquire, refresh, refuse, extend, waitlist, status and release run on a cluster."""
    store = cluster_store
    taken = await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS, note="v1")
    refreshed = await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
    with pytest.raises(LeaseHeld):
        await store.acquire(LOCK, "backend", BOB, ttl_ms=HOUR_MS)
    extended = await store.extend(LOCK, "backend", ALICE, ttl_ms=2 * HOUR_MS)
    waiting = await store.join_waitlist(LOCK, "backend", BOB)
    await store.join_waitlist(LOCK, "backend", CAROL)
    assert await store.leave_waitlist(LOCK, "backend", CAROL)
    listing = await store.leases()
    released = await store.release(LOCK, "backend", ALICE)

    assert refreshed.lease.token == extended.lease.token == taken.lease.token
    assert extended.lease.expires_at > taken.lease.expires_at
    assert (waiting.outcome, waiting.position) == ("waiting", 1)
    assert listing.waiters == {"lock:backend": [BOB]}
    assert released.lease.holder == ALICE
    handed_over = await store.get(LOCK, "backend")
    assert handed_over is not None
    assert handed_over.holder == BOB
    assert handed_over.token > taken.lease.token


async def test_sweep_hands_an_expired_lease_on_on_a_cluster(cluster_store: Store) -> None:
    """The sweep script, which builds lease keys from the prefix, works in the cluster slot."""
    store = cluster_store
    short = await store.acquire(LOCK, "backend", ALICE, ttl_ms=200)
    await store.join_waitlist(LOCK, "backend", BOB)

    async def swept() -> bool:
        return (await store.sweep_due()).expired == 1

    await wait_async(swept, what="the sweep expired the lease")
    lease = await store.get(LOCK, "backend")
    assert lease is not None
    assert lease.holder == BOB
    assert lease.token > short.lease.token
    types = [event.type for event in await store.history("backend", count=10)]
    assert types[:2] == ["acquired", "expired"]


async def test_event_consumer_group_on_a_cluster(cluster_store: Store) -> None:
    """Announcements' consumer group: create (twice), read, reclaim and acknowledge."""
    store = cluster_store
    await store.ensure_event_group("announcer")
    await store.ensure_event_group("announcer")
    await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)

    read = await store.read_events("announcer", "replica-1", block_ms=100)
    reclaimed = await store.claim_stale_events("announcer", "replica-2", min_idle_ms=0)
    for event in reclaimed:
        await store.ack_event("announcer", event.id)
    after_ack = await store.claim_stale_events("announcer", "replica-2", min_idle_ms=0)

    assert [event.type for event in read] == ["acquired"]
    assert [event.id for event in reclaimed] == [event.id for event in read]
    assert after_ack == []


async def test_jobs_marks_and_sightings_on_a_cluster(cluster_store: Store) -> None:
    """Job statuses, announcement marks and event de-duplication work on a cluster."""
    store = cluster_store
    await store.set_job(Job("deploy", "running", 0, "ci"))
    listing = await store.jobs(retention_ms=HOUR_MS)
    removed = await store.remove_job("deploy", removed_by="alice")
    await store.mark("announced", "1-0", ttl_s=60)

    assert [job.name for job in listing.jobs] == ["deploy"]
    assert removed
    assert await store.is_marked("announced", "1-0")
    assert await store.first_sighting("slack", "Ev01")
    assert not await store.first_sighting("slack", "Ev01")
    assert await store.ping()
    assert await store.now_ms() > 0


async def test_a_namespace_lives_in_one_cluster_slot(
    cluster: ClusterSetup, cluster_store: Store
) -> None:
    """Every key of one deploybot hashes to one slot, so its multi-key scripts may run."""
    store = cluster_store
    await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
    await store.join_waitlist(LOCK, "backend", BOB)
    await store.set_job(Job("deploy", "running", 0, "ci"))

    prefix = store.key("")
    keys: list[str] = []
    for node in cluster.nodes:
        with node.client(decode_responses=True) as client:
            keys += [key for key in client.scan_iter(match=prefix + "*")]
    with cluster.nodes[0].client() as client:
        slots = {client.cluster("keyslot", key) for key in keys}
    assert len(keys) >= 6
    assert len(slots) == 1


async def test_unreachable_cluster_is_store_unavailable(namespace: str) -> None:
    """A cluster URL naming no live node reports the outage; ping says False."""
    store = Store(connect(f"redis+cluster://127.0.0.1:{free_port()}"), namespace=namespace)
    try:
        assert await store.ping() is False
        with pytest.raises(StoreUnavailable, match="could not connect"):
            await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
    finally:
        await store.close()


async def test_cluster_url_for_a_single_server_is_store_unavailable(
    redis_server_url: str, namespace: str
) -> None:
    """Pointing redis+cluster:// at a server without cluster mode says so."""
    address = redis_server_url.removeprefix("redis://").removesuffix("/0")
    store = Store(connect(f"redis+cluster://{address}"), namespace=namespace)
    try:
        with pytest.raises(StoreUnavailable, match="not a cluster"):
            await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
    finally:
        await store.close()


# TLS


TLS_PASSWORD = "tls-pw-93c1"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A private CA and a server certificate it signed for 127.0.0.1 only."""
    return TlsFiles.create(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tls_files: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A redis-server that speaks only TLS and wants a password."""
    node = start_tls_server(
        tmp_path_factory.mktemp("tls-server"), tls_files, password=TLS_PASSWORD
    )
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def tls_sentinels(
    tls_files: TlsFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SentinelSetup]:
    """A TLS-only master and a TLS-only sentinel watching it."""
    setup = start_tls_sentinel_setup(tmp_path_factory.mktemp("tls-sentinel"), tls_files)
    try:
        yield setup
    finally:
        setup.stop()


async def test_tls_with_the_ca_file_works(
    tls_server: Node, tls_files: TlsFiles, namespace: str
) -> None:
    """rediss:// with the CA that signed the server's certificate connects and works."""
    url = f"rediss://127.0.0.1:{tls_server.port}/0"
    store = Store(connect(url, password=TLS_PASSWORD, ca_file=tls_files.ca), namespace=namespace)
    try:
        change = await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
        assert (await store.get(LOCK, "backend")) == change.lease
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("host", "with_ca"),
    [("127.0.0.1", False), ("localhost", True)],
    ids=["unknown-ca", "wrong-host-name"],
)
async def test_tls_verification_failure_is_store_unavailable(
    tls_server: Node, tls_files: TlsFiles, namespace: str, host: str, with_ca: bool
) -> None:
    """A certificate from an unknown CA, or for another host name, is refused, and the
    reason names the TLS certificate."""
    ca_file = tls_files.ca if with_ca else None
    client = connect(
        f"rediss://{host}:{tls_server.port}/0", password=TLS_PASSWORD, ca_file=ca_file
    )
    store = Store(client, namespace=namespace)
    try:
        with pytest.raises(StoreUnavailable, match="TLS certificate could not be verified"):
            await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
    finally:
        await store.close()


async def test_runtime_passes_the_ca_file_and_password(
    tls_server: Node,
    tls_files: TlsFiles,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """open_runtime gives connect the settings' redis_ca_file and REDIS_PASSWORD."""
    monkeypatch.setenv("REDIS_PASSWORD", TLS_PASSWORD)
    settings = Settings(namespace=namespace, redis_ca_file=tls_files.ca)
    url = f"rediss://127.0.0.1:{tls_server.port}/0"

    async with open_runtime(settings, Secrets(), redis_url=url) as runtime:
        assert await runtime.store.ping()


def test_cli_reports_a_tls_failure_without_a_traceback(
    tls_server: Node, tls_files: TlsFiles, namespace: str, tmp_path: Path
) -> None:
    """The CLI works with DEPLOYBOT_REDIS_CA_FILE, and without it exits 3 naming TLS."""
    env = {
        "REDIS_URL": f"rediss://:{TLS_PASSWORD}@127.0.0.1:{tls_server.port}/0",
        "DEPLOYBOT_NAMESPACE": namespace,
    }
    trusted = run_cli(
        "status", env=env | {"DEPLOYBOT_REDIS_CA_FILE": str(tls_files.ca)}, cwd=tmp_path
    )
    untrusted = run_cli("status", env=env, cwd=tmp_path)

    assert trusted.returncode == EXIT_OK, trusted.stderr
    assert untrusted.returncode == EXIT_UNAVAILABLE
    assert "TLS certificate" in untrusted.stderr
    assert "Traceback" not in untrusted.stderr
    assert TLS_PASSWORD not in untrusted.stderr


@pytest.mark.parametrize("with_ca", [True, False], ids=["with-ca", "without-ca"])
async def test_sentinel_over_tls_verifies_sentinels_and_master(
    tls_sentinels: SentinelSetup, tls_files: TlsFiles, namespace: str, with_ca: bool
) -> None:
    """rediss+sentinel:// speaks verified TLS to the sentinels and to the master."""
    client = connect(tls_sentinels.url(), ca_file=tls_files.ca if with_ca else None)
    store = Store(client, namespace=namespace)
    try:
        if with_ca:
            change = await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
            assert (await store.get(LOCK, "backend")) == change.lease
        else:
            with pytest.raises(StoreUnavailable, match="TLS certificate could not be verified"):
                await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def tls_cluster(
    tls_files: TlsFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterSetup]:
    """A three-master cluster that speaks only TLS."""
    setup = start_cluster(tmp_path_factory.mktemp("tls-cluster"), tls_files)
    try:
        yield setup
    finally:
        setup.stop()


async def test_cluster_over_tls_works_with_the_ca_file(
    tls_cluster: ClusterSetup, tls_files: TlsFiles, namespace: str
) -> None:
    """rediss+cluster:// verifies every node it is redirected to against the CA file."""
    store = Store(connect(tls_cluster.url(), ca_file=tls_files.ca), namespace=namespace)
    try:
        change = await store.acquire(LOCK, "backend", ALICE, ttl_ms=HOUR_MS)
        assert (await store.leases()).leases == [change.lease]
    finally:
        await store.close()


def test_missing_ca_file_is_a_usage_error(tmp_path: Path) -> None:
    """A redis_ca_file that does not exist is reported before anything connects."""
    with pytest.raises(UsageError, match="redis_ca_file"):
        connect("rediss://127.0.0.1:6380/0", ca_file=tmp_path / "missing.pem")
