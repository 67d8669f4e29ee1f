"""The Lua scripts behind every mutation. Each runs atomically inside Redis.

Every lease script is called the same way, so the shared helpers in `_PRELUDE` (expiry,
reminders, waitlist handoff) work the same from any of them:

    KEYS[1]  the lease key {ns}:lease:<kind>:<name>  (JSON, PX TTL; gone means free)
    ARGV[1]  the request, one JSON object: `kind`, `name`, `via` (where the command came
             from; left out when unknown), then the script's own fields

The other keys of a lease live in the same hash slot (the namespace is their hash tag), so
the scripts name them from the store's key prefix rather than taking them as KEYS; a Redis
Cluster accepts that, and the client sends a third of the bytes:

    {ns}:fence:<kind>:<name>   last fencing token issued
    {ns}:leases                hash "<kind>:<name>" -> snapshot (index, and the last state
                               of a lease for its "expired" event)
    {ns}:timeline              zset: each lease's next reminder or expiry, member
                               "<kind>:<name>"
    {ns}:events                capped stream of every change
    {ns}:queue:<kind>:<name>   the waitlist: waiter JSON, oldest first

A lease script answers with one string, `<outcome> <Redis now ms> <waitlist position or 0>
<lease JSON or nothing>`, which costs the client far less to read than an array.

What stays the same for every call of one store (key prefix, event stream cap, handoff mode,
default TTLs, reminder offsets) is not sent with each call: `policy_header` writes it into
the scripts' text, so a lease operation sends little more than a plain SET does.

Where the server has Redis Functions (Redis 7+, Valkey) the store loads all its scripts as
one library (`library`), so the helpers and the policy are defined once per load rather
than on every call, which was most of a lease operation's time inside Redis. Elsewhere
(Redis 6.2, or a user the ACL denies FUNCTION) each runs by EVALSHA (`script`). The same
text serves both: KEYS and ARGV are globals in a script and set per call in a function.

Times always come from Redis `TIME`, so replicas never disagree about the clock.
Timestamps are milliseconds: 13 digits, exact in Lua's doubles, in cjson's 14-digit number
encoding and in Lua's own number-to-text conversion (14 digits). Numbers are handed to
`redis.call` as numbers: Redis writes integers below 2^53 out exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

# Reminder offsets a policy may have at most.
MAX_REMINDERS = 10

HANDOFF_MODES = ("auto", "notify")


def policy_header(
    *,
    prefix: str,
    events_max: int,
    handoff: str,
    default_ttl_ms: tuple[int, int],
    reminder_offsets_ms: Sequence[int],
) -> str:
    """Lua defining one store's key prefix and policy, for the front of its scripts.

    PREFIX ("{ns}:") and the shared keys INDEX, TIMELINE and EVENTS, then the table POLICY:
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
    return (
        f"local PREFIX = {lua_string(prefix)}\n"
        f"local INDEX, TIMELINE, EVENTS = {lua_string(prefix + 'leases')}, "
        f"{lua_string(prefix + 'timeline')}, {lua_string(prefix + 'events')}\n"
        f"local POLICY = {{cap = {int(events_max)}, handoff = '{handoff}',\n"
        f"  ttl = {{lock = {lock_ttl}, claim = {claim_ttl}}}, offsets = {{{offsets}}}}}\n"
    )


def script(body: str, header: str) -> str:
    """One script for EVAL: the store's header, the shared helpers, then `body`."""
    return header + _PRELUDE + body


def library(bodies: Mapping[str, str], header: str) -> tuple[str, str]:
    """The store's scripts as one Redis Functions library: its name, and its code.

    Loaded once (`FUNCTION LOAD`), the helpers and the policy are defined once instead of on
    every call. The body called `acquire` becomes the function `<library name>_acquire`.
    The name is the code's hash, so stores with different policies never replace each
    other's library.
    """
    functions = "".join(
        f"redis.register_function('@_{name}', function(keys, args)\n"
        f"KEYS, ARGV = keys, args\n{body}\nend)\n"
        for name, body in bodies.items()
    )
    code = header + "local KEYS, ARGV\n" + _PRELUDE + functions
    name = "deploybot_" + hashlib.sha1(code.encode()).hexdigest()[:16]
    return name, f"#!lua name={name}\n" + code.replace("'@_", f"'{name}_")


def lua_string(text: str) -> str:
    """`text` as a Lua string literal: printable ASCII as it is, every other byte escaped."""
    escaped = "".join(
        f"\\{byte}" if byte < 0x20 or byte > 0x7E or chr(byte) in "\\'" else chr(byte)
        for byte in text.encode()
    )
    return f"'{escaped}'"


_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers above 10^14 must not go through tostring, which would use exponent notation;
-- only a hand-edited fencing counter gets there.
local function int(n)
  return string.format('%.0f', n)
end

-- A lease script's answer (see the module's docstring).
local function answer(outcome, now, raw, position)
  return outcome .. ' ' .. now .. ' ' .. (position or 0) .. ' ' .. (raw or '')
end

-- What a script needs to know about the lease it works on; `lease` is its key when the
-- caller declared it (KEYS[1]).
local function context(kind, name, via, lease)
  local field = kind .. ':' .. name
  return {kind = kind, name = name, via = via, field = field,
    lease = lease or (PREFIX .. 'lease:' .. field), fence = PREFIX .. 'fence:' .. field,
    queue = PREFIX .. 'queue:' .. field}
end

-- A lease script's request (ARGV[1]) and the context it names.
local function request()
  local req = cjson.decode(ARGV[1])
  return req, context(req.kind, req.name, req.via, KEYS[1])
end

local function emit(ctx, type, now, data)
  redis.call('XADD', EVENTS, 'MAXLEN', '~', POLICY.cap, '*',
    'type', type, 'kind', ctx.kind, 'name', ctx.name, 'at', now, 'data', data)
end

-- `raw` (a JSON object) with extra fields, for an event's data.
local function with_fields(raw, extra)
  local ok, data = pcall(cjson.decode, raw)
  if not ok or type(data) ~= 'table' then data = {raw = raw} end
  for key, value in pairs(extra) do data[key] = value end
  return cjson.encode(data)
end

local function with_via(ctx, raw)
  if type(ctx.via) ~= 'table' then return raw end
  return with_fields(raw, {via = ctx.via})
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

-- A lease has one timeline entry, `<kind>:<name>`, due at its next reminder or else at its
-- expiry; the reminder times themselves travel in the lease (`remind_at`, ascending), so
-- taking, re-arming and clearing cost one sorted-set member each.
local function clear_timeline(ctx)
  redis.call('ZREM', TIMELINE, ctx.field)
end

-- One reminder per configured offset before expiry; for a lease shorter than twice an
-- offset, at half its remaining life instead. Sets `remind_at` in `lease` and the entry's
-- due time (replacing what an earlier arming left).
local function arm_timeline(ctx, lease, now)
  local expires = lease.expires_at
  local left = expires - now
  local dues = {}
  for _, offset in ipairs(POLICY.offsets) do
    dues[#dues + 1] = (left >= 2 * offset) and (expires - offset) or (now + math.floor(left / 2))
  end
  table.sort(dues)
  local remind_at = {}
  for _, due in ipairs(dues) do
    if due ~= remind_at[#remind_at] then remind_at[#remind_at + 1] = due end
  end
  lease.remind_at = remind_at[1] and remind_at or nil
  redis.call('ZADD', TIMELINE, remind_at[1] or expires, ctx.field)
end

local function store_lease(ctx, lease, ttl, now)
  arm_timeline(ctx, lease, now)
  local encoded = cjson.encode(lease)
  redis.call('SET', ctx.lease, encoded, 'PX', ttl)
  redis.call('HSET', INDEX, ctx.field, encoded)
  return encoded
end

-- A fresh acquisition. The fencing token is max(last token + 1, Redis TIME in ms): it
-- only ever increases, even after a failover to a replica that missed the last writes.
-- One SET ... GET stores TIME and reads the last token; only a token at or past TIME
-- (several in one millisecond, or a clock behind) takes a second write.
-- `alone`: nobody waits for it. The lease then says so (`no_waiters`) until someone joins
-- the waitlist, and its release skips the handoff. A lease without the mark (a handoff, or
-- one written before deploybot kept it) is always served.
local function take(ctx, holder, note, ttl, origin, now, alone)
  local token = now
  local last = tonumber(redis.call('SET', ctx.fence, token, 'GET')) or 0
  if last >= token then
    token = last + 1
    redis.call('SET', ctx.fence, token)
  end
  local lease = {kind = ctx.kind, name = ctx.name, holder = holder, note = note,
    acquired_at = now, expires_at = now + ttl, token = token}
  if type(origin) == 'table' then lease.origin = origin end
  if alone then lease.no_waiters = true end
  return store_lease(ctx, lease, ttl, now)
end

-- Position (1-based) of `holder` in the waitlist (or nil), their entry, and how many wait.
local function waiter_position(ctx, holder)
  local entries = redis.call('LRANGE', ctx.queue, 0, -1)
  for i, raw in ipairs(entries) do
    local ok, waiter = pcall(cjson.decode, raw)
    if ok and type(waiter) == 'table' and type(waiter.holder) == 'table'
       and same_holder(waiter.holder, holder) then
      return i, raw, #entries
    end
  end
  return nil, nil, #entries
end

-- Take `holder` off the waitlist: their position (or nil), and how many still wait.
local function remove_waiter(ctx, holder)
  local position, raw, count = waiter_position(ctx, holder)
  if not position then return nil, count end
  redis.call('LREM', ctx.queue, 1, raw)
  return position, count - 1
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

-- Serve the waitlist of a lease that just ended, unless it was marked as having none.
local function serve_waitlist(ctx, now, freed)
  if not (freed and freed.no_waiters) then hand_off(ctx, now, freed) end
end

-- The lease key is gone but its snapshot is still indexed: it expired and nobody has
-- said so yet. Record that now (once), then serve the waitlist.
local function flush_expired(ctx, now)
  local stale = redis.call('HGET', INDEX, ctx.field)
  if not stale then return false end
  redis.call('HDEL', INDEX, ctx.field)
  clear_timeline(ctx)
  local lease = decode_lease(stale, ctx.kind, ctx.name)
  local due = lease and lease.expires_at or now
  emit(ctx, 'expired', now, with_fields(stale, {due_at = due}))
  serve_waitlist(ctx, now, lease)
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
# Request: holder, note ('' keeps the current note on refresh), ttl (ms), origin (optional),
# keep (true when the TTL is a default nobody asked for: then a refresh never shortens).
ACQUIRE = """
local req, ctx = request()
local now = now_ms()
local holder, ttl = req.holder, req.ttl
local raw = current(ctx, now)

if raw then
  local lease = decode_lease(raw, ctx.kind, ctx.name)
  if not lease then return answer('corrupt', now, raw) end
  if not same_holder(lease.holder, holder) then return answer('held', now, raw) end
  if req.keep and lease.expires_at > now + ttl then ttl = lease.expires_at - now end
  lease.expires_at = now + ttl
  lease.holder.display = holder.display
  if req.note ~= '' then lease.note = req.note end
  local encoded = store_lease(ctx, lease, ttl, now)
  emit(ctx, 'refreshed', now, with_via(ctx, encoded))
  return answer('refreshed', now, encoded)
end

-- In 'auto' mode a free lease has nobody waiting (whoever waited was handed it, or their
-- wait had run out), so only 'notify' can find the new holder in the waitlist.
local alone = true
if POLICY.handoff ~= 'auto' then
  local _, waiting = remove_waiter(ctx, holder)
  alone = waiting == 0
end
local encoded = take(ctx, holder, req.note, ttl, req.origin, now, alone)
emit(ctx, 'acquired', now, with_via(ctx, encoded))
return answer('acquired', now, encoded)
"""

# Release a lease: only by its holder, or by anyone when forced (admins; checked before).
# A forced release also clears a corrupt record. The freed lease goes to the waitlist.
# Request: caller, forced (true to force), reason (forced only).
RELEASE = """
local req, ctx = request()
local now = now_ms()
local caller, forced = req.caller, req.forced == true
local lease, raw, refusal = callers_lease(ctx, now, caller, forced)
if refusal then return refusal end

redis.call('DEL', ctx.lease)
redis.call('HDEL', INDEX, ctx.field)
clear_timeline(ctx)

if forced then
  local record = lease or {kind = ctx.kind, name = ctx.name, corrupt = raw}
  record.forced_by = caller
  record.reason = req.reason
  emit(ctx, 'forced', now, with_via(ctx, cjson.encode(record)))
else
  emit(ctx, 'released', now, with_via(ctx, raw))
end
serve_waitlist(ctx, now, lease)
return answer(forced and 'forced' or 'released', now, raw)
"""

# Extend a lease held by the caller: new expiry = Redis now + TTL; reminders re-armed.
# Request: caller, ttl (ms).
EXTEND = """
local req, ctx = request()
local now = now_ms()
local lease, _, refusal = callers_lease(ctx, now, req.caller, false)
if refusal then return refusal end

lease.expires_at = now + req.ttl
local encoded = store_lease(ctx, lease, req.ttl, now)
emit(ctx, 'extended', now, with_via(ctx, encoded))
return answer('extended', now, encoded)
"""

# Join the waitlist (idempotent). A free resource is taken at once in 'auto' mode.
# Outcomes: 'holding' (the caller holds it already), 'waiting' (with the position),
# 'acquired' (it was free), 'free' ('notify' mode), 'corrupt'.
# Request: holder, note, ttl (ms, optional), origin (optional), wait (how long the caller
# will wait, ms; optional: no limit). Joining again keeps the place in line and takes the
# new note, TTL and wait.
JOIN_WAITLIST = """
local req, ctx = request()
local now = now_ms()
local holder = req.holder
local raw = current(ctx, now)

if raw then
  local lease = decode_lease(raw, ctx.kind, ctx.name)
  if not lease then return answer('corrupt', now, raw) end
  if same_holder(lease.holder, holder) then return answer('holding', now, raw) end
  local waiter = {holder = holder, note = req.note, since = now, ttl = req.ttl,
    origin = req.origin}
  if req.wait then waiter.gives_up_at = now + req.wait end
  local position = waiter_position(ctx, holder)
  if position then
    redis.call('LSET', ctx.queue, position - 1, cjson.encode(waiter))
    return answer('waiting', now, raw, position)
  end
  position = redis.call('RPUSH', ctx.queue, cjson.encode(waiter))
  if lease.no_waiters then
    -- Its release must serve the waitlist now; the expiry and reminders stay as they are.
    lease.no_waiters = nil
    raw = cjson.encode(lease)
    redis.call('SET', ctx.lease, raw, 'KEEPTTL')
    redis.call('HSET', INDEX, ctx.field, raw)
  end
  emit(ctx, 'queued', now, with_via(ctx, cjson.encode({holder = holder, position = position})))
  return answer('waiting', now, raw, position)
end

if POLICY.handoff ~= 'auto' then return answer('free', now) end
local ttl = req.ttl or POLICY.ttl[ctx.kind]
local encoded = take(ctx, holder, req.note, ttl, req.origin, now, true)
emit(ctx, 'acquired', now, with_via(ctx, encoded))
return answer('acquired', now, encoded)
"""

# Leave the waitlist. Answers `left` or `not_waiting` with the position the caller had, as
# a lease script does. Request: holder.
LEAVE_WAITLIST = """
local req, ctx = request()
local now = now_ms()
local position = remove_waiter(ctx, req.holder)
if not position then return answer('not_waiting', now) end
emit(ctx, 'left', now, with_via(ctx, cjson.encode({holder = req.holder})))
return answer('left', now, nil, position)
"""

# Turn due timeline entries into events, at most ARGV[1] per call, so the cost follows the
# number of due entries, never the number of live leases. Taking them out is part of the
# script, so with several replicas sweeping, each entry is handled exactly once.
# KEYS[1] the timeline. ARGV[1] batch limit.
# Returns {expired, reminders, due entries seen, Redis now ms}.
SWEEP = """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', TIMELINE, '-inf', now, 'WITHSCORES',
  'LIMIT', 0, tonumber(ARGV[1]))
local expired, reminded = 0, 0

-- Every reminder of `lease` due from `since` to now; then its next due time.
local function remind(ctx, lease, raw, since)
  local dues = type(lease.remind_at) == 'table' and lease.remind_at or {}
  for _, due in ipairs(dues) do
    if tonumber(due) then
      if due > now then return math.min(due, lease.expires_at) end
      if due >= since and lease.expires_at > now then
        emit(ctx, 'reminder', now, with_fields(raw, {due_at = due}))
        reminded = reminded + 1
      end
    end
  end
  return lease.expires_at
end

for i = 1, #due, 2 do
  local member, score = due[i], tonumber(due[i + 1])
  local what, rest = string.match(member, '^(%a+):(.+)$')
  if what == 'lock' or what == 'claim' then
    local ctx = context(what, rest, nil)
    local raw = redis.call('GET', ctx.lease)
    local lease = raw and decode_lease(raw, what, rest)
    if not raw then
      redis.call('ZREM', TIMELINE, member)
      if flush_expired(ctx, now) then expired = expired + 1 end
    elseif not lease then
      redis.call('ZADD', TIMELINE, now + 1000, member)  -- corrupt: look again later
    else
      -- Past its expiry but not yet expired by Redis: look again shortly.
      local next_due = remind(ctx, lease, raw, score)
      redis.call('ZADD', TIMELINE, next_due > now and next_due or now + 100, member)
    end
  else
    -- Entries in the format before one entry per lease: `expire:<kind>:<name>` and
    -- `remind:<kind>:<name>:<n>`. Their lease is served as then; a newer lease of the same
    -- name has its own entry.
    redis.call('ZREM', TIMELINE, member)
    local kind, name = string.match(rest or '', '^(%a+):(.+)$')
    if what == 'remind' and name then name = string.match(name, '^(.+):%d+$') end
    if (what == 'expire' or what == 'remind') and (kind == 'lock' or kind == 'claim')
       and name then
      local ctx = context(kind, name, nil)
      local raw = redis.call('GET', ctx.lease)
      local lease = raw and decode_lease(raw, kind, name)
      if what == 'expire' and not raw then
        if flush_expired(ctx, now) then expired = expired + 1 end
      elseif what == 'expire' and not lease then
        redis.call('ZADD', TIMELINE, now + 1000, member)  -- corrupt: look again later
      elseif lease and not lease.remind_at then
        if what == 'expire' then
          redis.call('ZADD', TIMELINE, math.max(lease.expires_at, now + 100), member)
        elseif lease.expires_at > now then
          emit(ctx, 'reminder', now, with_fields(raw, {due_at = score}))
          reminded = reminded + 1
        end
      end
    end
  end
end
return {expired, reminded, #due / 2, int(now)}
"""

# Record a job status. A URL or detail left out keeps the previous one (a pipeline sets the
# link once, at `running`); an empty one clears it. KEYS[1] jobs hash, KEYS[2] event stream.
# ARGV[1] job JSON without updated_at.
SET_JOB = """
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

# Remove a job status. KEYS[1] jobs hash, KEYS[2] event stream.
# ARGV[1] job name, ARGV[2] remover's name.
REMOVE_JOB = """
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 1 then
  local data = cjson.encode({name = ARGV[1], removed_by = ARGV[2]})
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', POLICY.cap, '*',
    'type', 'job_removed', 'kind', 'job', 'name', ARGV[1], 'at', int(now_ms()), 'data', data)
end
return removed
"""

# List jobs, dropping finished ones older than the retention. Returns Redis now, then name
# and value pairs; unparseable records are returned as they are, so the caller can report
# them instead of failing. KEYS[1] jobs hash. ARGV[1] retention ms.
LIST_JOBS = """
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
