"""Redis state: every mutation is one atomic Lua script, every time comes from Redis `TIME`.

Key layout (all under one hash tag, so a Redis Cluster keeps them in one slot):

    {ns}:lease:<kind>:<name>   string, JSON lease, PX TTL      the truth: gone means free
    {ns}:leases                hash "<kind>:<name>" -> JSON    index for status, and the last
                                                               snapshot of a lease for its
                                                               "expired" event
    {ns}:fence:<kind>:<name>   string                          last fencing token issued
    {ns}:timeline              sorted set of "<kind>:<name>"   one entry per lease, scored by
                                                               its next reminder or expiry
    {ns}:queue:<kind>:<name>   list of waiter JSON             the waitlist, oldest first
    {ns}:events                capped stream                   every state change
    {ns}:jobs                  hash name -> JSON               job statuses
    {ns}:seen:<platform>:<id>  string, short TTL               chat event de-duplication

A lease frees itself through its TTL even when no deploybot runs. The "expired" event for
it is written by whoever notices first: the sweep (`sweep_due`), or the next script that
finds the lease key gone but its snapshot still in the index. Either way exactly once,
because each is one script.
"""

from __future__ import annotations

import hashlib
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterError,
    InvalidResponse,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from bot import scripts
from bot.errors import (
    CorruptRecord,
    CorruptState,
    LeaseHeld,
    NotHeld,
    NotHolder,
    StoreUnavailable,
    UsageError,
)
from bot.model import Event, Holder, Job, Lease, LeaseKind, Origin

log = logging.getLogger(__name__)

T = TypeVar("T")

# Failures that mean "no usable Redis right now": down, unreachable, still loading, a
# read-only replica after a failover, a wrong password, or something else on that port.
_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    AuthenticationError,
    InvalidResponse,
    ClusterError,
    OSError,
)

_EXAMPLES = (
    "redis://host:6379/0, rediss://host:6380/0, unix:///path/to/redis.sock, "
    "redis+sentinel://host1:26379,host2:26379/mymaster or redis+cluster://host1:6379,host2:6379"
)
_PLAIN_SCHEMES = ("redis", "rediss", "unix")
_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_SENTINEL_PORT = 26379
POOL_SIZE = 64
POOL_WAIT_S = 5.0
# What redis-py's BlockingConnectionPool raises when no connection came free in time.
_POOL_EXHAUSTED = "No connection available."
# While Redis stays down, the outage is logged again at most this often (see OutageLog).
OUTAGE_LOG_INTERVAL_S = 30.0
_REDIS_PORT = 6379

# Query options that would switch certificate checks off. redis-py lets options in the URL
# override what deploybot passes, so they are refused rather than silently obeyed.
_UNVERIFIED_TLS_OPTIONS = ("ssl_cert_reqs", "ssl_check_hostname")

# Timeouts short enough that an outage is reported, not waited out; the same for every form.
_CLIENT_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_connect_timeout": 3,
    "socket_timeout": 5,
    "health_check_interval": 30,
}

RedisClient = aioredis.Redis | RedisCluster

# How far down a chain of wrapped exceptions to look for the TLS error behind them.
_MAX_CAUSES = 10

# How long a Sentinel client stops asking the sentinels where the master is after none
# answered (see _FollowingMasterPool).
_SENTINEL_QUIET_S = 5.0


@dataclass(frozen=True)
class LeaseChange:
    """The outcome of a lease mutation: the lease as it now is (or was) and Redis's clock."""

    lease: Lease
    now_ms: int
    outcome: str
    forced_by: Holder | None = None
    reason: str = ""


@dataclass(frozen=True)
class LeaseListing:
    """Current leases, who waits for each ("kind:name" -> holders), and unreadable keys."""

    leases: list[Lease]
    corrupt: list[str]
    now_ms: int
    waiters: dict[str, list[Holder]] = field(default_factory=dict)
    left_out: dict[LeaseKind, int] = field(default_factory=dict)  # by a limit, by kind


@dataclass(frozen=True)
class JobListing:
    """Current job statuses, plus the names whose records could not be read."""

    jobs: list[Job]
    corrupt: list[str]
    now_ms: int


@dataclass(frozen=True)
class LeasePolicy:
    """How leases behave beyond a single call: waitlist handoff, reminders, history size."""

    events_max: int = 10_000
    handoff: str = "auto"
    default_ttl_ms: tuple[int, int] = (3_600_000, 14_400_000)
    reminder_offsets_ms: tuple[int, ...] = (600_000,)


@dataclass(frozen=True)
class WaitlistResult:
    """What joining a waitlist did, and the lease it is about (None when free)."""

    outcome: str
    lease: Lease | None
    position: int
    now_ms: int


@dataclass(frozen=True)
class SweepResult:
    """What one sweep of the timeline did."""

    expired: int
    reminders: int
    due: int
    now_ms: int


class _Library:
    """A store's scripts as one Redis Functions library (see bot.scripts), loaded into the
    server the first time a function is missing. `usable` turns False for good when the
    server has no Functions (Redis 6.2) or the ACL denies them; the scripts then run by
    EVALSHA."""

    def __init__(self, client: RedisClient, name: str, code: str):
        self._client = client
        self.name = name
        self.code = code
        self.usable = True

    async def load(self) -> bool:
        """Load (or reload) the library; False when this server cannot run it."""
        try:
            # REPLACE: the name is the code's hash, so this only ever replaces the same code.
            await self._client.function_load(self.code, replace=True)
        except ResponseError as error:
            if not _functions_unavailable(error):
                raise
            log.info("state store has no Redis Functions; scripts run by EVALSHA")
            self.usable = False
            return False
        return True


class _Script:
    """A Lua script: a function of the store's library when the server has Functions, else
    run by its SHA1 and loaded the first time it is missing.

    Like redis-py's `Script`, without the per-call work it does for pipelines, which
    deploybot never runs scripts in; lease operations are the hot path.
    """

    def __init__(
        self, client: RedisClient, source: str, library: _Library | None = None, name: str = ""
    ):
        self._client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._library = library
        self.function = f"{library.name}_{name}" if library else ""

    async def __call__(self, *, keys: list[str], args: list[Any]) -> Any:
        library = self._library
        if library is not None and library.usable:
            try:
                return await self._client.fcall(self.function, len(keys), *keys, *args)
            except ResponseError as error:
                # A new server, FUNCTION FLUSH, or a server without Functions.
                if not (_function_missing(error) or _functions_unavailable(error)):
                    raise
            if await library.load():
                return await self._client.fcall(self.function, len(keys), *keys, *args)
        try:
            return await self._client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # A new server, a failover to a replica that never saw it, or SCRIPT FLUSH.
            await self._client.script_load(self.source)
            return await self._client.evalsha(self.sha, len(keys), *keys, *args)


def _function_missing(error: ResponseError) -> bool:
    return "function not found" in str(error).lower()


def _functions_unavailable(error: ResponseError) -> bool:
    """FCALL or FUNCTION refused as unknown (before Redis 7) or by the ACL."""
    return isinstance(error, NoPermissionError) or "unknown command" in str(error).lower()


class Store:
    """deploybot's state in Redis. Methods raise StoreUnavailable when Redis cannot answer."""

    def __init__(
        self,
        client: RedisClient,
        *,
        namespace: str,
        events_max: int | None = None,
        policy: LeasePolicy | None = None,
    ):
        self._redis = client
        self._prefix = "{" + namespace + "}"
        self._outage = OutageLog()
        policy = policy or LeasePolicy()
        if events_max is not None:
            policy = replace(policy, events_max=events_max)
        self.policy = policy

        header = scripts.policy_header(
            prefix=self.key(""),
            events_max=policy.events_max,
            handoff=policy.handoff,
            default_ttl_ms=policy.default_ttl_ms,
            reminder_offsets_ms=policy.reminder_offsets_ms,
        )
        bodies = {
            "acquire": scripts.ACQUIRE,
            "release": scripts.RELEASE,
            "extend": scripts.EXTEND,
            "join": scripts.JOIN_WAITLIST,
            "leave": scripts.LEAVE_WAITLIST,
            "sweep": scripts.SWEEP,
            "set_job": scripts.SET_JOB,
            "remove_job": scripts.REMOVE_JOB,
            "list_jobs": scripts.LIST_JOBS,
        }
        self._library = _Library(client, *scripts.library(bodies, header))
        compiled = {
            name: _Script(client, scripts.script(body, header), self._library, name)
            for name, body in bodies.items()
        }
        self._acquire = compiled["acquire"]
        self._release = compiled["release"]
        self._extend = compiled["extend"]
        self._join = compiled["join"]
        self._leave = compiled["leave"]
        self._sweep = compiled["sweep"]
        self._set_job = compiled["set_job"]
        self._remove_job = compiled["remove_job"]
        self._list_jobs = compiled["list_jobs"]
        self._count_leases = _Script(client, scripts.COUNT_LEASES)

    @property
    def redis(self) -> RedisClient:
        """The underlying client, for health checks and tests."""
        return self._redis

    def key(self, *parts: str) -> str:
        """A key inside the namespace, e.g. key('lease', 'lock', 'backend')."""
        return ":".join((self._prefix, *parts))

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    async def ping(self) -> bool:
        """Whether Redis answers right now."""
        try:
            return bool(await self._redis.ping())
        except (RedisError, RedisClusterException, OSError):
            return False

    async def now_ms(self) -> int:
        """Redis's clock in milliseconds, the one clock every replica agrees on."""
        seconds, micros = await self._call(self._redis.time)
        return int(seconds) * 1000 + int(micros) // 1000

    async def acquire(
        self,
        kind: LeaseKind,
        name: str,
        holder: Holder,
        *,
        ttl_ms: int,
        note: str = "",
        origin: Origin | None = None,
        via: Origin | None = None,
        keep_longer: bool = False,
    ) -> LeaseChange:
        """Take the lease, or refresh it when `holder` has it already (same token).

        Raises LeaseHeld when someone else holds it and CorruptRecord when the stored value
        cannot be read. `via` (where the command came from) travels with the event, so
        announcements are not repeated in the channel that already saw the reply.
        `keep_longer` (for a default TTL nobody asked for): a refresh keeps a later expiry.
        """
        request = {"holder": holder.__dict__, "note": note, "ttl": ttl_ms, "keep": keep_longer}
        if origin:
            request["origin"] = origin.__dict__
        outcome, lease, now = await self._run_lease_script(self._acquire, kind, name, via, request)
        if outcome == "held":
            raise LeaseHeld(lease, now)

        log.info(
            "lease %s kind=%s name=%s holder=%s token=%s",
            outcome,
            kind,
            name,
            holder.identity,
            lease.token,
        )
        return LeaseChange(lease, now, outcome)

    async def release(
        self,
        kind: LeaseKind,
        name: str,
        caller: Holder,
        *,
        force_reason: str | None = None,
        via: Origin | None = None,
    ) -> LeaseChange:
        """Release the lease and serve the waitlist. Only its holder may, unless forced.

        Forcing is for admins; the caller checks that. A forced release also clears a
        corrupt record, which nothing else can.
        """
        forced = force_reason is not None
        request = {"caller": caller.__dict__, "forced": forced, "reason": force_reason or ""}
        outcome, now, _, raw = await self._lease_script(self._release, kind, name, via, request)
        self._refuse_free_or_corrupt(outcome, kind, name)

        lease = self._parse_or_placeholder(raw, kind, name, now)
        if outcome == "not_holder":
            raise NotHolder(lease, "unlock" if kind is LeaseKind.LOCK else "release")
        log.info(
            "lease %s kind=%s name=%s by=%s token=%s",
            outcome,
            kind,
            name,
            caller.identity,
            lease.token,
        )
        if forced:
            return LeaseChange(lease, now, outcome, forced_by=caller, reason=force_reason or "")
        return LeaseChange(lease, now, outcome)

    async def extend(
        self,
        kind: LeaseKind,
        name: str,
        caller: Holder,
        *,
        ttl_ms: int,
        via: Origin | None = None,
    ) -> LeaseChange:
        """Move the expiry to Redis now + `ttl_ms` and re-arm reminders; holder only."""
        request = {"caller": caller.__dict__, "ttl": ttl_ms}
        outcome, lease, now = await self._run_lease_script(self._extend, kind, name, via, request)
        if outcome == "not_holder":
            raise NotHolder(lease, "extend")

        log.info(
            "lease extended kind=%s name=%s holder=%s token=%s",
            kind,
            name,
            caller.identity,
            lease.token,
        )
        return LeaseChange(lease, now, outcome)

    async def join_waitlist(
        self,
        kind: LeaseKind,
        name: str,
        holder: Holder,
        *,
        ttl_ms: int | None = None,
        note: str = "",
        origin: Origin | None = None,
        via: Origin | None = None,
        wait_ms: int | None = None,
    ) -> WaitlistResult:
        """Wait for the lease (idempotent); a free one is taken at once in 'auto' mode.

        With `wait_ms` the place in line lapses after that long, so a waiter that died
        without leaving (a killed pipeline) is never handed the lease.
        """
        request: dict[str, Any] = {"holder": holder.__dict__, "note": note}
        if ttl_ms:
            request["ttl"] = ttl_ms
        if origin:
            request["origin"] = origin.__dict__
        if wait_ms:
            request["wait"] = wait_ms
        outcome, now, position, raw = await self._lease_script(
            self._join, kind, name, via, request
        )
        if outcome == "corrupt":
            raise CorruptRecord(self._lease_key(kind, name))
        lease = self._parse(raw, kind, name) if raw else None
        log.info(
            "waitlist %s kind=%s name=%s holder=%s position=%s",
            outcome,
            kind,
            name,
            holder.identity,
            position,
        )
        return WaitlistResult(outcome, lease, position, now)

    async def leave_waitlist(
        self, kind: LeaseKind, name: str, holder: Holder, *, via: Origin | None = None
    ) -> bool:
        """Stop waiting; False when `holder` was not on the waitlist."""
        outcome, *_ = await self._lease_script(
            self._leave, kind, name, via, {"holder": holder.__dict__}
        )
        return outcome == "left"

    async def waiters(self, kind: LeaseKind, name: str) -> list[Holder]:
        """Who waits for the lease, first in line first; unreadable entries and waits that
        ran out are skipped."""
        raws = await self._call(self._redis.lrange, self.key("queue", kind, name), 0, -1)
        now = await self.now_ms()
        return [holder for raw in raws if (holder := _waiter_holder(raw, now))]

    async def get(self, kind: LeaseKind, name: str) -> Lease | None:
        """The current lease on `name`, or None when it is free."""
        key = self._lease_key(kind, name)
        raw = await self._call(self._redis.get, key)
        if raw is None:
            return None
        return _parse_lease(raw, key)

    async def leases(
        self, *, name: str | None = None, limit: int | None = None, kind: LeaseKind | None = None
    ) -> LeaseListing:
        """Live leases from the index (no scan of the keyspace): all of them (or all of one
        `kind`), those called `name`, or at most `limit` in name order, so a chat `status`
        stays small and quick however many leases exist. The limit is shared out between
        locks and claims, so many of one kind never hide the other entirely."""
        now = (await self.sweep_due()).now_ms
        if name is not None:
            fields = [f"{kind}:{name}" for kind in LeaseKind]
        else:
            fields = sorted(
                _text(f) for f in await self._call(self._redis.hkeys, self.key("leases"))
            )
            if kind is not None:
                fields = [entry for entry in fields if entry.startswith(f"{kind}:")]
        left_out: dict[LeaseKind, int] = {}
        if limit is not None:
            fields, left_out = _page(fields, limit)
        if not fields:
            return LeaseListing([], [], now, left_out=left_out)
        # The leases and their waitlists in one round trip (GETs: a cluster pipeline takes
        # no MGET).
        keys = [self.key("lease", entry) for entry in fields]
        pipe = self._redis.pipeline(transaction=False)
        for entry, key in zip(fields, keys, strict=True):
            pipe.get(key)
            pipe.lrange(self.key("queue", entry), 0, -1)
        replies = await self._call(pipe.execute)

        leases, corrupt, waiters = [], [], {}
        for entry, key, raw, queue in zip(fields, keys, replies[::2], replies[1::2], strict=True):
            if raw is None:
                continue
            try:
                leases.append(_parse_lease(raw, key))
            except CorruptRecord:
                corrupt.append(key)
                continue
            holders = [holder for raw in queue if (holder := _waiter_holder(raw, now))]
            if holders:
                waiters[entry] = holders
        return LeaseListing(leases, corrupt, now, waiters, left_out)

    async def lease_counts(self) -> tuple[dict[LeaseKind, int], int]:
        """Live leases by kind and the number of waiters, counted inside Redis (after a
        sweep, so leases that just expired are not counted)."""
        await self.sweep_due()
        locks, claims, waiters = await self._call(
            self._count_leases, keys=[self.key("leases")], args=[self._prefix + ":"]
        )
        return {LeaseKind.LOCK: int(locks), LeaseKind.CLAIM: int(claims)}, int(waiters)

    async def sweep_due(self, *, limit: int = 500) -> SweepResult:
        """Turn due expiries and reminders into events (and hand freed leases on)."""
        expired, reminders, due, now = await self._call(
            self._sweep, keys=[self.key("timeline")], args=[limit]
        )
        if expired or reminders:
            log.info("sweep expired=%s reminders=%s", expired, reminders)
        return SweepResult(int(expired), int(reminders), int(due), int(now))

    async def history(
        self, name: str, *, count: int, kinds: tuple[str, ...] | None = None
    ) -> list[Event]:
        """The last `count` events about `name` (of the given kinds, or any), newest first.

        The stream is shared by every resource, so this reads it backwards in pages until
        enough matching events are found or the (capped) stream ends.
        """
        found: list[Event] = []
        end = "+"
        while len(found) < count:
            page = await self._call(self._redis.xrevrange, self.key("events"), end, "-", 500)
            if not page:
                break
            for entry_id, fields in page:
                event = _parse_event(str(entry_id), dict(fields or {}))
                if event is None or event.name != name:
                    continue
                if kinds is None or event.kind in kinds:
                    found.append(event)
            end = "(" + str(page[-1][0])
        return found[:count]

    async def is_marked(self, kind: str, mark: str) -> bool:
        """Whether `mark` was recorded (see `mark`)."""
        return bool(await self._call(self._redis.exists, self.key("done", kind, mark)))

    async def mark(self, kind: str, mark: str, *, ttl_s: int) -> None:
        """Record that something was done (an announcement posted), for `ttl_s` seconds."""
        await self._call(self._redis.set, self.key("done", kind, mark), "1", ex=ttl_s)

    async def ensure_event_group(self, group: str) -> None:
        """Create the consumer group that shares announcement work between replicas.

        A new group starts at the end of the stream: history from before deploybot first
        ran is not announced; everything after is, even if it happened while it was down.
        """
        try:
            await self._call(
                self._redis.xgroup_create, self.key("events"), group, id="$", mkstream=True
            )
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def read_events(
        self, group: str, consumer: str, *, count: int = 50, block_ms: int = 1000
    ) -> list[Event]:
        """New events for this consumer (each goes to one consumer of the group)."""
        reply: Any = await self._call(
            self._redis.xreadgroup,
            group,
            consumer,
            {self.key("events"): ">"},
            count=count,
            block=block_ms,
        )
        return [event for _stream, entries in reply or [] for event in _events(entries)]

    async def claim_stale_events(
        self, group: str, consumer: str, *, min_idle_ms: int = 60_000
    ) -> list[Event]:
        """Take over events another consumer read but never acknowledged (it crashed)."""
        reply = await self._call(
            self._redis.xautoclaim,
            self.key("events"),
            group,
            consumer,
            min_idle_ms,
            start_id="0-0",
            count=100,
        )
        return _events(reply[1] if reply else [])

    async def ack_event(self, group: str, event_id: str) -> None:
        """Mark an event as announced."""
        await self._call(self._redis.xack, self.key("events"), group, event_id)

    async def set_job(self, job: Job) -> Job:
        """Record a job status; `updated_at` comes from Redis.

        A `url` or `detail` of None keeps the previous value; an empty string clears it.
        """
        data = {key: value for key, value in job.to_dict().items() if value is not None}
        del data["updated_at"]
        keys = [self.key("jobs"), self.key("events")]
        raw = await self._call(self._set_job, keys=keys, args=[_dumps(data)])
        return Job.from_json(raw)

    async def remove_job(self, name: str, *, removed_by: str) -> bool:
        """Forget a job; False when there was none by that name."""
        keys = [self.key("jobs"), self.key("events")]
        args = [name, removed_by]
        return bool(await self._call(self._remove_job, keys=keys, args=args))

    async def jobs(self, *, retention_ms: int) -> JobListing:
        """Job statuses (finished ones older than the retention dropped) and corrupt names."""
        reply = await self._call(self._list_jobs, keys=[self.key("jobs")], args=[retention_ms])
        now, flat = int(reply[0]), reply[1:]
        jobs, corrupt = [], []
        for name, raw in zip(flat[::2], flat[1::2], strict=True):
            try:
                jobs.append(Job.from_json(raw))
            except (ValueError, KeyError, TypeError):
                corrupt.append(_text(name))
        return JobListing(sorted(jobs, key=lambda job: job.name), corrupt, now)

    async def first_sighting(self, platform: str, event_id: str, *, ttl_s: int = 600) -> bool:
        """Claim a chat event for handling; False when it was seen before (a redelivery).

        Several deploybot processes may receive the same event; the one whose SET NX wins
        handles it.
        """
        key = self.key("seen", platform, event_id)
        return bool(await self._call(self._redis.set, key, "1", nx=True, ex=ttl_s))

    async def _run_lease_script(
        self,
        script: _Script,
        kind: LeaseKind,
        name: str,
        via: Origin | None,
        request: dict[str, Any],
    ) -> tuple[str, Lease, int]:
        """Run a lease script; map free and corrupt outcomes to their errors."""
        outcome, now, _, raw = await self._lease_script(script, kind, name, via, request)
        self._refuse_free_or_corrupt(outcome, kind, name)
        return outcome, self._parse(raw, kind, name), now

    def _refuse_free_or_corrupt(self, outcome: str, kind: LeaseKind, name: str) -> None:
        """Raise NotHeld or CorruptRecord for a lease script's `free` or `corrupt` answer."""
        if outcome == "free":
            raise NotHeld(kind, name)
        if outcome == "corrupt":
            raise CorruptRecord(self._lease_key(kind, name))

    async def _lease_script(
        self,
        script: _Script,
        kind: LeaseKind,
        name: str,
        via: Origin | None,
        request: dict[str, Any],
    ) -> tuple[str, int, int, str]:
        """Run a lease script: its outcome, Redis's time, a waitlist position, the lease JSON.

        `request` holds the script's own fields (see bot.scripts); which lease, and `via`,
        are added here.
        """
        request["kind"], request["name"] = kind, name
        if via:
            request["via"] = via.__dict__
        reply = await self._call(
            script, keys=[self._lease_key(kind, name)], args=[_dumps(request)]
        )
        outcome, now, position, raw = _text(reply).split(" ", 3)
        return outcome, int(now), int(position), raw

    def _parse_or_placeholder(self, raw: str, kind: LeaseKind, name: str, now: int) -> Lease:
        """Parse a released lease; a force-cleared corrupt record yields a placeholder."""
        try:
            return self._parse(raw, kind, name)
        except CorruptRecord:
            unknown = Holder("unknown", "unknown", "unknown (corrupt record)")
            return Lease(kind, name, unknown, "", now, now, 0)

    def _parse(self, raw: str, kind: LeaseKind, name: str) -> Lease:
        """A lease a script answered with; CorruptRecord (naming its key) when unreadable."""
        try:
            return Lease.from_json(raw)
        except (ValueError, KeyError, TypeError) as error:
            # The key only for the error: building it costs more than the parse.
            raise _corrupt(self._lease_key(kind, name), error) from None

    def _lease_key(self, kind: LeaseKind, name: str) -> str:
        return self.key("lease", kind, name)

    async def _call(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Call Redis, turning "cannot reach it" into StoreUnavailable."""
        try:
            answer = await func(*args, **kwargs)
        except _UNAVAILABLE as error:
            raise self._unavailable(_reason(error)) from error
        except ResponseError as error:
            text = str(error)
            refusal = _refusal(error)
            if refusal:
                raise self._unavailable(refusal) from error
            if "unknown command" in text.lower():
                log.warning("state store lacks a command; not a Redis 6.2+ server?")
                raise StoreUnavailable("the server is not a Redis 6.2+ compatible one") from error
            if "WRONGTYPE" in text:
                log.warning(
                    "a deploybot key holds the wrong type of value namespace=%s", self._prefix
                )
                raise CorruptState(self._prefix) from error
            raise
        except RedisClusterException as error:
            why = _cluster_failure(error)
            if why is None:
                raise
            raise self._unavailable(why) from error
        if self._outage.failures:
            self._outage.recovered()
        return answer

    def _unavailable(self, reason: str) -> StoreUnavailable:
        """The error for a call Redis could not serve, counted towards the outage log."""
        self._outage.failed(reason)
        return StoreUnavailable(reason)


class OutageLog:
    """Logs an outage without flooding the log: a warning when Redis first fails (or fails
    for a new reason), then at most one every `interval_s` with the count of failed calls,
    and one line when it answers again. The timeline alone calls Redis twice a second."""

    def __init__(self, interval_s: float = OUTAGE_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.failures = 0
        self._reason = ""
        self._logged_at = -math.inf

    def failed(self, reason: str) -> None:
        self.failures += 1
        now = time.monotonic()
        if reason != self._reason or now - self._logged_at >= self.interval_s:
            log.warning("state store unavailable reason=%s failed_calls=%d", reason, self.failures)
            self._reason, self._logged_at = reason, now

    def recovered(self) -> None:
        log.warning("state store answers again after failed_calls=%d", self.failures)
        self.failures, self._reason, self._logged_at = 0, "", -math.inf


@dataclass(frozen=True)
class Topology:
    """A Sentinel or Cluster Redis URL taken apart. Passwords stay out of its repr."""

    kind: Literal["sentinel", "cluster"]
    tls: bool
    hosts: tuple[tuple[str, int], ...]
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def check_redis_url(url: str) -> None:
    """Refuse a Redis URL that cannot work, saying what one looks like (no secrets shown)."""
    if _scheme(url) in (*_SENTINEL_SCHEMES, *_CLUSTER_SCHEMES):
        parse_topology_url(url)
        return

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _bad_url("is malformed") from None
    if not parts.scheme or "://" not in url:
        raise _bad_url("is not a URL")
    if parts.scheme not in _PLAIN_SCHEMES:
        raise _bad_url(f"has the scheme {parts.scheme!r}")
    if parts.scheme != "unix" and not parts.hostname:
        raise _bad_url("names no host")
    if port == 0:
        raise _bad_url("has port 0; the port must be 1-65535")
    database = parts.path.strip("/") if parts.scheme != "unix" else ""
    database = database or parse_qs(parts.query).get("db", [""])[0]
    if database and not (database.isascii() and database.isdigit()):
        raise _bad_url(f"has the database {database[:20]!r}, which is not a number (/0)")
    unverified = sorted(set(parse_qs(parts.query)) & set(_UNVERIFIED_TLS_OPTIONS))
    if unverified:
        raise UsageError(
            f"The Redis URL sets {unverified[0]}, but deploybot always verifies the server's "
            "TLS certificate and host name. Remove it; for a server signed by your own CA, "
            "set redis_ca_file."
        )


def parse_topology_url(url: str) -> Topology:
    """Take a redis+sentinel:// or redis+cluster:// URL apart, refusing a malformed one.

    The form is `SCHEME://[[user]:password@]host[:port],host[:port].../PATH[?OPTIONS]`, with
    `PATH` = `service[/db]` for Sentinel (whose password applies to the master; the
    sentinels' own comes from `?sentinel_password=`) and nothing or `0` for Cluster. The
    standard library reads no list of hosts, so it is split here.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _bad_url("is malformed") from None
    sentinel = parts.scheme in _SENTINEL_SCHEMES
    userinfo, _, host_list = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo)
    default_port = _SENTINEL_PORT if sentinel else _REDIS_PORT
    hosts = tuple(_host_and_port(address, default_port) for address in host_list.split(","))
    options = _options(parts.query, allowed=("sentinel_password",) if sentinel else ())

    if sentinel:
        service, db = _service_and_db(parts.path)
    else:
        service, db = "", _cluster_db(parts.path)
    return Topology(
        kind="sentinel" if sentinel else "cluster",
        tls=parts.scheme.startswith("rediss"),
        hosts=hosts,
        service=service,
        db=db,
        username=username,
        password=password,
        sentinel_password=options.get("sentinel_password") or None,
    )


def _scheme(url: str) -> str:
    scheme, separator, _ = url.partition("://")
    return scheme.lower() if separator else ""


def _bad_url(problem: str) -> UsageError:
    return UsageError(f"The Redis URL {problem}; use one like {_EXAMPLES}.")


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    """User name and password from `user:password`; a lone word is a user name (as redis-py)."""
    user, colon, secret = userinfo.partition(":")
    if not colon:
        return unquote(user) or None, None
    return unquote(user) or None, unquote(secret) or None


def _host_and_port(address: str, default_port: int) -> tuple[str, int]:
    """One `host[:port]` of the host list ([...] around an IPv6 address).

    The address is not echoed in errors: a password with an unescaped `/` or `@` would end
    up here.
    """
    what = "host list (host:port, separated by commas)"
    try:
        parts = urlsplit("//" + address)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise _bad_url(f"has a malformed address in its {what}") from None
    if not host:
        raise _bad_url(f"has an empty entry in its {what}")
    if port == 0:
        raise _bad_url("has port 0; the port must be 1-65535")
    return host, port or default_port


def _options(query: str, *, allowed: tuple[str, ...]) -> dict[str, str]:
    """The URL's `?name=value` options, refusing any this form does not take."""
    options = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = "only " + ", ".join(allowed) if allowed else "no options"
        raise UsageError(
            f"The Redis URL has the option {unknown[0]!r}, which deploybot does not know; "
            f"this form takes {takes}."
        )
    return {name: values[-1] for name, values in options.items()}


def _service_and_db(path: str) -> tuple[str, int]:
    """`/service[/db]` of a Sentinel URL."""
    segments = [unquote(segment) for segment in path.strip("/").split("/") if segment]
    if not segments:
        raise _bad_url("names no Sentinel service (the monitored master's name, /mymaster)")
    if len(segments) > 2:
        raise _bad_url("has more than /service/db after the host list")
    if len(segments) == 1:
        return segments[0], 0
    return segments[0], _db_number(segments[1])


def _cluster_db(path: str) -> int:
    """A Cluster has only database 0; the URL may say so or say nothing."""
    text = path.strip("/")
    if text not in ("", "0"):
        raise _bad_url("names a database, but a Redis Cluster has only database 0")
    return 0


def _db_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise _bad_url("has a database that is not a number (/mymaster/0)")
    return int(text)


def _reason(error: Exception) -> str:
    """A short, secret-free account of why Redis could not be used."""
    tls = _tls_failure(error)
    if tls:
        return tls
    if isinstance(error, AuthenticationError):
        return "the password was refused"
    if isinstance(error, MasterNotFoundError):
        if isinstance(error.__cause__, AuthenticationError):
            return "the sentinels refused the password (sentinel_password in the URL)"
        if error.__cause__ is not None:
            return "no sentinel could be reached"
        return "Sentinel names no reachable master; a failover may be under way"
    if isinstance(error, ClusterError):
        return "the cluster is down or being reconfigured"
    if isinstance(error, InvalidResponse):
        return "the server does not speak the Redis protocol"
    if isinstance(error, RedisTimeoutError | TimeoutError):
        return "it did not answer in time"
    if isinstance(error, BusyLoadingError):
        return "it is still loading its data"
    if isinstance(error, ReadOnlyError):
        return "it is a read-only replica"
    if isinstance(error, RedisConnectionError) and str(error) == _POOL_EXHAUSTED:
        return (
            f"deploybot is overloaded: all {POOL_SIZE} connections to Redis stayed busy "
            f"for {POOL_WAIT_S:g} s"
        )
    return "could not connect"


def _refusal(error: ResponseError) -> str | None:
    """Why Redis will not serve commands now (busy, read-only, out of memory, not allowed),
    or None for an error that is about the command itself."""
    text = str(error)
    if text.startswith(("LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN")):
        return f"Redis answered {text.split()[0]}"
    if isinstance(error, OutOfMemoryError) or text.startswith("OOM"):
        return "Redis is out of memory (its maxmemory is reached)"
    if isinstance(error, NoPermissionError) or text.startswith("NOPERM"):
        return "the Redis user may not run deploybot's commands (check its ACL)"
    if "DB index is out of range" in text or "invalid DB index" in text:
        return "the database number in the Redis URL does not exist on that server"
    return None


def _cluster_failure(error: RedisClusterException) -> str | None:
    """Why a Cluster cannot serve, or None when the error is a bug in how it was called.

    redis-py raises RedisClusterException both for a cluster it cannot reach or whose slot
    map is incomplete, and for commands it cannot route; only the former is an outage.
    """
    text = str(error)
    if "Cluster mode is not enabled" in text:
        return "the server is not a cluster; use redis:// for a single server"
    if isinstance(error, SlotNotCoveredError) or "not covered" in text or "agree" in text:
        return "the cluster is down or being reconfigured"
    if isinstance(error.__cause__, RedisError | OSError):
        return _reason(error.__cause__)
    return None


def _tls_failure(error: BaseException) -> str | None:
    """Why the TLS handshake failed, when that is why connecting failed.

    redis-py reports it as a plain ConnectionError; the ssl error is its context.
    """
    cause: BaseException | None = error
    for _ in range(_MAX_CAUSES):
        if cause is None:
            break
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                "its TLS certificate could not be verified: unknown CA or wrong host name; "
                "set redis_ca_file to the CA that signed it"
            )
        if isinstance(cause, ssl.SSLError):
            return "the TLS handshake failed"
        cause = cause.__cause__ or cause.__context__
    if "CERTIFICATE_VERIFY_FAILED" in str(error):
        return "its TLS certificate could not be verified"
    return None


def connect(url: str, *, password: str | None = None, ca_file: Path | None = None) -> RedisClient:
    """A client for `url` with short timeouts, so an outage is reported, not waited out.

    Every form with TLS (`rediss`, `rediss+sentinel`, `rediss+cluster`) verifies the
    server's certificate and host name, against `ca_file` when given (a private CA), else
    the system's CAs. A password in the URL wins over `password`.
    """
    check_redis_url(url)
    scheme = _scheme(url)
    tls = scheme.startswith("rediss")
    if ca_file is not None and not tls:
        log.warning("redis_ca_file is set, but the Redis URL does not use TLS (rediss)")
    if tls and ca_file is not None and not ca_file.is_file():
        raise UsageError(f"redis_ca_file {ca_file} is not a file; it must be the CA's PEM file.")

    tls_options = _tls_options(ca_file) if tls else {}
    if scheme in _SENTINEL_SCHEMES:
        return _sentinel_master(parse_topology_url(url), password, tls_options)
    if scheme in _CLUSTER_SCHEMES:
        return _cluster(parse_topology_url(url), password, tls_options)
    # A pool that makes a burst of commands wait for a free connection, instead of failing
    # them with "too many connections" (which users would be told is an outage).
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        password=password,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT_S,
        **_CLIENT_OPTIONS,
        **tls_options,
    )
    return aioredis.Redis(connection_pool=pool)


def _tls_options(ca_file: Path | None) -> dict[str, Any]:
    """Verified TLS: certificate required, host name checked."""
    return {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(ca_file) if ca_file else None,
    }


class _SentinelMaster(aioredis.Redis):
    """The master's client from Sentinel; closing it closes the sentinel connections too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            await pool.sentinel_manager.aclose()


class _FollowingMasterPool(SentinelConnectionPool):
    """A Sentinel pool that notices a failover while its connections are still open.

    redis-py asks the sentinels only when it opens a connection. After a failover the old
    master keeps serving open connections until Sentinel demotes it, seconds later, and every
    write it takes meanwhile is lost when it resyncs from the new master. So before handing
    out a connection this pool asks the sentinels again (one small query) and reconnects a
    connection that points at the old master.
    """

    _quiet_until = float("-inf")

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        await self._check_master()
        # redis-py leaves its pools unannotated.
        connection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        try:
            address = (connection.host, connection.port)
            if self.master_address and connection.is_connected and address != self.master_address:
                await connection.disconnect()
                await connection.connect()
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def get_master_address(self) -> Any:
        """The master's address; when no sentinel names one, say why if a sentinel can."""
        try:
            return await super().get_master_address()  # type: ignore[no-untyped-call]
        except MasterNotFoundError as error:
            cause = await self._sentinel_failure()
            if cause is None:
                raise
            raise MasterNotFoundError(str(error)) from cause

    async def _sentinel_failure(self) -> Exception | None:
        """Why no sentinel can be asked (unreachable, password, TLS), or None if one can.

        redis-py's MasterNotFoundError keeps only the type of each sentinel's error, so the
        sentinels are asked for a PING to learn the rest.
        """
        failure: Exception | None = None
        for sentinel in self.sentinel_manager.sentinels:
            try:
                await sentinel.ping()
            except (RedisError, OSError) as error:
                failure = failure or error
            else:
                return None
        return failure

    async def _check_master(self) -> None:
        """Refresh the master's address (dropping idle connections when it moved).

        When no sentinel answers, the connection itself will tell whether Redis works, and
        asking again is skipped for a while, so unreachable sentinels do not slow every
        command by their connect timeout.
        """
        if time.monotonic() < self._quiet_until:
            return
        try:
            await self.get_master_address()
        except (RedisError, OSError):
            self._quiet_until = time.monotonic() + _SENTINEL_QUIET_S
            log.debug("sentinels named no master; not asking again for %ss", _SENTINEL_QUIET_S)


def _sentinel_master(
    topology: Topology, password: str | None, tls_options: dict[str, Any]
) -> aioredis.Redis:
    """A client that asks the sentinels which server is the master, and follows failovers.

    Connections to a demoted master are dropped (it answers READONLY, or the pool notices
    the switch) and the next connection goes to the server the sentinels now name.
    """
    secure: dict[str, Any] = {"ssl": True, **tls_options} if tls_options else {}
    # redis-py leaves Sentinel's constructor unannotated.
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(topology.hosts),
        sentinel_kwargs={
            "password": topology.sentinel_password,
            "socket_connect_timeout": _CLIENT_OPTIONS["socket_connect_timeout"],
            "socket_timeout": _CLIENT_OPTIONS["socket_timeout"],
            # Finding the master already moves on to the next sentinel; retrying one that
            # is down would only delay that.
            "retry": Retry(NoBackoff(), 0),
            **secure,
        },
    )
    client: aioredis.Redis = sentinel.master_for(
        topology.service,
        redis_class=_SentinelMaster,
        connection_pool_class=_FollowingMasterPool,
        username=topology.username,
        password=topology.password or password,
        db=topology.db,
        **_CLIENT_OPTIONS,
        **secure,
    )
    return client


def _cluster(
    topology: Topology, password: str | None, tls_options: dict[str, Any]
) -> RedisCluster:
    """A Cluster client that learns the slot map from any of the listed nodes."""
    secure: dict[str, Any] = {"ssl": True, **tls_options} if tls_options else {}
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in topology.hosts],
        username=topology.username,
        password=topology.password or password,
        **_CLIENT_OPTIONS,
        **secure,
    )


@asynccontextmanager
async def open_store(
    url: str, *, namespace: str, events_max: int = 10_000, password: str | None = None
) -> AsyncIterator[Store]:
    """A store for the duration of a `with` block."""
    store = Store(connect(url, password=password), namespace=namespace, events_max=events_max)
    try:
        yield store
    finally:
        await store.close()


def _page(fields: list[str], limit: int) -> tuple[list[str], dict[LeaseKind, int]]:
    """At most `limit` of the sorted "kind:name" fields, shared evenly between the kinds (a
    kind with fewer than its share leaves the rest to the other), and how many of each kind
    were left out."""
    by_kind = {
        kind: [entry for entry in fields if entry.startswith(f"{kind}:")] for kind in LeaseKind
    }
    taken, room = {}, limit
    # The kind with fewer leases first, so what it does not use goes to the next.
    for number, kind in enumerate(sorted(LeaseKind, key=lambda kind: len(by_kind[kind]))):
        taken[kind] = min(len(by_kind[kind]), room // (len(LeaseKind) - number))
        room -= taken[kind]
    page = [entry for kind in LeaseKind for entry in by_kind[kind][: taken[kind]]]
    left_out = {
        kind: len(by_kind[kind]) - taken[kind]
        for kind in LeaseKind
        if len(by_kind[kind]) > taken[kind]
    }
    return page, left_out


def _parse_lease(raw: str | bytes, key: str) -> Lease:
    """Parse a stored lease, reporting a damaged one as CorruptRecord."""
    try:
        return Lease.from_json(raw)
    except (ValueError, KeyError, TypeError) as error:
        raise _corrupt(key, error) from None


def _corrupt(key: str, error: Exception) -> CorruptRecord:
    """The error for the unreadable lease record at `key`, logged once here."""
    log.warning("corrupt lease record key=%s error=%s", key, type(error).__name__)
    return CorruptRecord(key)


def _parse_event(entry_id: str, fields: dict[Any, Any]) -> Event | None:
    """Parse a stream entry; entries not written by deploybot are skipped."""
    try:
        data = orjson.loads(fields.get("data") or "{}")
        return Event(
            id=_text(entry_id),
            type=fields["type"],
            kind=fields["kind"],
            name=fields["name"],
            at=int(fields["at"]),
            data=data if isinstance(data, dict) else {},
        )
    except (ValueError, KeyError, TypeError):
        log.warning("unreadable event id=%s", entry_id)
        return None


def _events(entries: Any) -> list[Event]:
    """Parse stream entries; deleted or foreign ones are skipped."""
    events = []
    for entry_id, fields in entries or []:
        if fields:
            event = _parse_event(str(entry_id), dict(fields))
            if event is not None:
                events.append(event)
    return events


def _waiter_holder(raw: str | bytes, now_ms: int) -> Holder | None:
    """The holder in a waitlist entry, or None for an unreadable one or a wait that ran out."""
    try:
        waiter = orjson.loads(raw)
        if int(waiter.get("gives_up_at") or now_ms) < now_ms:
            return None
        return Holder.from_dict(waiter["holder"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _dumps(data: dict[str, Any]) -> bytes:
    """Compact JSON for a script's request: orjson, as every lease operation encodes one."""
    return orjson.dumps(data)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
