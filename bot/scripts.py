"""The Lua scripts behind every mutation. Each runs atomically inside Redis.

Every lease script takes the same KEYS and leading ARGV, so the shared helpers in
`_PRELUDE` (expiry, reminders, waitlist handoff) work the same from any of them:

    KEYS[1] lease key      {ns}:lease:<kind>:<name>   (JSON, PX TTL; gone means free)
    KEYS[2] fence counter  {ns}:fence:<kind>:<name>   (last fencing token issued)
    KEYS[3] lease index    {ns}:leases                (hash "<kind>:<name>" -> snapshot)
    KEYS[4] timeline       {ns}:timeline              (zset of due expiries and reminders)
    KEYS[5] event stream   {ns}:events                (capped stream)
    KEYS[6] waitlist       {ns}:queue:<kind>:<name>   (list of waiter JSON, oldest first)

    ARGV[1] kind   ARGV[2] name   ARGV[3] "via" JSON (where the command came from) or ''

Script-specific arguments follow from ARGV[4]. A lease script answers with one string,
`<outcome> <Redis now ms> <waitlist position or 0> <lease JSON or nothing>`, which costs
the client far less to read than an array.

What stays the same for every call of one store (event stream cap, handoff mode, default
TTLs, reminder offsets) is not sent with each call: `with_policy` writes it into the
script's text as the `POLICY` table, so a lease operation sends little more than a plain
SET does.

Times always come from Redis `TIME`, so replicas never disagree about the clock.
Timestamps are milliseconds: 13 digits, exact in Lua's doubles and in cjson's 14-digit
number encoding.
"""

from __future__ import annotations

from collections.abc import Sequence

# Reminders per lease at most; the timeline members of one lease are `expire:<kind>:<name>`
# and `remind:<kind>:<name>:<1..MAX_REMINDERS>`.
MAX_REMINDERS = 10

HANDOFF_MODES = ("auto", "notify")


def with_policy(
    source: str,
    *,
    events_max: int,
    handoff: str,
    default_ttl_ms: tuple[int, int],
    reminder_offsets_ms: Sequence[int],
) -> str:
    """`source` with the store's policy defined in front of it as the Lua table `POLICY`.

    POLICY.cap (event stream cap), POLICY.handoff ('auto' gives a freed lease to the first
    waiter, 'notify' only tells them), POLICY.ttl[kind] (default TTL ms of a handed-off
    lease) and POLICY.offsets (reminder offsets ms before expiry, at most MAX_REMINDERS).
    """
    if handoff not in HANDOFF_MODES:
        raise ValueError(f"handoff must be one of {', '.join(HANDOFF_MODES)}, not {handoff!r}")
    if len(reminder_offsets_ms) > MAX_REMINDERS:
        raise ValueError(f"at most {MAX_REMINDERS} reminder offsets are supported")
    lock_ttl, claim_ttl = (int(ttl) for ttl in default_ttl_ms)
    offsets = ", ".join(str(int(offset)) for offset in reminder_offsets_ms)
    header = (
        f"local POLICY = {{cap = {int(events_max)}, handoff = '{handoff}',\n"
        f"  ttl = {{lock = {lock_ttl}, claim = {claim_ttl}}}, offsets = {{{offsets}}}}}\n"
        f"local MAX_REMINDERS = {MAX_REMINDERS}\n"
    )
    return header + source


_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers above 2^31 must not go through tostring, which may use exponent notation.
local function int(n)
  return string.format('%.0f', n)
end

-- A lease script's answer (see the module's docstring).
local function answer(outcome, now, raw, position)
  return outcome .. ' ' .. int(now) .. ' ' .. int(position or 0) .. ' ' .. (raw or '')
end

local function lease_context()
  return {lease = KEYS[1], fence = KEYS[2], index = KEYS[3], timeline = KEYS[4],
    events = KEYS[5], queue = KEYS[6], kind = ARGV[1], name = ARGV[2], via = ARGV[3]}
end

local function emit(ctx, type, now, data)
  redis.call('XADD', ctx.events, 'MAXLEN', '~', POLICY.cap, '*',
    'type', type, 'kind', ctx.kind, 'name', ctx.name, 'at', int(now), 'data', data)
end

-- `raw` (a JSON object) with extra fields, for an event's data.
local function with_fields(raw, extra)
  local ok, data = pcall(cjson.decode, raw)
  if not ok or type(data) ~= 'table' then data = {raw = raw} end
  for key, value in pairs(extra) do data[key] = value end
  return cjson.encode(data)
end

local function with_via(ctx, raw)
  if ctx.via == '' then return raw end
  return with_fields(raw, {via = cjson.decode(ctx.via)})
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

local function same_holder(a, b)
  return a.platform == b.platform and a.user_id == b.user_id
end

local function field(ctx)
  return ctx.kind .. ':' .. ctx.name
end

local function reminder_members(ctx, from)
  local members = {}
  for i = from, MAX_REMINDERS do members[#members + 1] = 'remind:' .. field(ctx) .. ':' .. i end
  return members
end

-- Every timeline entry of this lease, in one call.
local function clear_timeline(ctx)
  redis.call('ZREM', ctx.timeline, 'expire:' .. field(ctx), unpack(reminder_members(ctx, 1)))
end

-- The expiry entry and one reminder per configured offset before expiry; for a lease
-- shorter than twice an offset, at half its remaining life instead. Re-arming replaces
-- the earlier ones; a fresh lease has none (every way a lease ends clears its entries).
local function arm_timeline(ctx, lease, now, fresh)
  local left = lease.expires_at - now
  local entries, seen, count = {int(lease.expires_at), 'expire:' .. field(ctx)}, {}, 0
  for _, offset in ipairs(POLICY.offsets) do
    local due = (left >= 2 * offset) and (lease.expires_at - offset)
      or (now + math.floor(left / 2))
    if not seen[due] then
      seen[due] = true
      count = count + 1
      entries[#entries + 1] = int(due)
      entries[#entries + 1] = 'remind:' .. field(ctx) .. ':' .. count
    end
  end
  redis.call('ZADD', ctx.timeline, unpack(entries))
  if not fresh and count < MAX_REMINDERS then
    redis.call('ZREM', ctx.timeline, unpack(reminder_members(ctx, count + 1)))
  end
end

local function store_lease(ctx, lease, ttl, now, fresh)
  local encoded = cjson.encode(lease)
  redis.call('SET', ctx.lease, encoded, 'PX', ttl)
  redis.call('HSET', ctx.index, field(ctx), encoded)
  arm_timeline(ctx, lease, now, fresh)
  return encoded
end

-- A fresh acquisition. The fencing token is max(last token + 1, Redis TIME in ms): it
-- only ever increases, even after a failover to a replica that missed the last writes.
-- One SET ... GET stores TIME and reads the last token; only a token at or past TIME
-- (several in one millisecond, or a clock behind) takes a second write.
local function take(ctx, holder, note, ttl, origin, now)
  local token = now
  local last = tonumber(redis.call('SET', ctx.fence, int(token), 'GET') or '0') or 0
  if last >= token then
    token = last + 1
    redis.call('SET', ctx.fence, int(token))
  end
  local lease = {kind = ctx.kind, name = ctx.name, holder = holder, note = note,
    acquired_at = now, expires_at = now + ttl, token = token}
  if type(origin) == 'table' then lease.origin = origin end
  return store_lease(ctx, lease, ttl, now, true)
end

-- Position (1-based) of `holder` in the waitlist, or nil.
local function waiter_position(ctx, holder)
  local entries = redis.call('LRANGE', ctx.queue, 0, -1)
  for i, raw in ipairs(entries) do
    local ok, waiter = pcall(cjson.decode, raw)
    if ok and type(waiter) == 'table' and type(waiter.holder) == 'table'
       and same_holder(waiter.holder, holder) then
      return i, raw
    end
  end
  return nil
end

local function remove_waiter(ctx, holder)
  local position, raw = waiter_position(ctx, holder)
  if position then redis.call('LREM', ctx.queue, 1, raw) end
  return position
end

-- The resource just became free: give it to the first waiter ('auto'), or tell them
-- ('notify'). Unreadable waitlist entries are dropped, and so are waiters whose wait ran
-- out (a `--wait` that was killed could not leave the waitlist itself). The new lease keeps
-- the freed one's channel for its announcements unless the waiter asked from a channel of
-- their own.
local function hand_off(ctx, now, freed)
  while true do
    local raw = redis.call('LPOP', ctx.queue)
    if not raw then return end
    local ok, waiter = pcall(cjson.decode, raw)
    if ok and type(waiter) == 'table' and type(waiter.holder) == 'table'
       and not (tonumber(waiter.gives_up_at) and tonumber(waiter.gives_up_at) < now) then
      if POLICY.handoff == 'auto' then
        local ttl = tonumber(waiter.ttl) or POLICY.ttl[ctx.kind]
        local origin = waiter.origin
        if type(origin) ~= 'table' and type(freed) == 'table' then origin = freed.origin end
        local encoded = take(ctx, waiter.holder, waiter.note or '', ttl, origin, now)
        emit(ctx, 'acquired', now, with_fields(encoded, {handoff = true}))
      else
        emit(ctx, 'free', now, cjson.encode({kind = ctx.kind, name = ctx.name, next = waiter}))
      end
      return
    end
  end
end

-- The lease key is gone but its snapshot is still indexed: it expired and nobody has
-- said so yet. Record that now (once), then serve the waitlist.
local function flush_expired(ctx, now)
  local stale = redis.call('HGET', ctx.index, field(ctx))
  if not stale then return false end
  redis.call('HDEL', ctx.index, field(ctx))
  clear_timeline(ctx)
  local lease = decode_lease(stale, ctx.kind, ctx.name)
  local due = lease and lease.expires_at or now
  emit(ctx, 'expired', now, with_fields(stale, {due_at = due}))
  hand_off(ctx, now, lease)
  return true
end

-- The lease `caller` may change, with its stored text, or else the answer to give instead:
-- 'free' (after recording an unnoticed expiry), 'corrupt' or 'not_holder'. When forced,
-- anyone may, and a corrupt record comes back as a nil lease with its text.
local function callers_lease(ctx, now, caller, forced)
  local raw = redis.call('GET', ctx.lease)
  if not raw then
    flush_expired(ctx, now)
    return nil, nil, answer('free', now)
  end
  local lease = decode_lease(raw, ctx.kind, ctx.name)
  if not lease and not forced then return nil, raw, answer('corrupt', now, raw) end
  if lease and not forced and not same_holder(lease.holder, caller) then
    return nil, raw, answer('not_holder', now, raw)
  end
  return lease, raw, nil
end

-- The current lease, after recording an unnoticed expiry (which may hand it on).
local function current(ctx, now)
  local raw = redis.call('GET', ctx.lease)
  if raw or not flush_expired(ctx, now) then return raw end
  return redis.call('GET', ctx.lease)
end
"""

# Take a lease if free, refresh it if the caller already holds it, else report the holder.
# ARGV[4] holder JSON, ARGV[5] note ('' keeps the current note on refresh),
# ARGV[6] TTL ms, ARGV[7] origin JSON or '', ARGV[8] '1' when the TTL is a default, not
# asked for: then a refresh never shortens the lease.
ACQUIRE = (
    _PRELUDE
    + """
local ctx = lease_context()
local now = now_ms()
local holder = cjson.decode(ARGV[4])
local ttl = tonumber(ARGV[6])
local raw = current(ctx, now)

if raw then
  local lease = decode_lease(raw, ctx.kind, ctx.name)
  if not lease then return answer('corrupt', now, raw) end
  if not same_holder(lease.holder, holder) then return answer('held', now, raw) end
  if ARGV[8] == '1' and lease.expires_at > now + ttl then ttl = lease.expires_at - now end
  lease.expires_at = now + ttl
  lease.holder.display = holder.display
  if ARGV[5] ~= '' then lease.note = ARGV[5] end
  local encoded = store_lease(ctx, lease, ttl, now)
  emit(ctx, 'refreshed', now, with_via(ctx, encoded))
  return answer('refreshed', now, encoded)
end

local origin = ARGV[7] ~= '' and cjson.decode(ARGV[7]) or nil
local encoded = take(ctx, holder, ARGV[5], ttl, origin, now)
remove_waiter(ctx, holder)
emit(ctx, 'acquired', now, with_via(ctx, encoded))
return answer('acquired', now, encoded)
"""
)

# Release a lease: only by its holder, or by anyone when forced (admins; checked before).
# A forced release also clears a corrupt record. The freed lease goes to the waitlist.
# ARGV[4] caller JSON, ARGV[5] '1' to force, ARGV[6] reason (forced only).
RELEASE = (
    _PRELUDE
    + """
local ctx = lease_context()
local now = now_ms()
local caller = cjson.decode(ARGV[4])
local forced = ARGV[5] == '1'
local lease, raw, refusal = callers_lease(ctx, now, caller, forced)
if refusal then return refusal end

redis.call('DEL', ctx.lease)
redis.call('HDEL', ctx.index, field(ctx))
clear_timeline(ctx)

if forced then
  local record = lease or {kind = ctx.kind, name = ctx.name, corrupt = raw}
  record.forced_by = caller
  record.reason = ARGV[6]
  emit(ctx, 'forced', now, with_via(ctx, cjson.encode(record)))
else
  emit(ctx, 'released', now, with_via(ctx, raw))
end
hand_off(ctx, now, lease)
return answer(forced and 'forced' or 'released', now, raw)
"""
)

# Extend a lease held by the caller: new expiry = Redis now + TTL; reminders re-armed.
# ARGV[4] caller JSON, ARGV[5] TTL ms.
EXTEND = (
    _PRELUDE
    + """
local ctx = lease_context()
local now = now_ms()
local caller = cjson.decode(ARGV[4])
local lease, _, refusal = callers_lease(ctx, now, caller, false)
if refusal then return refusal end

local ttl = tonumber(ARGV[5])
lease.expires_at = now + ttl
local encoded = store_lease(ctx, lease, ttl, now)
emit(ctx, 'extended', now, with_via(ctx, encoded))
return answer('extended', now, encoded)
"""
)

# Join the waitlist (idempotent). A free resource is taken at once in 'auto' mode.
# Outcomes: 'holding' (the caller holds it already), 'waiting' (with the position),
# 'acquired' (it was free), 'free' ('notify' mode), 'corrupt'.
# ARGV[4] holder JSON, ARGV[5] note, ARGV[6] TTL ms or '', ARGV[7] origin JSON or '',
# ARGV[8] how long the caller will wait, ms, or '' (no limit). Joining again keeps the
# place in line and takes the new note, TTL and wait.
JOIN_WAITLIST = (
    _PRELUDE
    + """
local ctx = lease_context()
local now = now_ms()
local holder = cjson.decode(ARGV[4])
local raw = current(ctx, now)

if raw then
  local lease = decode_lease(raw, ctx.kind, ctx.name)
  if not lease then return answer('corrupt', now, raw) end
  if same_holder(lease.holder, holder) then return answer('holding', now, raw) end
  local waiter = {holder = holder, note = ARGV[5], since = now}
  if ARGV[6] ~= '' then waiter.ttl = tonumber(ARGV[6]) end
  if ARGV[7] ~= '' then waiter.origin = cjson.decode(ARGV[7]) end
  if ARGV[8] ~= '' then waiter.gives_up_at = now + tonumber(ARGV[8]) end
  local position = waiter_position(ctx, holder)
  if position then
    redis.call('LSET', ctx.queue, position - 1, cjson.encode(waiter))
    return answer('waiting', now, raw, position)
  end
  position = redis.call('RPUSH', ctx.queue, cjson.encode(waiter))
  emit(ctx, 'queued', now, with_via(ctx, cjson.encode({holder = holder, position = position})))
  return answer('waiting', now, raw, position)
end

if POLICY.handoff ~= 'auto' then return answer('free', now) end
local ttl = ARGV[6] ~= '' and tonumber(ARGV[6]) or POLICY.ttl[ctx.kind]
local origin = ARGV[7] ~= '' and cjson.decode(ARGV[7]) or nil
local encoded = take(ctx, holder, ARGV[5], ttl, origin, now)
emit(ctx, 'acquired', now, with_via(ctx, encoded))
return answer('acquired', now, encoded)
"""
)

# Leave the waitlist. Returns {'left' or 'not_waiting', position or 0}.
# ARGV[4] holder JSON.
LEAVE_WAITLIST = (
    _PRELUDE
    + """
local ctx = lease_context()
local holder = cjson.decode(ARGV[4])
local position = remove_waiter(ctx, holder)
if not position then return {'not_waiting', 0} end
emit(ctx, 'left', now_ms(), with_via(ctx, cjson.encode({holder = holder})))
return {'left', position}
"""
)

# Turn due timeline entries into events, at most ARGV[2] per call, so the cost follows the
# number of due entries, never the number of live leases. Taking them out is part of the
# script, so with several replicas sweeping, each entry is handled exactly once.
# KEYS[1] timeline, KEYS[2] lease index, KEYS[3] event stream.
# ARGV[1] key prefix ("{ns}:"), ARGV[2] batch limit.
# Returns {expired, reminders, due entries seen, Redis now ms}.
SWEEP = (
    _PRELUDE
    + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES',
  'LIMIT', 0, tonumber(ARGV[2]))
local expired, reminded = 0, 0

local function context_for(kind, name)
  local suffix = kind .. ':' .. name
  return {lease = ARGV[1] .. 'lease:' .. suffix, fence = ARGV[1] .. 'fence:' .. suffix,
    index = KEYS[2], timeline = KEYS[1], events = KEYS[3],
    queue = ARGV[1] .. 'queue:' .. suffix, kind = kind, name = name, via = ''}
end

for i = 1, #due, 2 do
  local member, score = due[i], tonumber(due[i + 1])
  local what, kind, name = string.match(member, '^(%a+):(%a+):(.+)$')
  if what == 'remind' then name = string.match(name, '^(.+):%d+$') end
  if not (what and kind and name) or (kind ~= 'lock' and kind ~= 'claim') then
    redis.call('ZREM', KEYS[1], member)
  else
    local ctx = context_for(kind, name)
    local raw = redis.call('GET', ctx.lease)
    local lease = raw and decode_lease(raw, kind, name)
    if what == 'expire' and raw then
      -- Still alive (extended since, or Redis has not expired it yet): look again later.
      local due_at = lease and math.max(lease.expires_at, now + 100) or now + 1000
      redis.call('ZADD', KEYS[1], int(due_at), member)
    elseif what == 'expire' then
      redis.call('ZREM', KEYS[1], member)
      if flush_expired(ctx, now) then expired = expired + 1 end
    else
      redis.call('ZREM', KEYS[1], member)
      if lease and lease.expires_at > now then
        emit(ctx, 'reminder', now, with_fields(raw, {due_at = score}))
        reminded = reminded + 1
      end
    end
  end
end
return {expired, reminded, #due / 2, int(now)}
"""
)

# Record a job status. A URL or detail left out keeps the previous one (a pipeline sets the
# link once, at `running`); an empty one clears it. KEYS[1] jobs hash, KEYS[2] event stream.
# ARGV[1] job JSON without updated_at.
SET_JOB = (
    _PRELUDE
    + """
local now = now_ms()
local job = cjson.decode(ARGV[1])
local ok, old = pcall(cjson.decode, redis.call('HGET', KEYS[1], job.name) or 'null')
if ok and type(old) == 'table' then
  if job.url == nil then job.url = old.url end
  if job.detail == nil then job.detail = old.detail end
end
if job.url == '' then job.url = nil end
if job.detail == '' then job.detail = nil end
job.updated_at = now
local encoded = cjson.encode(job)
redis.call('HSET', KEYS[1], job.name, encoded)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', POLICY.cap, '*',
  'type', 'job', 'kind', 'job', 'name', job.name, 'at', int(now), 'data', encoded)
return encoded
"""
)

# Remove a job status. KEYS[1] jobs hash, KEYS[2] event stream.
# ARGV[1] job name, ARGV[2] remover's name.
REMOVE_JOB = (
    _PRELUDE
    + """
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 1 then
  local data = cjson.encode({name = ARGV[1], removed_by = ARGV[2]})
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', POLICY.cap, '*',
    'type', 'job_removed', 'kind', 'job', 'name', ARGV[1], 'at', int(now_ms()), 'data', data)
end
return removed
"""
)

# List jobs, dropping finished ones older than the retention. Returns Redis now, then name
# and value pairs; unparseable records are returned as they are, so the caller can report
# them instead of failing. KEYS[1] jobs hash. ARGV[1] retention ms.
LIST_JOBS = (
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

# Count live leases by kind and the people waiting for them, in one round trip: metrics
# are scraped often, and copying every lease to the client just to count them would cost
# as much as a full listing. KEYS[1] lease index. ARGV[1] key prefix ("{ns}:").
# Returns {locks, claims, waiters}.
COUNT_LEASES = """
local locks, claims, waiters = 0, 0, 0
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 5) == 'lock:' then locks = locks + 1 else claims = claims + 1 end
  waiters = waiters + redis.call('LLEN', ARGV[1] .. 'queue:' .. field)
end
return {locks, claims, waiters}
"""
