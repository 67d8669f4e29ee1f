"""Redis state: every mutation is one atomic Lua script, every time comes from Redis `TIME`.

Key layout (all under one hash tag, so a Redis Cluster keeps them in one slot):

    {ns}:lease:<kind>:<name>   string, JSON lease, PX TTL      the truth: gone means free
    {ns}:leases                hash "<kind>:<name>" -> JSON    index for status, and the last
                                                               snapshot of a lease for its
                                                               "expired" event
    {ns}:fence:<kind>:<name>   string                          last fencing token issued
    {ns}:timeline              sorted set, score = due ms      pending expiries
    {ns}:events                capped stream                   every state change
    {ns}:jobs                  hash name -> JSON               job statuses
    {ns}:seen:<platform>:<id>  string, short TTL               chat event de-duplication

A lease frees itself through its TTL even when no deploybot runs. The "expired" event for
it is written by whoever notices first: the sweep (`sweep_due`), or the next script that
finds the lease key gone but its snapshot still in the index. Either way exactly once,
because each is one script.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    InvalidResponse,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from bot.errors import CorruptRecord, LeaseHeld, NotHeld, NotHolder, StoreUnavailable
from bot.model import Event, Holder, Job, Lease, LeaseKind, Origin

log = logging.getLogger(__name__)

T = TypeVar("T")

# Shared Lua helpers, prepended to every script. Scripts cannot call each other, so the
# helpers travel with each one.
_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers above 2^31 must not go through tostring, which may use exponent notation.
local function int(n)
  return string.format('%.0f', n)
end

local function emit(stream, cap, type, kind, name, now, data)
  redis.call('XADD', stream, 'MAXLEN', '~', cap, '*',
    'type', type, 'kind', kind, 'name', name, 'at', int(now), 'data', data)
end

-- A lease as deploybot wrote it, or nil for anything else (hand-edited or damaged), so a
-- bad record is reported as corrupt instead of breaking the script halfway.
local function decode_lease(raw, kind, name)
  local ok, lease = pcall(cjson.decode, raw)
  if not ok or type(lease) ~= 'table' or type(lease.holder) ~= 'table'
     or lease.kind ~= kind or lease.name ~= name
     or type(lease.holder.platform) ~= 'string' or type(lease.holder.user_id) ~= 'string'
     or not tonumber(lease.token) or not tonumber(lease.expires_at)
     or not tonumber(lease.acquired_at) then
    return nil
  end
  return lease
end

local function same_holder(lease, holder)
  return lease.holder.platform == holder.platform and lease.holder.user_id == holder.user_id
end

-- The lease key is gone but its snapshot is still indexed: it expired and nobody has
-- said so yet. Record that now, once.
local function flush_expired(index, timeline, events, cap, kind, name, now)
  local field = kind .. ':' .. name
  local stale = redis.call('HGET', index, field)
  if stale then
    redis.call('HDEL', index, field)
    redis.call('ZREM', timeline, 'expire:' .. field)
    emit(events, cap, 'expired', kind, name, now, stale)
  end
end

local function store_lease(lease_key, index, timeline, lease, ttl)
  local encoded = cjson.encode(lease)
  local field = lease.kind .. ':' .. lease.name
  redis.call('SET', lease_key, encoded, 'PX', ttl)
  redis.call('HSET', index, field, encoded)
  redis.call('ZADD', timeline, int(lease.expires_at), 'expire:' .. field)
  return encoded
end
"""

# Take a lease if free, refresh it if the caller already holds it, else report the holder.
# The fencing token is max(last token + 1, Redis TIME in ms): it only ever increases, even
# after a failover to a replica that missed the last writes, as long as clocks move forward.
# KEYS[1] lease key, KEYS[2] fence counter, KEYS[3] lease index, KEYS[4] timeline,
# KEYS[5] event stream.
# ARGV[1] kind, ARGV[2] name, ARGV[3] holder JSON, ARGV[4] note ('' keeps the current one
# on refresh), ARGV[5] TTL ms, ARGV[6] origin JSON or '', ARGV[7] event stream cap.
ACQUIRE_SCRIPT = (
    _PRELUDE
    + """
local now = now_ms()
local ttl = tonumber(ARGV[5])
local holder = cjson.decode(ARGV[3])
local raw = redis.call('GET', KEYS[1])

if raw then
  local lease = decode_lease(raw, ARGV[1], ARGV[2])
  if not lease then return {'corrupt', raw, int(now)} end
  if not same_holder(lease, holder) then return {'held', raw, int(now)} end
  lease.expires_at = now + ttl
  lease.holder.display = holder.display
  if ARGV[4] ~= '' then lease.note = ARGV[4] end
  local encoded = store_lease(KEYS[1], KEYS[3], KEYS[4], lease, ttl)
  emit(KEYS[5], ARGV[7], 'refreshed', ARGV[1], ARGV[2], now, encoded)
  return {'refreshed', encoded, int(now)}
end

flush_expired(KEYS[3], KEYS[4], KEYS[5], ARGV[7], ARGV[1], ARGV[2], now)
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local token = math.max(last + 1, now)
redis.call('SET', KEYS[2], int(token))

local lease = {kind = ARGV[1], name = ARGV[2], holder = holder, note = ARGV[4],
  acquired_at = now, expires_at = now + ttl, token = token}
if ARGV[6] ~= '' then lease.origin = cjson.decode(ARGV[6]) end
local encoded = store_lease(KEYS[1], KEYS[3], KEYS[4], lease, ttl)
emit(KEYS[5], ARGV[7], 'acquired', ARGV[1], ARGV[2], now, encoded)
return {'acquired', encoded, int(now)}
"""
)

# Release a lease: only by its holder, or by anyone when forced (admins; checked before).
# KEYS[1] lease key, KEYS[2] lease index, KEYS[3] timeline, KEYS[4] event stream.
# ARGV[1] kind, ARGV[2] name, ARGV[3] caller JSON, ARGV[4] event stream cap,
# ARGV[5] '1' to force, ARGV[6] reason (forced only).
RELEASE_SCRIPT = (
    _PRELUDE
    + """
local now = now_ms()
local caller = cjson.decode(ARGV[3])
local forced = ARGV[5] == '1'
local raw = redis.call('GET', KEYS[1])

if not raw then
  flush_expired(KEYS[2], KEYS[3], KEYS[4], ARGV[4], ARGV[1], ARGV[2], now)
  return {'free', '', int(now)}
end

local lease = decode_lease(raw, ARGV[1], ARGV[2])
if not lease and not forced then return {'corrupt', raw, int(now)} end
if lease and not forced and not same_holder(lease, caller) then
  return {'not_holder', raw, int(now)}
end

local field = ARGV[1] .. ':' .. ARGV[2]
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], field)
redis.call('ZREM', KEYS[3], 'expire:' .. field)

if forced then
  local record = lease or {kind = ARGV[1], name = ARGV[2], corrupt = raw}
  record.forced_by = caller
  record.reason = ARGV[6]
  emit(KEYS[4], ARGV[4], 'forced', ARGV[1], ARGV[2], now, cjson.encode(record))
  return {'forced', raw, int(now)}
end
emit(KEYS[4], ARGV[4], 'released', ARGV[1], ARGV[2], now, raw)
return {'released', raw, int(now)}
"""
)

# Extend a lease held by the caller: new expiry = Redis now + TTL.
# KEYS[1] lease key, KEYS[2] lease index, KEYS[3] timeline, KEYS[4] event stream.
# ARGV[1] kind, ARGV[2] name, ARGV[3] caller JSON, ARGV[4] TTL ms, ARGV[5] event stream cap.
EXTEND_SCRIPT = (
    _PRELUDE
    + """
local now = now_ms()
local caller = cjson.decode(ARGV[3])
local raw = redis.call('GET', KEYS[1])

if not raw then
  flush_expired(KEYS[2], KEYS[3], KEYS[4], ARGV[5], ARGV[1], ARGV[2], now)
  return {'free', '', int(now)}
end
local lease = decode_lease(raw, ARGV[1], ARGV[2])
if not lease then return {'corrupt', raw, int(now)} end
if not same_holder(lease, caller) then return {'not_holder', raw, int(now)} end

local ttl = tonumber(ARGV[4])
lease.expires_at = now + ttl
local encoded = store_lease(KEYS[1], KEYS[2], KEYS[3], lease, ttl)
emit(KEYS[4], ARGV[5], 'extended', ARGV[1], ARGV[2], now, encoded)
return {'extended', encoded, int(now)}
"""
)

# Turn due timeline entries into events, at most ARGV[2] per call, so the cost follows the
# number of due entries, never the number of live leases. A lease extended since its entry
# was scored is re-scored, not announced.
# KEYS[1] timeline, KEYS[2] lease index, KEYS[3] event stream.
# ARGV[1] lease key prefix ("{ns}:lease:"), ARGV[2] batch limit, ARGV[3] event stream cap.
SWEEP_SCRIPT = (
    _PRELUDE
    + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local expired = 0

for _, member in ipairs(due) do
  local kind, name = string.match(member, '^expire:([^:]+):(.+)$')
  local raw = kind and redis.call('GET', ARGV[1] .. kind .. ':' .. name)
  if not kind then
    redis.call('ZREM', KEYS[1], member)
  elseif raw then
    local lease = decode_lease(raw, kind, name)
    local due_at = lease and math.max(lease.expires_at, now + 1000) or now + 1000
    redis.call('ZADD', KEYS[1], int(due_at), member)
  else
    flush_expired(KEYS[2], KEYS[1], KEYS[3], ARGV[3], kind, name, now)
    redis.call('ZREM', KEYS[1], member)
    expired = expired + 1
  end
end
return {expired, #due}
"""
)

# Record a job status. KEYS[1] jobs hash, KEYS[2] event stream.
# ARGV[1] job JSON without updated_at, ARGV[2] event stream cap.
SET_JOB_SCRIPT = (
    _PRELUDE
    + """
local now = now_ms()
local job = cjson.decode(ARGV[1])
job.updated_at = now
local encoded = cjson.encode(job)
redis.call('HSET', KEYS[1], job.name, encoded)
emit(KEYS[2], ARGV[2], 'job', 'job', job.name, now, encoded)
return encoded
"""
)

# Remove a job status. KEYS[1] jobs hash, KEYS[2] event stream.
# ARGV[1] job name, ARGV[2] event stream cap, ARGV[3] remover's name.
REMOVE_JOB_SCRIPT = (
    _PRELUDE
    + """
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 1 then
  local data = cjson.encode({name = ARGV[1], removed_by = ARGV[3]})
  emit(KEYS[2], ARGV[2], 'job_removed', 'job', ARGV[1], now_ms(), data)
end
return removed
"""
)

# List jobs, dropping finished ones older than the retention. Returns Redis now, then name
# and value pairs; unparseable records are returned as they are, so the caller can report
# them instead of failing.
# KEYS[1] jobs hash. ARGV[1] retention ms.
LIST_JOBS_SCRIPT = (
    _PRELUDE
    + """
local now = now_ms()
local cutoff = now - tonumber(ARGV[1])
local entries = redis.call('HGETALL', KEYS[1])
local kept = {int(now)}
for i = 1, #entries, 2 do
  local ok, job = pcall(cjson.decode, entries[i + 1])
  local finished = ok and type(job) == 'table'
    and (job.status == 'succeeded' or job.status == 'failed')
    and tonumber(job.updated_at) and tonumber(job.updated_at) < cutoff
  if finished then
    redis.call('HDEL', KEYS[1], entries[i])
  else
    table.insert(kept, entries[i])
    table.insert(kept, entries[i + 1])
  end
end
return kept
"""
)

# Failures that mean "no usable Redis right now": down, unreachable, still loading, a
# read-only replica after a failover, a wrong password, or something else on that port.
_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    AuthenticationError,
    InvalidResponse,
    OSError,
)


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
    """Current leases, plus the keys whose records could not be read."""

    leases: list[Lease]
    corrupt: list[str]
    now_ms: int


@dataclass(frozen=True)
class JobListing:
    """Current job statuses, plus the names whose records could not be read."""

    jobs: list[Job]
    corrupt: list[str]
    now_ms: int


class Store:
    """deploybot's state in Redis. Methods raise StoreUnavailable when Redis cannot answer."""

    def __init__(self, client: aioredis.Redis, *, namespace: str, events_max: int = 10_000):
        self._redis = client
        self._prefix = "{" + namespace + "}"
        self._events_max = events_max
        self._acquire = client.register_script(ACQUIRE_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._extend = client.register_script(EXTEND_SCRIPT)
        self._sweep = client.register_script(SWEEP_SCRIPT)
        self._set_job = client.register_script(SET_JOB_SCRIPT)
        self._remove_job = client.register_script(REMOVE_JOB_SCRIPT)
        self._list_jobs = client.register_script(LIST_JOBS_SCRIPT)

    @property
    def redis(self) -> aioredis.Redis:
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
        except (RedisError, OSError):
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
    ) -> LeaseChange:
        """Take the lease, or refresh it when `holder` has it already (same token).

        Raises LeaseHeld when someone else holds it and CorruptRecord when the stored value
        cannot be read.
        """
        keys = [
            self._lease_key(kind, name),
            self.key("fence", kind, name),
            self.key("leases"),
            self.key("timeline"),
            self.key("events"),
        ]
        origin_json = _dumps(origin.__dict__) if origin else ""
        args = [kind, name, _dumps(holder.__dict__), note, ttl_ms, origin_json, self._events_max]
        outcome, lease, now = await self._run_lease_script(self._acquire, keys, args, kind, name)
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
        self, kind: LeaseKind, name: str, caller: Holder, *, force_reason: str | None = None
    ) -> LeaseChange:
        """Release the lease. Only its holder may, unless `force_reason` is given.

        Forcing is for admins; the caller checks that. A forced release also clears a
        corrupt record, which nothing else can.
        """
        keys = [
            self._lease_key(kind, name),
            self.key("leases"),
            self.key("timeline"),
            self.key("events"),
        ]
        forced = force_reason is not None
        args = [
            kind,
            name,
            _dumps(caller.__dict__),
            self._events_max,
            int(forced),
            force_reason or "",
        ]
        result = await self._call(self._release, keys=keys, args=args)
        outcome, raw, now = _text(result[0]), _text(result[1]), int(result[2])
        if outcome == "free":
            raise NotHeld(kind, name)
        if outcome == "corrupt":
            raise CorruptRecord(keys[0])

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
        if outcome == "forced":
            return LeaseChange(lease, now, outcome, forced_by=caller, reason=force_reason or "")
        return LeaseChange(lease, now, outcome)

    async def extend(
        self, kind: LeaseKind, name: str, caller: Holder, *, ttl_ms: int
    ) -> LeaseChange:
        """Move the expiry to Redis now + `ttl_ms`; only the holder may."""
        keys = [
            self._lease_key(kind, name),
            self.key("leases"),
            self.key("timeline"),
            self.key("events"),
        ]
        args = [kind, name, _dumps(caller.__dict__), ttl_ms, self._events_max]
        outcome, lease, now = await self._run_lease_script(self._extend, keys, args, kind, name)
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

    async def get(self, kind: LeaseKind, name: str) -> Lease | None:
        """The current lease on `name`, or None when it is free."""
        key = self._lease_key(kind, name)
        raw = await self._call(self._redis.get, key)
        if raw is None:
            return None
        return _parse_lease(raw, key)

    async def leases(self) -> LeaseListing:
        """Every live lease, from the index (no scan of the keyspace)."""
        await self.sweep_due()
        fields = sorted(_text(f) for f in await self._call(self._redis.hkeys, self.key("leases")))
        keys = [self.key("lease", field) for field in fields]
        raws = await self._call(self._redis.mget, keys) if keys else []
        now = await self.now_ms()

        leases, corrupt = [], []
        for key, raw in zip(keys, raws, strict=True):
            if raw is None:
                continue
            try:
                leases.append(_parse_lease(raw, key))
            except CorruptRecord:
                corrupt.append(key)
        return LeaseListing(leases, corrupt, now)

    async def sweep_due(self, *, limit: int = 500) -> int:
        """Record an "expired" event for each lease whose TTL ran out; returns how many."""
        keys = [self.key("timeline"), self.key("leases"), self.key("events")]
        args = [self.key("lease") + ":", limit, self._events_max]
        expired, _seen = await self._call(self._sweep, keys=keys, args=args)
        if expired:
            log.info("sweep expired=%s", expired)
        return int(expired)

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

    async def set_job(self, job: Job) -> Job:
        """Record a job status; `updated_at` comes from Redis."""
        data = job.to_dict()
        del data["updated_at"]
        keys = [self.key("jobs"), self.key("events")]
        raw = await self._call(self._set_job, keys=keys, args=[_dumps(data), self._events_max])
        return Job.from_json(raw)

    async def remove_job(self, name: str, *, removed_by: str) -> bool:
        """Forget a job; False when there was none by that name."""
        keys = [self.key("jobs"), self.key("events")]
        args = [name, self._events_max, removed_by]
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
        self, script: Any, keys: list[str], args: list[Any], kind: LeaseKind, name: str
    ) -> tuple[str, Lease, int]:
        """Run a lease script; map free and corrupt outcomes to their errors."""
        result = await self._call(script, keys=keys, args=args)
        outcome, raw, now = _text(result[0]), result[1], int(result[2])
        if outcome == "free":
            raise NotHeld(kind, name)
        if outcome == "corrupt":
            raise CorruptRecord(keys[0])
        return outcome, _parse_lease(raw, keys[0]), now

    def _parse_or_placeholder(self, raw: str, kind: LeaseKind, name: str, now: int) -> Lease:
        """Parse a released lease; a force-cleared corrupt record yields a placeholder."""
        try:
            return _parse_lease(raw, self._lease_key(kind, name))
        except CorruptRecord:
            unknown = Holder("unknown", "unknown", "unknown (corrupt record)")
            return Lease(kind, name, unknown, "", now, now, 0)

    def _lease_key(self, kind: LeaseKind, name: str) -> str:
        return self.key("lease", kind, name)

    async def _call(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Call Redis, turning "cannot reach it" into StoreUnavailable."""
        try:
            return await func(*args, **kwargs)
        except _UNAVAILABLE as error:
            log.warning("state store unavailable error=%s", type(error).__name__)
            raise StoreUnavailable() from error
        except ResponseError as error:
            if str(error).startswith(("LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN")):
                log.warning("state store not serving error=%s", str(error).split()[0])
                raise StoreUnavailable() from error
            raise


def connect(url: str, *, password: str | None = None) -> aioredis.Redis:
    """A client for `url` with short timeouts, so an outage is reported, not waited out."""
    return aioredis.Redis.from_url(
        url,
        password=password,
        decode_responses=True,
        socket_connect_timeout=3,
        socket_timeout=5,
        health_check_interval=30,
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


def _parse_lease(raw: str | bytes, key: str) -> Lease:
    """Parse a stored lease, reporting a damaged one as CorruptRecord."""
    try:
        return Lease.from_json(raw)
    except (ValueError, KeyError, TypeError) as error:
        log.warning("corrupt lease record key=%s error=%s", key, type(error).__name__)
        raise CorruptRecord(key) from None


def _parse_event(entry_id: str, fields: dict[Any, Any]) -> Event | None:
    """Parse a stream entry; entries not written by deploybot are skipped."""
    try:
        data = json.loads(fields.get("data") or "{}")
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


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
