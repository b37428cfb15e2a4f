// SPDX-License-Identifier: Apache-2.0
// Lua scripts of the Redis state store, run with EVALSHA (EVAL on NOSCRIPT).
// Each is atomic on its shard. Conventions: ARGV[1] is the session's key
// prefix "ss:{tenant/session}:", ARGV[2] the fence retention (ms), ARGV[3]
// the caller's time (ms since the epoch); the script's own arguments follow.
// A reply is an array whose first element names the outcome ("OK", "DUP",
// "NOTFOUND", "EXISTS", "VERSION", "NOTKEPT", "FENCED", "MODEL", "BUSY",
// "CHUNKS"). Layout: docs/state-store.md.
//
// Counts the scripts read back from a session's hashes (its versions'
// range, a version's chunk count), and the TTL and fence they write from,
// are checked before anything is written (probe_session):
// a damaged one fails the script with an error reply "SSCORRUPT ..."
// (DATA_LOSS / STATE_CORRUPT to the caller) instead of driving a loop of
// billions of steps that would hold the shard, every tenant on it, for
// hours. The bounds are kMaxKeptVersions and kMaxVersionChunks
// (internal/redis_store.h), which the store never exceeds, and a chunk
// count at most the version's state_bytes / kMinChunkBytes + 4. A delete
// still removes a damaged session (kLuaDelete).
#ifndef STATESTREAM_STATE_STORE_INTERNAL_REDIS_SCRIPTS_H_
#define STATESTREAM_STATE_STORE_INTERNAL_REDIS_SCRIPTS_H_

namespace statestream::store_internal {

// Helpers prepended to every session script.
inline constexpr char kLuaPrelude[] = R"lua(
local P = ARGV[1]
local MAX_KEPT, MAX_CHUNKS, MIN_CHUNK_BYTES = 65536, 65536, 1024
local function whole(v, lo, hi, what)
  local n = tonumber(v)
  if n == nil or n ~= math.floor(n) or n < lo or n > hi then
    error({err = 'SSCORRUPT ' .. P .. ' records ' .. what .. ' ' ..
                 string.sub(tostring(v), 1, 40)})
  end
  return n
end
-- The oldest kept version and the version of a head that exists.
local function kept_range(oldest, version)
  local v = whole(version, 1, 2^53, 'version')
  local o = whole(oldest, math.max(1, v - MAX_KEPT + 1), v, 'oldest version')
  return o, v
end
local function touch(k, ttl)
  if ttl < 0 then redis.call('PERSIST', k) else redis.call('PEXPIRE', k, ttl) end
end
local function version_keys(n)
  local vk = P .. 'v' .. n
  local m = redis.call('HMGET', vk, 'nonce', 'chunk_count', 'state_bytes')
  if not m[1] then return {} end
  local bytes = whole(m[3], 0, 2^53, 'state size of version ' .. n)
  local count = whole(m[2], 0,
                      math.min(MAX_CHUNKS, math.floor(bytes / MIN_CHUNK_BYTES) + 4),
                      'chunk count of version ' .. n)
  local keys = {vk}
  for i = 0, count - 1 do keys[#keys + 1] = vk .. ':' .. m[1] .. ':c' .. i end
  return keys
end
-- Reads every key of the session's kept versions, before a script that
-- touches them writes anything. The scripts declare only the head, the
-- fence and the lease (the versions are known once the head is read), so
-- in a Cluster slot that is moving a version key may be on the other
-- node. Each is read together with the head, in a command of several
-- keys, which a moving slot refuses when any of them is missing: at the
-- source (a key already moved) and at the importing target (a key not
-- moved yet: it answers a read of that key alone as "no such key", with
-- no error). The script fails here ("non local key"), with nothing
-- written, and the client runs it again until the slot has moved (then
-- MOVED sends it there). After the probe the scripts write only keys they
-- have read, declared or kept (a key deleted mid-script is one the node
-- no longer has).
-- The session's TTL in ms (-1: pinned) and fence, as the head and the
-- fence key record them.
-- 0 is no TTL the store writes (at least 1 ms, or -1): PEXPIRE 0 would
-- delete the session at its next write.
local function ttl_of(v)
  local n = whole(v, -1, 2^53, 'TTL (ms)')
  if n == 0 then error({err = 'SSCORRUPT ' .. P .. ' records TTL (ms) 0'}) end
  return n
end
local function fence_of(v) return whole(v or '0', 0, 2^53, 'fence') end
local function probe_session()
  local h = redis.call('HMGET', P .. 'head', 'oldest', 'version', 'ttl_ms')
  local oldest, version = kept_range(h[1], h[2])
  -- The values the writes that follow use: checked before any of them.
  ttl_of(h[3])
  fence_of(redis.call('GET', P .. 'fence'))
  local head = P .. 'head'
  for n = oldest, version do
    redis.call('EXISTS', head, P .. 'v' .. n)  -- before version_keys reads it
    local keys = version_keys(n)
    -- In slices: unpack takes at most ~8000 values.
    for i = 2, #keys, 1000 do
      redis.call('EXISTS', head, unpack(keys, i, math.min(#keys, i + 999)))
    end
  end
end
local function touch_session()
  local h = redis.call('HMGET', P .. 'head', 'oldest', 'version', 'ttl_ms')
  local ttl = ttl_of(h[3])
  touch(P .. 'head', ttl)
  if ttl < 0 then redis.call('PERSIST', P .. 'fence')
  else redis.call('PEXPIRE', P .. 'fence', ttl + tonumber(ARGV[2])) end
  local oldest, version = kept_range(h[1], h[2])
  for n = oldest, version do
    for _, k in ipairs(version_keys(n)) do touch(k, ttl) end
  end
end
-- The next fence: one more than the last, and at least this server's
-- clock in ms times 1024 plus `salt` (10 random bits from the caller). A
-- counter that a restart lost the tail of (appendfsync everysec) then
-- cannot hand out a fence it already gave another owner. A decimal string
-- (exact: < 2^53).
local function next_fence(salt)
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local last = fence_of(redis.call('GET', P .. 'fence'))
  local f = string.format('%.0f', math.max(last + 1, ms * 1024 + tonumber(salt)))
  redis.call('SET', P .. 'fence', f)
  return f
end
-- A refused write's chunks (KEYS[4..]) go at once, unless the version they
-- were written for (KEYS[3]) holds them: the same call resent after a lost
-- reply, whose first send was committed.
local function drop_chunks(nonce)
  if redis.call('HGET', KEYS[3], 'nonce') == nonce then return end
  for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
end
local function chunks_present()
  for i = 4, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 0 then return false end
  end
  return true
end
)lua";

// KEYS: head, fence, v1, chunk keys. ARGV[4] nonce, ARGV[5] the fence salt
// (next_fence), ARGV[6] number of head field/value arguments that follow,
// then head pairs, then v1 pairs.
inline constexpr char kLuaCreate[] = R"lua(
local head = P .. 'head'
if redis.call('EXISTS', head) == 1 then
  if redis.call('HGET', head, 'version') == '1' and
     redis.call('HGET', head, 'nonce') == ARGV[4] then
    probe_session()
    redis.call('HSET', head, 'retried_ms', ARGV[3])  -- see kLuaCommit's DUP
    touch_session()
    return {'DUP'}
  end
  drop_chunks(ARGV[4])
  return {'EXISTS'}
end
if not chunks_present() then return {'CHUNKS'} end
local fence = next_fence(ARGV[5])
local nh = tonumber(ARGV[6])
local hf, vf = {}, {}
for i = 7, 6 + nh do hf[#hf + 1] = ARGV[i] end
for i = 7 + nh, #ARGV do vf[#vf + 1] = ARGV[i] end
vf[#vf + 1] = 'fence'
vf[#vf + 1] = fence
redis.call('DEL', P .. 'v1', P .. 'lease')
redis.call('HSET', P .. 'v1', unpack(vf))
redis.call('HSET', head, unpack(hf))
touch_session()
return {'OK', fence}
)lua";

// KEYS: head, fence, new version, chunk keys. ARGV[4] expected version,
// [5] fence, [6] fingerprint, [7] nonce, [8] keep, [9] grace ms, then the
// new version's field/value pairs.
inline constexpr char kLuaCommit[] = R"lua(
local head = P .. 'head'
if redis.call('EXISTS', head) == 0 then
  drop_chunks(ARGV[7])
  return {'NOTFOUND'}
end
probe_session()  -- a head without a version is damage, not absent
local ver = tonumber(redis.call('HGET', head, 'version'))
local expected = tonumber(ARGV[4])
if ver == expected + 1 and redis.call('HGET', head, 'nonce') == ARGV[7] then
  -- A retry after a lost reply: the commit happened on another connection.
  -- A write here puts this connection's last write after it in the
  -- replication stream and the AOF, so the WAIT / WAITAOF that follows
  -- covers the commit too. (An HSET always is one; a pinned session's TTL
  -- refresh alone would change nothing and propagate nothing.)
  redis.call('HSET', head, 'retried_ms', ARGV[3])
  touch_session()
  return {'DUP'}
end
-- The fence before the version: a writer that was taken over learns that
-- it was, even when its expected version is stale too.
local fence = redis.call('GET', P .. 'fence') or '0'
if fence_of(fence) ~= tonumber(ARGV[5]) then
  drop_chunks(ARGV[7])
  return {'FENCED', fence}
end
if ver ~= expected then
  drop_chunks(ARGV[7])
  return {'VERSION', tostring(ver)}
end
local fp = redis.call('HGET', head, 'fingerprint')
if fp ~= ARGV[6] then
  drop_chunks(ARGV[7])
  return {'MODEL', fp}
end
if not chunks_present() then return {'CHUNKS'} end
local new = ver + 1
local vk = P .. 'v' .. new
local vf = {}
for i = 10, #ARGV do vf[#vf + 1] = ARGV[i] end
redis.call('DEL', vk)
redis.call('HSET', vk, unpack(vf))
local oldest = tonumber(redis.call('HGET', head, 'oldest'))
local new_oldest = math.max(oldest, new - tonumber(ARGV[8]) + 1)
for n = oldest, new_oldest - 1 do
  for _, k in ipairs(version_keys(n)) do redis.call('PEXPIRE', k, ARGV[9]) end
end
redis.call('HSET', head, 'version', new, 'oldest', new_oldest, 'nonce', ARGV[7],
           'updated_ms', ARGV[3])
touch_session()
return {'OK'}
)lua";

// KEYS: head, fence, lease. ARGV[4] version (0 = head, -1 = head only).
// OK reply: {'OK', head pairs, version pairs, fence, lease pairs, lease pttl,
// head version pairs}.
inline constexpr char kLuaRead[] = R"lua(
local h = redis.call('HGETALL', P .. 'head')
if #h == 0 then return {'NOTFOUND'} end
local m = redis.call('HMGET', P .. 'head', 'version', 'oldest', 'ttl_ms')
local oldest, ver = kept_range(m[2], m[1])
ttl_of(m[3])
local want = tonumber(ARGV[4])
if want <= 0 then want = ver end
if want < oldest or want > ver then
  return {'NOTKEPT', tostring(ver), tostring(oldest)}
end
-- With the head: a moving slot refuses a hash not moved yet (probe_session)
-- rather than answer a kept version as not kept.
redis.call('EXISTS', P .. 'head', P .. 'v' .. want, P .. 'v' .. ver)
local vm = redis.call('HGETALL', P .. 'v' .. want)
if #vm == 0 then
  -- The head's own hash is gone (evicted, or deleted by hand): damage,
  -- which a listing leaves out, not a version the caller asked wrongly for.
  if want == ver then
    error({err = 'SSCORRUPT ' .. P .. ' has no hash for its head version ' .. ver})
  end
  return {'NOTKEPT', tostring(ver), tostring(oldest)}
end
local hv = vm
if want ~= ver then hv = redis.call('HGETALL', P .. 'v' .. ver) end
local fence = redis.call('GET', P .. 'fence') or '0'
fence_of(fence)
return {'OK', h, vm, fence,
        redis.call('HGETALL', P .. 'lease'), redis.call('PTTL', P .. 'lease'),
        hv}
)lua";

// KEYS: head. Reply: {'OK', pairs of each kept version...}.
inline constexpr char kLuaVersions[] = R"lua(
if redis.call('EXISTS', P .. 'head') == 0 then return {'NOTFOUND'} end
local m = redis.call('HMGET', P .. 'head', 'version', 'oldest')
local oldest, ver = kept_range(m[2], m[1])
local out = {'OK'}
for n = oldest, ver do
  -- With the head: a moving slot refuses a hash not moved yet (probe_session)
  -- rather than the list leave it out.
  redis.call('EXISTS', P .. 'head', P .. 'v' .. n)
  local vm = redis.call('HGETALL', P .. 'v' .. n)
  if #vm > 0 then out[#out + 1] = vm end
end
return out
)lua";

// KEYS: head. ARGV[4] '1' to set labels to ARGV[5]; ARGV[6] '1' to set the
// TTL to ARGV[7] ms (-1 = pinned).
inline constexpr char kLuaUpdate[] = R"lua(
local head = P .. 'head'
if redis.call('EXISTS', head) == 0 then return {'NOTFOUND'} end
probe_session()
if ARGV[4] == '1' then redis.call('HSET', head, 'labels', ARGV[5]) end
if ARGV[6] == '1' then redis.call('HSET', head, 'ttl_ms', ARGV[7]) end
redis.call('HSET', head, 'updated_ms', ARGV[3])
touch_session()
return {'OK'}
)lua";

// KEYS: head, fence, lease. ARGV[4] the call's nonce, ARGV[5] ms: a deletion
// leaves the nonce behind that long (P .. 'deleted'), so the same call sent
// again after a lost reply is OK, not NOTFOUND; and a copy of it that
// reaches Redis late (a resent pipeline's first send) deletes nothing, not
// a session created again under that id since.
inline constexpr char kLuaDelete[] = R"lua(
-- A key of the wrong type (a write by hand) is damage too; TYPE tells
-- without failing on it.
local function typed(k, want)
  local t = redis.call('TYPE', k)['ok']
  return t == 'none' or t == want
end
if not typed(P .. 'deleted', 'string') then redis.call('DEL', P .. 'deleted') end
if ARGV[4] ~= '' and redis.call('GET', P .. 'deleted') == ARGV[4] then
  return {'OK'}
end
-- A damaged session is deleted too: its head and lease go, and so do its
-- versions' hashes when their range is sound; keys its damaged counts
-- cannot find are left to their TTLs. Damage is what the scripts raise on
-- data not as the store wrote it: SSCORRUPT, WRONGTYPE, or a Lua error on
-- a value ("user_script:<line>: attempt to ..."). Any other error (a key
-- a moving slot has elsewhere: "ERR Script attempted to access a non
-- local key") fails the script before a write. Under pcall, Redis's own
-- errors arrive as strings, the scripts' as tables.
local m, sound = {}, false
if typed(P .. 'head', 'hash') then
  if redis.call('EXISTS', P .. 'head') == 0 then return {'NOTFOUND'} end
  m = redis.call('HMGET', P .. 'head', 'version', 'oldest')
  local e
  sound, e = pcall(probe_session)
  if not sound then
    local text = type(e) == 'table' and (e.err or '') or tostring(e)
    if string.sub(text, 1, 9) ~= 'SSCORRUPT' and
       string.sub(text, 1, 9) ~= 'WRONGTYPE' and
       string.sub(text, 1, 12) ~= 'user_script:' then
      error(type(e) == 'table' and e or {err = text})
    end
  end
end
-- The nonce first: a new key, which a migrating slot may refuse, and then
-- before anything is deleted.
if ARGV[4] ~= '' then
  redis.call('SET', P .. 'deleted', ARGV[4], 'PX', ARGV[5])
end
if sound then
  local oldest, ver = kept_range(m[2], m[1])
  for n = oldest, ver do
    local keys = version_keys(n)
    -- In slices: unpack takes at most ~8000 values.
    for i = 1, #keys, 1000 do
      redis.call('DEL', unpack(keys, i, math.min(#keys, i + 999)))
    end
  end
else
  local ranged, oldest, ver = pcall(kept_range, m[2], m[1])
  if ranged then
    for n = oldest, ver do redis.call('DEL', P .. 'v' .. n) end
  end
end
redis.call('DEL', P .. 'head', P .. 'lease')
-- The fence stays a while (fence retention), unless it is no fence.
if pcall(fence_of, redis.call('TYPE', P .. 'fence')['ok'] == 'string' and
                   redis.call('GET', P .. 'fence') or 'x') then
  redis.call('PEXPIRE', P .. 'fence', ARGV[2])
else
  redis.call('DEL', P .. 'fence')
end
return {'OK'}
)lua";

// KEYS: head, fence, lease. ARGV[4] owner, [5] ttl ms, [6] takeover '0'/'1',
// [7] the fence salt (next_fence), [8] the call's nonce (the lease's
// 'grant'): the same call sent twice (a pipeline resent after a lost
// reply, or its first copy reaching Redis after the second) grants one
// fence, and the caller holds the fence it was told.
inline constexpr char kLuaAcquire[] = R"lua(
if redis.call('EXISTS', P .. 'head') == 0 then return {'NOTFOUND'} end
local lease = P .. 'lease'
local cur = redis.call('HGET', lease, 'owner')
if cur == ARGV[4] and redis.call('HGET', lease, 'grant') == ARGV[8] then
  local granted = redis.call('HGET', lease, 'fence')
  if granted == redis.call('GET', P .. 'fence') then return {'OK', granted} end
end
if cur and cur ~= ARGV[4] and ARGV[6] == '0' then return {'BUSY', cur} end
probe_session()
local f = next_fence(ARGV[7])
-- The fields overwritten in place: a DEL first would make the lease a key
-- this node no longer has, which a migrating slot refuses mid-script.
redis.call('HSET', lease, 'owner', ARGV[4], 'fence', f, 'grant', ARGV[8])
redis.call('PEXPIRE', lease, ARGV[5])
touch_session()
return {'OK', f}
)lua";

// KEYS: head, fence, lease. ARGV[4] owner, [5] fence, [6] ttl ms.
inline constexpr char kLuaRenew[] = R"lua(
if redis.call('EXISTS', P .. 'head') == 0 then return {'NOTFOUND'} end
local f = redis.call('GET', P .. 'fence') or '0'
fence_of(f)
if f ~= ARGV[5] then return {'FENCED', f} end
local lease = P .. 'lease'
local cur = redis.call('HGET', lease, 'owner')
if cur and cur ~= ARGV[4] then return {'FENCED', f} end
redis.call('HSET', lease, 'owner', ARGV[4], 'fence', f)
redis.call('PEXPIRE', lease, ARGV[6])
return {'OK'}
)lua";

// KEYS: head, fence, lease. ARGV[4] owner, [5] fence.
inline constexpr char kLuaRelease[] = R"lua(
local m = redis.call('HMGET', P .. 'lease', 'owner', 'fence')
if m[1] == ARGV[4] and m[2] == ARGV[5] then redis.call('DEL', P .. 'lease') end
return {'OK'}
)lua";

// Worker registry; ARGV[1] is the worker key prefix. KEYS: the index.
// ARGV[4] id, [5] payload, [6] ttl ms, [7] the call's nonce. Reply {'OK',
// 1 if the entry was live before, else 0}. A resend of the call (its
// nonce in the entry's '#call' key, beside it) gets its first copy's
// answer: it found the entry the first copy wrote, and a worker told its
// expired entry was live would skip its resync.
inline constexpr char kLuaRegisterWorker[] = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = ARGV[1] .. ARGV[4]
local listed = redis.call('EXISTS', key)
local call = redis.call('GET', key .. '#call')
if call and string.sub(call, 1, #ARGV[7] + 1) == ARGV[7] .. ' ' then
  listed = tonumber(string.sub(call, #ARGV[7] + 2))
end
redis.call('SET', key, ARGV[5], 'PX', ARGV[6])
redis.call('SET', key .. '#call', ARGV[7] .. ' ' .. listed, 'PX', ARGV[6])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[6]), ARGV[4])
return {'OK', listed}
)lua";

inline constexpr char kLuaUnregisterWorker[] = R"lua(
redis.call('DEL', ARGV[1] .. ARGV[4], ARGV[1] .. ARGV[4] .. '#call')
redis.call('ZREM', KEYS[1], ARGV[4])
return {'OK'}
)lua";

// Reply: {'OK', id, payload, pttl, id, payload, pttl, ...}.
inline constexpr char kLuaListWorkers[] = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {'OK'}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then
    out[#out + 1] = id
    out[#out + 1] = v
    out[#out + 1] = redis.call('PTTL', ARGV[1] .. id)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
)lua";

// KEYS: head, fence, lease. ARGV[4] version, [5] the committer's nonce,
// [6] the durability reached after the commit (WAIT/WAITAOF). Raises the
// level recorded in the version if it is still that commit's.
inline constexpr char kLuaRecordDurability[] = R"lua(
local vk = P .. 'v' .. ARGV[4]
redis.call('EXISTS', P .. 'head', vk)  -- a moving slot: as kLuaRead
if redis.call('HGET', vk, 'nonce') ~= ARGV[5] then return {'GONE'} end
local d = tonumber(redis.call('HGET', vk, 'durability') or '0')
if tonumber(ARGV[6]) > d then redis.call('HSET', vk, 'durability', ARGV[6]) end
return {'OK'}
)lua";

// KEYS: head, fence, lease. ARGV[4] version. A write on the version (so a
// WAIT / WAITAOF that follows on the connection covers the replication
// stream up to it, and with it the version), then its recorded durability
// and nonce: {'OK', durability, nonce}, or NOTFOUND / NOTKEPT.
inline constexpr char kLuaAwaitDurability[] = R"lua(
if redis.call('EXISTS', P .. 'head') == 0 then return {'NOTFOUND'} end
local vk = P .. 'v' .. ARGV[4]
redis.call('EXISTS', P .. 'head', vk)  -- a moving slot: as kLuaRead
local nonce = redis.call('HGET', vk, 'nonce')
if not nonce then
  local m = redis.call('HMGET', P .. 'head', 'version', 'oldest')
  return {'NOTKEPT', m[1], m[2]}
end
redis.call('HSET', vk, 'awaited_ms', ARGV[3])
return {'OK', redis.call('HGET', vk, 'durability') or '0', nonce}
)lua";

// KEYS[1]: a tenant's index; ARGV[4]: a session id, ARGV[5]: the most
// sessions the tenant may hold. Adds the id unless the index holds that
// many already (it may also hold creates in flight and sessions gone that
// no listing has pruned: the caller lists, which prunes, and asks again).
// A create's reservation: one script, so concurrent creates never pass
// the limit together. Reply: {'OK'} or {'FULL', count}.
inline constexpr char kLuaReserveInIndex[] = R"lua(
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then return {'OK'} end
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[5]) then return {'FULL', n} end
redis.call('ZADD', KEYS[1], 0, ARGV[4])
return {'OK'}
)lua";

// Tenant slots (concurrent streams across gateways). KEYS[1]: the
// tenant's slots, a sorted set of slot -> expiry (ms, Redis's clock), which
// itself expires with its last slot. Each script first drops the expired.
// ARGV[4] ttl ms.
inline constexpr char kLuaSlotsPrelude[] = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local function hold(slot)
  redis.call('ZADD', KEYS[1], now + ttl, slot)
end
local function keep()
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
end
)lua";

// ARGV[5] slot, [6] max. {'OK'} (taken or renewed) or {'FULL', count}.
inline constexpr char kLuaAcquireSlot[] = R"lua(
if not redis.call('ZSCORE', KEYS[1], ARGV[5]) then
  local n = redis.call('ZCARD', KEYS[1])
  if n >= tonumber(ARGV[6]) then return {'FULL', n} end
end
hold(ARGV[5])
keep()
return {'OK'}
)lua";

// ARGV[5..] slots, each held (again) for ttl. {'OK'}.
inline constexpr char kLuaRenewSlots[] = R"lua(
for i = 5, #ARGV do hold(ARGV[i]) end
keep()
return {'OK'}
)lua";

// {'OK', count}.
inline constexpr char kLuaCountSlots[] = R"lua(
return {'OK', redis.call('ZCARD', KEYS[1])}
)lua";

}  // namespace statestream::store_internal

#endif  // STATESTREAM_STATE_STORE_INTERNAL_REDIS_SCRIPTS_H_
