"""Shared state store on Redis, for every consumer process of a group.

Each identity operation is one Lua script (one round trip, atomic on the server), so two
consumers linking the same person at once end in one person, and a hold cannot slip between
another consumer's link and its release. Dedup keys are plain `SET key 1 PXAT now+window`
keys: Redis expires them, so memory is bounded by the window and `prune` has nothing to do.

Layout under `prefix` (default "ks:"):
    ids                 hash  "kind:value" -> person id
    p:<id>              hash  "i:kind:value" -> "last_seen seq", "t:key" -> ts,
                              "v:key" -> JSON value, "n" -> "1" when named
    fwd                 hash  folded person id -> the id it was folded into
    seq:person, seq:touch, seq:held, n:persons, hbytes      counters
    h:<anonymous_id>    list  held entry ids, oldest first
    hz / hp / ha        zset entry -> held_at; hash entry -> payload; hash entry -> anonymous id
    hl                  zset released entry -> lease_until (stays until settled or reclaimed)
    d:<message_id>      string, expires at now + window
    tomb / tombz        hash tombstone hash -> deleted_at; zset tombstone hash -> write mark
    tombe               hash tombstone hash -> "erasure topic:partition:offset" (v3)
    seq:tomb            counter of tombstone write marks
    er                  hash erasure id -> the identifiers removed (until Klaviyo has them)
    erp / erc           set of the PENDING erasure ids; zset erasure id -> written at (v3)
    repz / repm         zset replica -> alive until (ms, Redis' clock); hash replica -> mark
    hlo                 hash released entry -> the replica it is leased to (v3)
    cat / catp / catjobs  the catalog's resources, job pointers and jobs (`catalog_redis`)
    layout              the layout version (absent: v1)
Scripts compute key names at run time, so Redis Cluster is not supported (one primary only).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, NoReturn

import orjson
import redis as redis_lib

from stream.core.errors import StateError
from stream.core.retry import RetryPolicy
from stream.state.base import (
    DEFAULT_DEDUP_WINDOW,
    HELD_LEASE_SECONDS,
    Forgotten,
    Guard,
    HeldEntry,
    Identifier,
    LinkResult,
    Person,
    Position,
    Tombstone,
    build_person,
    check_identifiers,
    tombstone_hash,
)
from stream.state.catalog_redis import RedisCatalog
from stream.state.rules import (
    DEFAULT_LIMITS,
    Limits,
    ordered_identifiers,
    plan_erasure,
    plan_link,
)

_RELEASE = """
local function release(P, anons, lease, owner)
  local items = {}
  for _, a in ipairs(anons) do
    local lk = P .. 'h:' .. a
    local members = redis.call('LRANGE', lk, 0, -1)
    if #members > 0 then
      redis.call('DEL', lk)
      for _, m in ipairs(members) do
        local score = redis.call('ZSCORE', P .. 'hz', m)
        local payload = redis.call('HGET', P .. 'hp', m)
        items[#items + 1] = {tonumber(score), m, a, payload}
      end
    end
  end
  table.sort(items, function(x, y)
    if x[1] ~= y[1] then return x[1] < y[1] end
    return x[2] < y[2]
  end)
  local out = {}
  for _, it in ipairs(items) do
    out[#out + 1] = it[2]
    out[#out + 1] = it[3]
    out[#out + 1] = it[4]
    redis.call('ZREM', P .. 'hz', it[2])
    redis.call('ZADD', P .. 'hl', lease, it[2])
    redis.call('HSET', P .. 'hlo', it[2], owner)
  end
  return out
end
"""

_GATHER = """
local P, n = ARGV[1], tonumber(ARGV[2])
local idmap = P .. 'ids'
local owners, persons, seen = {}, {}, {}
for i = 1, n do
  local pid = redis.call('HGET', idmap, ARGV[2 + i])
  owners[i] = pid or ''
  if pid and not seen[pid] then
    seen[pid] = true
    persons[#persons + 1] = pid
    persons[#persons + 1] = redis.call('HGETALL', P .. 'p:' .. pid)
  end
end
-- the tombstones of the hashes that follow (a guarded link), and the tombstone counter
local tombs = {}
for i = 3 + n, #ARGV do
  local h = ARGV[i]
  local at = redis.call('HGET', P .. 'tomb', h)
  if at then
    tombs[#tombs + 1] = h
    tombs[#tombs + 1] = at
    tombs[#tombs + 1] = redis.call('ZSCORE', P .. 'tombz', h) or '0'
    tombs[#tombs + 1] = redis.call('HGET', P .. 'tombe', h) or ''
  end
end
return {owners, persons, tombs, redis.call('GET', P .. 'seq:tomb') or '0'}
"""

_APPLY = (
    _RELEASE
    + """
local P, ts, lease, owner, tombseq = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local tsn = tonumber(ts)
local idmap = P .. 'ids'
local at = 6
local function take()
  local v = ARGV[at]
  at = at + 1
  return v
end
-- a guarded link planned on tombstones that a deletion has changed since: plan again
if tombseq ~= '' and (redis.call('GET', P .. 'seq:tomb') or '0') ~= tombseq then
  return {'conflict'}
end
local function is_named(f)
  local head = string.sub(f, 1, 8)
  return head == 'i:email:' or head == 'i:phone:' or string.sub(f, 1, 14) == 'i:external_id:'
end
local function is_anon(f) return string.sub(f, 1, 15) == 'i:anonymous_id:' end

-- nothing read by the plan changed meanwhile: the call's identifiers' owners, and each person
local n = tonumber(take())
for i = 1, n do
  local id, expected = ARGV[at], ARGV[at + n]
  if (redis.call('HGET', idmap, id) or '') ~= expected then return {'conflict'} end
  at = at + 1
end
at = at + n
local np = tonumber(take())
for i = 1, np do
  local pid, ver = take(), take()
  if (redis.call('HGET', P .. 'p:' .. pid, 'ver') or '0') ~= ver then return {'conflict'} end
end

local survivor = take()
if survivor == '' then
  survivor = tostring(redis.call('INCR', P .. 'seq:person'))
  redis.call('INCR', P .. 'n:persons')
end
local skey = P .. 'p:' .. survivor
local was_named = redis.call('HEXISTS', skey, 'n') == 1
local candidates = {}

local merged = {}
local nf = tonumber(take())
for j = 1, nf do
  local loser = take()
  local lkey = P .. 'p:' .. loser
  local flat = redis.call('HGETALL', lkey)
  local h = {}
  for k = 1, #flat, 2 do h[flat[k]] = flat[k + 1] end
  local loser_named = h['n'] ~= nil
  for f, v in pairs(h) do
    local kind = string.sub(f, 1, 2)
    if kind == 'i:' then
      redis.call('HSET', skey, f, v)
      redis.call('HSET', idmap, string.sub(f, 3), survivor)
      if is_anon(f) and not loser_named then candidates[#candidates + 1] = string.sub(f, 16) end
    elseif kind == 't:' then
      local cur = redis.call('HGET', skey, f)
      if (not cur) or tonumber(v) > tonumber(cur) then
        local vk = 'v:' .. string.sub(f, 3)
        redis.call('HSET', skey, f, v, vk, h[vk])
      end
    end
  end
  redis.call('DEL', lkey)
  redis.call('HSET', P .. 'fwd', loser, survivor)
  redis.call('DECR', P .. 'n:persons')
  merged[#merged + 1] = loser
end

local nm = tonumber(take())
for j = 1, nm do
  local id = take()
  local owner = redis.call('HGET', idmap, id)
  if owner and owner ~= survivor then
    redis.call('HDEL', P .. 'p:' .. owner, 'i:' .. id)
    redis.call('HINCRBY', P .. 'p:' .. owner, 'ver', 1)
  end
end

local nd = tonumber(take())
for j = 1, nd do
  local id = take()
  redis.call('HDEL', skey, 'i:' .. id)
  redis.call('HDEL', idmap, id)
end

local na = tonumber(take())
local top = redis.call('INCRBY', P .. 'seq:touch', math.max(na, 1))
for i = 1, na do
  local id = take()
  local f = 'i:' .. id
  local cur = redis.call('HGET', skey, f)
  if (not cur) or tsn >= tonumber(string.match(cur, '^(%S+)')) then
    redis.call('HSET', skey, f, ts .. ' ' .. (top - i + 1))
  end
  redis.call('HSET', idmap, id, survivor)
  if is_anon(f) then candidates[#candidates + 1] = string.sub(f, 16) end
end

for k = at, #ARGV, 2 do
  local f = 't:' .. ARGV[k]
  local cur = redis.call('HGET', skey, f)
  if (not cur) or tsn >= tonumber(cur) then
    redis.call('HSET', skey, f, ts, 'v:' .. ARGV[k], ARGV[k + 1])
  end
end
redis.call('HINCRBY', skey, 'ver', 1)

local flat = redis.call('HGETALL', skey)
local named, anons = false, {}
for k = 1, #flat, 2 do
  local f = flat[k]
  if is_named(f) then named = true elseif is_anon(f) then anons[#anons + 1] = string.sub(f, 16) end
end
local released = {}
if named then
  if not was_named then
    redis.call('HSET', skey, 'n', '1')
    candidates = anons
  end
  released = release(P, candidates, lease, owner)
elseif was_named then
  redis.call('HDEL', skey, 'n')
end
return {survivor, merged, flat, released}
"""
)

_HOLD = """
local P, anon, payload, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local pid = redis.call('HGET', P .. 'ids', 'anonymous_id:' .. anon)
if pid then
  local skey = P .. 'p:' .. pid
  if redis.call('HEXISTS', skey, 'n') == 1 then return {pid, redis.call('HGETALL', skey)} end
end
local m = string.format('%016d', redis.call('INCR', P .. 'seq:held'))
redis.call('RPUSH', P .. 'h:' .. anon, m)
redis.call('ZADD', P .. 'hz', now, m)
redis.call('HSET', P .. 'hp', m, payload)
redis.call('HSET', P .. 'ha', m, anon)
redis.call('INCRBY', P .. 'hbytes', #payload)
return false
"""

_LOOKUP = """
local pid = redis.call('HGET', ARGV[1] .. 'ids', ARGV[2])
if not pid then return false end
return {pid, redis.call('HGETALL', ARGV[1] .. 'p:' .. pid)}
"""

_EXPIRE = """
local P, lease, owner = ARGV[1], ARGV[4], ARGV[5]
local ms = redis.call('ZRANGEBYSCORE', P .. 'hz', '-inf', '(' .. ARGV[2], 'LIMIT', 0, ARGV[3])
local out, bytes = {}, 0
for _, m in ipairs(ms) do
  local anon = redis.call('HGET', P .. 'ha', m)
  local payload = redis.call('HGET', P .. 'hp', m)
  redis.call('LREM', P .. 'h:' .. anon, 1, m)
  redis.call('ZREM', P .. 'hz', m)
  if lease == '' then
    redis.call('HDEL', P .. 'ha', m)
    redis.call('HDEL', P .. 'hp', m)
    bytes = bytes + #payload
  else
    redis.call('ZADD', P .. 'hl', lease, m)
    redis.call('HSET', P .. 'hlo', m, owner)
  end
  out[#out + 1] = m
  out[#out + 1] = anon
  out[#out + 1] = payload
end
if bytes > 0 then redis.call('DECRBY', P .. 'hbytes', bytes) end
return out
"""

_RECLAIM = """
local P, lease, owner, limit = ARGV[1], ARGV[4], ARGV[5], tonumber(ARGV[3])
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ms = redis.call('ZRANGEBYSCORE', P .. 'hl', '-inf', ARGV[2], 'LIMIT', 0, limit)
local picked = {}
for _, m in ipairs(ms) do picked[m] = true end
if #ms < limit then  -- leased to a replica that is gone (its lease may have long to run)
  local dead = {}
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', P .. 'hl', '(' .. ARGV[2], '+inf')) do
    if #ms >= limit then break end
    local who = redis.call('HGET', P .. 'hlo', m) or ''
    if who ~= '' and who ~= owner then
      if dead[who] == nil then
        local until_ms = redis.call('ZSCORE', P .. 'repz', who)
        dead[who] = (not until_ms) or tonumber(until_ms) <= now_ms
      end
      if dead[who] and not picked[m] then
        picked[m] = true
        ms[#ms + 1] = m
      end
    end
  end
end
local out = {}
for _, m in ipairs(ms) do
  redis.call('ZADD', P .. 'hl', lease, m)
  redis.call('HSET', P .. 'hlo', m, owner)
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGET', P .. 'ha', m)
  out[#out + 1] = redis.call('HGET', P .. 'hp', m)
end
return out
"""

_SETTLE = """
local P = ARGV[1]
local bytes = 0
for i = 2, #ARGV do
  local m = ARGV[i]
  local payload = redis.call('HGET', P .. 'hp', m)
  if payload then
    bytes = bytes + #payload
    redis.call('HDEL', P .. 'hp', m)
    redis.call('HDEL', P .. 'ha', m)
    redis.call('ZREM', P .. 'hl', m)
    redis.call('ZREM', P .. 'hz', m)
    redis.call('HDEL', P .. 'hlo', m)
  end
end
if bytes > 0 then redis.call('DECRBY', P .. 'hbytes', bytes) end
return bytes
"""

_FORGET = """
local P, eid, dat, payload, extra, created, tombseq = unpack(ARGV, 1, 7)
local existing = redis.call('HGET', P .. 'er', eid)
if existing then
  redis.call('SADD', P .. 'erp', eid)  -- pending again (a re-read, or a replay)
  return {'again', existing}
end
local idmap = P .. 'ids'
local at = 8
local function take()
  local v = ARGV[at]
  at = at + 1
  return v
end
-- where a tombstone's delete call sat: 'topic:partition', offset (nil: unknown)
local function place(e)
  local where, offset = string.match(e, '^%S* (.+):(%d+)$')
  return where, tonumber(offset)
end
-- whether deletion a (time, extra) comes after deletion b: on one partition Kafka's order
-- decides, elsewhere the time (`comes_after` in stream/state/base.py)
local function after(at_a, e_a, at_b, e_b)
  local where_a, off_a = place(e_a)
  local where_b, off_b = place(e_b)
  if where_a and where_a == where_b then return off_a > off_b end
  return tonumber(at_a) > tonumber(at_b)
end
-- applied before: every identifier asked has a tombstone naming this erasure, or later ones
local na0 = tonumber(take())
local all, mine, later = true, false, true
for i = 1, na0 do
  local h = take()
  local cur = redis.call('HGET', P .. 'tomb', h)
  if not cur then
    all = false
  else
    local e = redis.call('HGET', P .. 'tombe', h) or ''
    if string.match(e, '^(%S*)') == eid then mine = true end
    if after(dat, extra, cur, e) then later = false end
  end
end
if all and (mine or later) then return {'applied'} end
-- nothing the plan read changed meanwhile: owners, each person, the tombstones
if (redis.call('GET', P .. 'seq:tomb') or '0') ~= tombseq then return {'conflict'} end
local n = tonumber(take())
for i = 1, n do
  if (redis.call('HGET', idmap, ARGV[at]) or '') ~= ARGV[at + n] then return {'conflict'} end
  at = at + 1
end
at = at + n
local np = tonumber(take())
for i = 1, np do
  local pid, ver = take(), take()
  if (redis.call('HGET', P .. 'p:' .. pid, 'ver') or '0') ~= ver then return {'conflict'} end
end
local ne = tonumber(take())
for i = 1, ne do
  local pid = take()
  local key = P .. 'p:' .. pid
  local flat = redis.call('HGETALL', key)
  for k = 1, #flat, 2 do
    if string.sub(flat[k], 1, 2) == 'i:' then
      local id = string.sub(flat[k], 3)
      if redis.call('HGET', idmap, id) == pid then redis.call('HDEL', idmap, id) end
    end
  end
  redis.call('DEL', key)
  redis.call('DECR', P .. 'n:persons')
end
local held, bytes = 0, 0
local function remove(m)
  local body = redis.call('HGET', P .. 'hp', m)
  if body then
    held = held + 1
    bytes = bytes + #body
    redis.call('HDEL', P .. 'hp', m)
    redis.call('HDEL', P .. 'ha', m)
    redis.call('HDEL', P .. 'hlo', m)
    redis.call('ZREM', P .. 'hz', m)
    redis.call('ZREM', P .. 'hl', m)
  end
end
local na = tonumber(take())
local anons = {}
for i = 1, na do
  local anon = take()
  anons[anon] = true
  for _, m in ipairs(redis.call('LRANGE', P .. 'h:' .. anon, 0, -1)) do remove(m) end
  redis.call('DEL', P .. 'h:' .. anon)
end
if na > 0 then  -- released calls being delivered (leased) of those anonymous ids
  for _, m in ipairs(redis.call('ZRANGE', P .. 'hl', 0, -1)) do
    if anons[redis.call('HGET', P .. 'ha', m) or ''] then remove(m) end
  end
end
if bytes > 0 then redis.call('DECRBY', P .. 'hbytes', bytes) end
local seq = redis.call('INCR', P .. 'seq:tomb')
local nh = tonumber(take())
for i = 1, nh do
  local h = take()
  local cur = redis.call('HGET', P .. 'tomb', h)
  -- one tombstone an identifier: the last deletion by that order, at the latest time of any
  if (not cur) or not after(cur, redis.call('HGET', P .. 'tombe', h) or '', dat, extra) then
    redis.call('HSET', P .. 'tombe', h, extra)
  end
  if (not cur) or tonumber(dat) > tonumber(cur) then redis.call('HSET', P .. 'tomb', h, dat) end
  redis.call('ZADD', P .. 'tombz', seq, h)
end
redis.call('HSET', P .. 'er', eid, payload)
redis.call('SADD', P .. 'erp', eid)
redis.call('ZADD', P .. 'erc', created, eid)
return {'done', tostring(held), tostring(seq)}
"""

_TOMBSTONES = """
local P, after, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local found = redis.call('ZRANGEBYSCORE', P .. 'tombz', '(' .. after, '+inf', 'WITHSCORES',
                         'LIMIT', 0, limit)
if #found >= 2 * limit then  -- whole erasures only: complete the last mark read
  local last = found[#found]
  while #found > 0 and found[#found] == last do
    found[#found] = nil
    found[#found] = nil
  end
  for _, v in ipairs(redis.call('ZRANGEBYSCORE', P .. 'tombz', last, last, 'WITHSCORES')) do
    found[#found + 1] = v
  end
end
local out = {}
for k = 1, #found, 2 do
  out[#out + 1] = found[k]
  out[#out + 1] = redis.call('HGET', P .. 'tomb', found[k])
  out[#out + 1] = found[k + 1]
  out[#out + 1] = redis.call('HGET', P .. 'tombe', found[k]) or ''
end
return out
"""

_TOMB_ROWS = """
local P = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local h = ARGV[i]
  local at = redis.call('HGET', P .. 'tomb', h)
  if at then
    out[#out + 1] = h
    out[#out + 1] = at
    out[#out + 1] = redis.call('ZSCORE', P .. 'tombz', h) or '0'
    out[#out + 1] = redis.call('HGET', P .. 'tombe', h) or ''
  end
end
return out
"""

_NOW_MS = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

_PUBLISH = _NOW_MS + """
local P, id, mark, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
redis.call('ZADD', P .. 'repz', now_ms + ttl, id)
redis.call('HSET', P .. 'repm', id, mark)
return 1
"""

_REPLICAS = _NOW_MS + """
local P, grace = ARGV[1], tonumber(ARGV[2])
local ids
if ARGV[3] == 'live' then
  ids = redis.call('ZRANGEBYSCORE', P .. 'repz', '(' .. now_ms, '+inf')
else  -- replicas gone for longer than the grace are forgotten
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'repz', '-inf', now_ms - grace)) do
    redis.call('ZREM', P .. 'repz', id)
    redis.call('HDEL', P .. 'repm', id)
  end
  ids = redis.call('ZRANGEBYSCORE', P .. 'repz', '(' .. (now_ms - grace), '+inf')
end
if #ids == 0 then return {''} end
local low = nil
for _, mark in ipairs(redis.call('HMGET', P .. 'repm', unpack(ids))) do
  local m = tonumber(mark) or 0
  if low == nil or m < low then low = m end
end
local out = {tostring(low)}
for _, id in ipairs(ids) do out[#out + 1] = id end
return out
"""

_PURGE = """
local P = ARGV[1]
local gone = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'erc', '-inf', '(' .. ARGV[2])) do
  if redis.call('SISMEMBER', P .. 'erp', id) == 0 then
    redis.call('HDEL', P .. 'er', id)
    redis.call('ZREM', P .. 'erc', id)
    gone = gone + 1
  end
end
return gone
"""


# v2: leased held entries (hl), person versions (ver), tombstones, erasures; v3: tombstones'
# erasure and position (tombe), pending erasures (erp, erc), replicas, lease owners (hlo), and
# the catalog's keys (cat, catp, catjobs)
LAYOUT_VERSION = 3
LINK_ATTEMPTS = 20  # plans of one link met concurrent changes this often: a retriable error
# after a conflict, wait a little (1 ms doubling, at most 50 ms, jittered) so that replicas
# planning over the same persons stop colliding in step
CONFLICT_BACKOFF = RetryPolicy(base_seconds=0.001, factor=2.0, max_delay_seconds=0.05)


def _fail(exc: redis_lib.RedisError) -> NoReturn:
    retriable = isinstance(exc, redis_lib.ConnectionError | redis_lib.TimeoutError)
    raise StateError(f"Redis state: {exc}", retriable=retriable) from exc


def _num(ts: float) -> str:
    """A float as the shortest string that round-trips (Lua's tostring would round it)."""
    return repr(float(ts))


class RedisStore(RedisCatalog):
    """State in one Redis database, shared by all consumer processes that use the same URL.
    The catalog's keys and methods are `RedisCatalog`'s."""

    def __init__(
        self,
        url: str,
        dedup_window_seconds: float = DEFAULT_DEDUP_WINDOW,
        prefix: str = "ks:",
        lease_seconds: float = HELD_LEASE_SECONDS,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.url = url
        self.window = float(dedup_window_seconds)
        self.lease_seconds = float(lease_seconds)
        self.lease_owner = ""
        self.limits = limits
        self.prefix = prefix
        try:
            self._r = redis_lib.Redis.from_url(
                url, decode_responses=False, socket_connect_timeout=5.0, socket_timeout=30.0
            )
            self._r.ping()
            self._layout()
        except redis_lib.RedisError as exc:
            _fail(exc)
        self._gather = self._r.register_script(_GATHER)
        self._apply = self._r.register_script(_APPLY)
        self._hold = self._r.register_script(_HOLD)
        self._lookup = self._r.register_script(_LOOKUP)
        self._expire = self._r.register_script(_EXPIRE)
        self._reclaim = self._r.register_script(_RECLAIM)
        self._settle = self._r.register_script(_SETTLE)
        self._forget = self._r.register_script(_FORGET)
        self._tombstones = self._r.register_script(_TOMBSTONES)
        self._tomb_rows = self._r.register_script(_TOMB_ROWS)
        self._publish = self._r.register_script(_PUBLISH)
        self._replicas = self._r.register_script(_REPLICAS)
        self._purge = self._r.register_script(_PURGE)

    def _layout(self) -> None:
        """Check the data's layout version (`<prefix>layout`) and bring an older one up to
        date. v1 (no version key) lacks the leases and person versions of v2, v2 the keys of v3;
        all additions are read with defaults, so migrating is writing the version (and marking
        v2's erasure entries pending), and replicas of the previous layout can share the data
        during a rolling upgrade."""
        key = self.prefix + "layout"
        found = self._r.get(key)
        version = int(found) if found is not None else 1
        if version > LAYOUT_VERSION:
            raise StateError(
                f"Redis state at {self.prefix!r} has layout v{version}, newer than this"
                f" release's v{LAYOUT_VERSION}: upgrade klaviyo-stream",
                retriable=False,
            )
        if version < LAYOUT_VERSION:
            entries = self._r.hkeys(self.prefix + "er")
            if entries and version < 3:
                self._r.sadd(self.prefix + "erp", *entries)
            self._r.set(key, str(LAYOUT_VERSION))

    def _person(self, pid: bytes, flat: Sequence[bytes]) -> Person:
        """Parse a person hash (flat HGETALL reply) into a Person."""
        rows: list[tuple[str, str, float, int]] = []
        traits: dict[str, Any] = {}
        for i in range(0, len(flat), 2):
            field = flat[i].decode()
            if field.startswith("i:"):
                kind, _, value = field[2:].partition(":")
                ts, _, seq = flat[i + 1].decode().partition(" ")
                rows.append((kind, value, float(ts), int(seq)))
            elif field.startswith("v:"):
                traits[field[2:]] = orjson.loads(flat[i + 1])
        return build_person(pid.decode(), rows, traits)

    def link(
        self,
        identifiers: Sequence[Identifier],
        traits: Mapping[str, Any] | None = None,
        timestamp: float = 0.0,
        now: float | None = None,
        first: Identifier | None = None,
        guard: Guard | None = None,
    ) -> LinkResult:
        """See StateStore.link: one script reads what the identity rules need (and, guarded,
        the identifiers' tombstones), the rules plan the link here, a second script applies the
        plan only if nothing it read changed meanwhile (another consumer linking the same
        person, a deletion), else all of it is tried again."""
        ids = ordered_identifiers(identifiers, first)
        keys = [f"{k}:{v}" for k, v in ids]
        hashes = [tombstone_hash(ident) for ident in ids] if guard is not None else []
        lease = (time.time() if now is None else now) + self.lease_seconds
        trait_args: list[str | bytes] = []
        for key, value in (traits or {}).items():
            trait_args += [key, orjson.dumps(value)]
        for attempt in range(LINK_ATTEMPTS):
            if attempt:
                time.sleep(CONFLICT_BACKOFF.delay(attempt - 1))
            try:
                owner_list, person_list, tomb_list, tombseq = self._gather(
                    args=[self.prefix, str(len(keys)), *keys, *hashes]
                )
            except redis_lib.RedisError as exc:
                _fail(exc)
            tombs = _tomb_rows(tomb_list)
            if guard is not None and tombs and guard(tombs):
                return LinkResult(Person("", {}, {}), (), (), tombstoned=True)
            owners = {
                ident: o.decode() for ident, o in zip(ids, owner_list, strict=True) if o
            }
            holdings, versions = {}, {}
            for i in range(0, len(person_list), 2):
                pid = person_list[i].decode()
                holdings[pid], versions[pid] = _holdings(person_list[i + 1])
            plan = plan_link(ids, owners, holdings, timestamp, self.limits)
            args: list[str | bytes] = [
                self.prefix, _num(timestamp), _num(lease), self.lease_owner,
                tombseq.decode() if guard is not None else "", str(len(keys)),
            ]  # fmt: skip
            args += keys
            args += [o.decode() if o else "" for o in owner_list]
            args += [str(len(versions))]
            for pid, version in versions.items():
                args += [pid, version]
            args += [plan.anchor or ""]
            for group in (plan.fold, plan.move, plan.detach, plan.attach):
                args += [str(len(group))]
                args += [g if isinstance(g, str) else f"{g[0]}:{g[1]}" for g in group]
            args += trait_args
            try:
                reply = self._apply(args=args)
            except redis_lib.RedisError as exc:
                _fail(exc)
            if reply == [b"conflict"]:
                continue
            pid, merged, flat, released = reply
            return LinkResult(
                person=self._person(pid, flat),
                merged_ids=tuple(m.decode() for m in merged),
                released=_entries(released),
                refused=tuple(plan.refused),
                refused_persons=tuple(plan.refused_persons),
            )
        raise StateError("Redis state: a link kept meeting concurrent changes", retriable=True)

    def lookup(self, identifier: Identifier) -> Person | None:
        """See StateStore.lookup; one Lua script."""
        try:
            reply = self._lookup(args=[self.prefix, f"{identifier[0]}:{identifier[1]}"])
        except redis_lib.RedisError as exc:
            _fail(exc)
        return None if reply is None else self._person(reply[0], reply[1])

    def hold(self, anonymous_id: str, payload: bytes, now: float) -> Person | None:
        """See StateStore.hold; one Lua script."""
        try:
            reply = self._hold(args=[self.prefix, anonymous_id, payload, _num(now)])
        except redis_lib.RedisError as exc:
            _fail(exc)
        return None if reply is None else self._person(reply[0], reply[1])

    def expire_held(
        self, older_than: float, limit: int = 1000, lease_until: float | None = None
    ) -> list[HeldEntry]:
        """See StateStore.expire_held; one Lua script."""
        lease = "" if lease_until is None else _num(lease_until)
        args = [self.prefix, _num(older_than), str(int(limit)), lease, self.lease_owner]
        try:
            flat = self._expire(args=args)
        except redis_lib.RedisError as exc:
            _fail(exc)
        return list(_entries(flat))

    def reclaim_held(self, now: float, limit: int = 1000) -> list[HeldEntry]:
        """See StateStore.reclaim_held; one Lua script."""
        lease = _num(now + self.lease_seconds)
        args = [self.prefix, _num(now), str(int(limit)), lease, self.lease_owner]
        try:
            flat = self._reclaim(args=args)
        except redis_lib.RedisError as exc:
            _fail(exc)
        return list(_entries(flat))

    def settle_held(self, entry_ids: Sequence[str]) -> None:
        """See StateStore.settle_held; one Lua script."""
        if not entry_ids:
            return
        try:
            self._settle(args=[self.prefix, *entry_ids])
        except redis_lib.RedisError as exc:
            _fail(exc)

    def held_count(self) -> int:
        """See StateStore.held_count."""
        try:
            return int(self._r.zcard(self.prefix + "hz")) + int(self._r.zcard(self.prefix + "hl"))
        except redis_lib.RedisError as exc:
            _fail(exc)

    def held_bytes(self) -> int:
        """See StateStore.held_bytes."""
        try:
            return int(self._r.get(self.prefix + "hbytes") or 0)
        except redis_lib.RedisError as exc:
            _fail(exc)

    def seen(self, message_ids: Sequence[str]) -> set[str]:
        """See StateStore.seen; one MGET."""
        if not message_ids:
            return set()
        ids = list(message_ids)
        try:
            values = self._r.mget([self.prefix + "d:" + m for m in ids])
        except redis_lib.RedisError as exc:
            _fail(exc)
        return {m for m, v in zip(ids, values, strict=True) if v is not None}

    def mark_delivered(self, message_ids: Sequence[str], now: float) -> None:
        """See StateStore.mark_delivered; one pipelined round trip, keys expire at now+window."""
        if not message_ids:
            return
        until_ms = int((float(now) + self.window) * 1000)
        try:
            with self._r.pipeline(transaction=False) as pipe:
                for m in message_ids:
                    pipe.set(self.prefix + "d:" + m, b"1", pxat=until_ms)
                pipe.execute()
        except redis_lib.RedisError as exc:
            _fail(exc)

    def unmark(self, message_ids: Sequence[str]) -> None:
        """See StateStore.unmark."""
        if not message_ids:
            return
        try:
            self._r.delete(*[self.prefix + "d:" + m for m in message_ids])
        except redis_lib.RedisError as exc:
            _fail(exc)

    def prune(self, now: float) -> int:
        """Nothing to do: Redis expires dedup keys itself (always 0)."""
        return 0

    def stats(self) -> dict[str, int]:
        """See StateStore.stats, in O(1): `dedup_keys` is the database's count of keys with an
        expiry (`INFO keyspace`), which are ours (`d:*`) when nothing else sets expiries in it;
        keys just expired count until Redis reclaims them."""
        p = self.prefix
        try:
            with self._r.pipeline(transaction=False) as pipe:
                pipe.get(p + "n:persons")
                pipe.hlen(p + "ids")
                pipe.zcard(p + "hz")
                pipe.zcard(p + "hl")
                persons, identifiers, held, leased = pipe.execute()
            db = self._r.connection_pool.connection_kwargs.get("db", 0)
            keyspace = self._r.info("keyspace").get(f"db{db}", {})
        except redis_lib.RedisError as exc:
            _fail(exc)
        return {
            "persons": int(persons or 0),
            "identifiers": int(identifiers),
            "dedup_keys": int(keyspace.get("expires", 0)),
            "held": int(held) + int(leased),
        }

    def forget(
        self,
        identifiers: Sequence[Identifier],
        deleted_at: float,
        erasure_id: str,
        position: Position | None = None,
    ) -> Forgotten:
        """See StateStore.forget: one script reads the owners (as `link` does), the rules
        decide whom the call erases and the tombstone hashes are worked out here (Redis' Lua
        has no SHA-256), a second script applies it only if nothing it read changed meanwhile."""
        ids = check_identifiers(identifiers)
        keys = [f"{k}:{v}" for k, v in ids]
        asked = [tombstone_hash(ident) for ident in ids]
        for attempt in range(LINK_ATTEMPTS):
            if attempt:
                time.sleep(CONFLICT_BACKOFF.delay(attempt - 1))
            try:
                owner_list, person_list, _tombs, tombseq = self._gather(
                    args=[self.prefix, str(len(keys)), *keys]
                )
            except redis_lib.RedisError as exc:
                _fail(exc)
            owners = {ident: o.decode() for ident, o in zip(ids, owner_list, strict=True) if o}
            holdings: dict[str, Any] = {}
            versions: list[str] = []
            for i in range(0, len(person_list), 2):
                pid = person_list[i].decode()
                holdings[pid], version = _holdings(person_list[i + 1])
                versions += [pid, version]
            plan = plan_erasure(ids, owners, holdings, self.limits)
            removed = [ident for ident in ids if ident in plan.unowned]
            for pid in plan.persons:
                for kind, values in holdings[pid].items():
                    for value, _seen in sorted(values, key=lambda v: -v[1]):
                        if (kind, value) not in removed:
                            removed.append((kind, value))
            removed.sort(
                key=lambda ident: (ident not in ids, ids.index(ident) if ident in ids else 0)
            )
            anons = [value for kind, value in removed if kind == "anonymous_id"]
            seq = int(tombseq) + 1
            now = time.time()
            forgotten = Forgotten(
                tuple(removed), len(plan.persons), person_ids=tuple(plan.persons),
                others=len(plan.others), seq=seq,
            )  # fmt: skip
            extra = Tombstone(deleted_at, seq, erasure_id, position).encode()
            args: list[str | bytes] = [
                self.prefix, erasure_id, _num(deleted_at), forgotten.encode(now), extra,
                _num(now), tombseq.decode(),
                str(len(asked)), *asked,
                str(len(keys)), *keys, *[o.decode() if o else "" for o in owner_list],
                str(len(versions) // 2), *versions,
                str(len(plan.persons)), *plan.persons,
                str(len(anons)), *anons,
                str(len(removed)), *[tombstone_hash(ident) for ident in removed],
            ]  # fmt: skip
            try:
                reply = self._forget(args=args)
            except redis_lib.RedisError as exc:
                _fail(exc)
            if reply[0] == b"again":
                return Forgotten.decode(reply[1])
            if reply[0] == b"applied":
                return Forgotten((), again=True)
            if reply[0] == b"done":
                return replace(forgotten, held=int(reply[1]), seq=int(reply[2]))
        raise StateError("Redis state: a deletion kept meeting concurrent changes", retriable=True)

    def settle_erasure(self, erasure_id: str) -> None:
        """See StateStore.settle_erasure."""
        p = self.prefix
        try:
            with self._r.pipeline(transaction=True) as pipe:
                pipe.hdel(p + "er", erasure_id)
                pipe.srem(p + "erp", erasure_id)
                pipe.zrem(p + "erc", erasure_id)
                pipe.execute()
        except redis_lib.RedisError as exc:
            _fail(exc)

    def reopen_erasure(self, erasure_id: str) -> Forgotten | None:
        """See StateStore.reopen_erasure."""
        p = self.prefix
        try:
            with self._r.pipeline(transaction=True) as pipe:
                pipe.hget(p + "er", erasure_id)
                pipe.sadd(p + "erp", erasure_id)
                payload, _added = pipe.execute()
            if payload is None:
                self._r.srem(p + "erp", erasure_id)
                return None
        except redis_lib.RedisError as exc:
            _fail(exc)
        return Forgotten.decode(payload)

    def fail_erasure(self, erasure_id: str) -> None:
        """See StateStore.fail_erasure."""
        try:
            self._r.srem(self.prefix + "erp", erasure_id)
        except redis_lib.RedisError as exc:
            _fail(exc)

    def open_erasures(self) -> set[str]:
        """See StateStore.open_erasures."""
        try:
            members = self._r.smembers(self.prefix + "erp")
        except redis_lib.RedisError as exc:
            _fail(exc)
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    def purge_erasures(self, older_than: float) -> int:
        """See StateStore.purge_erasures; one Lua script."""
        try:
            return int(self._purge(args=[self.prefix, _num(older_than)]))
        except redis_lib.RedisError as exc:
            _fail(exc)

    def tombstones(
        self, after: int = 0, limit: int = 10_000
    ) -> tuple[list[tuple[str, Tombstone]], int]:
        """See StateStore.tombstones; one Lua script."""
        try:
            flat = self._tombstones(args=[self.prefix, str(int(after)), str(int(limit))])
        except redis_lib.RedisError as exc:
            _fail(exc)
        rows = _tomb_rows(flat)
        last = max((tomb.seq for tomb in rows.values()), default=int(after))
        return sorted(rows.items(), key=lambda row: row[1].seq), last

    def tombstone_mark(self) -> int:
        """See StateStore.tombstone_mark."""
        try:
            return int(self._r.get(self.prefix + "seq:tomb") or 0)
        except redis_lib.RedisError as exc:
            _fail(exc)

    def tombstone_rows(self, hashes: Sequence[str]) -> dict[str, Tombstone]:
        """See StateStore.tombstone_rows; one Lua script."""
        if not hashes:
            return {}
        try:
            return _tomb_rows(self._tomb_rows(args=[self.prefix, *hashes]))
        except redis_lib.RedisError as exc:
            _fail(exc)

    def tombstone_hashes(self, cursor: str = "", count: int = 10_000) -> tuple[list[str], str]:
        """See StateStore.tombstone_hashes: `HSCAN` pages (a hash may come twice; it counts
        once; the times that come along are dropped: NOVALUES needs Redis 7.4)."""
        try:
            nxt, found = self._r.hscan(self.prefix + "tomb", int(cursor or 0), count=count)
        except redis_lib.RedisError as exc:
            _fail(exc)
        hashes = [h.decode() if isinstance(h, bytes) else str(h) for h in found]
        return hashes, ("" if int(nxt) == 0 else str(nxt))

    # replicas -----------------------------------------------------------------------------

    def publish_mark(self, replica: str, mark: int, ttl: float) -> None:
        """See StateStore.publish_mark: alive on Redis' own clock (`TIME`)."""
        try:
            self._publish(args=[self.prefix, replica, str(int(mark)), str(int(ttl * 1000))])
        except redis_lib.RedisError as exc:
            _fail(exc)

    def _replicas_now(self, grace: float, live: bool) -> tuple[int | None, set[str]]:
        args = [self.prefix, str(int(grace * 1000)), "live" if live else ""]
        try:
            reply = self._replicas(args=args)
        except redis_lib.RedisError as exc:
            _fail(exc)
        low = reply[0].decode()
        return (int(low) if low else None), {r.decode() for r in reply[1:]}

    def low_mark(self, grace: float = 0.0) -> int | None:
        """See StateStore.low_mark; one Lua script."""
        return self._replicas_now(grace, live=False)[0]

    def live_replicas(self) -> set[str]:
        """See StateStore.live_replicas; one Lua script."""
        return self._replicas_now(0.0, live=True)[1]

    def close(self) -> None:
        """Close the connection pool; the data stays in Redis."""
        self._r.close()


def _holdings(flat: Sequence[bytes]) -> tuple[dict[Any, list[tuple[str, float]]], str]:
    """A person hash (flat HGETALL) as the identity rules read it, and its version."""
    kinds: dict[Any, list[tuple[str, float]]] = {}
    version = "0"
    for i in range(0, len(flat), 2):
        field = flat[i].decode()
        if field.startswith("i:"):
            kind, _, value = field[2:].partition(":")
            kinds.setdefault(kind, []).append((value, float(flat[i + 1].split(b" ", 1)[0])))
        elif field == "ver":
            version = flat[i + 1].decode()
    return kinds, version


def _tomb_rows(flat: Sequence[bytes]) -> dict[str, Tombstone]:
    """(hash, deleted_at, mark, extra) quadruples of a script's flat reply."""
    return {
        flat[i].decode(): Tombstone.decode(
            float(flat[i + 1]), int(float(flat[i + 2])), flat[i + 3].decode()
        )
        for i in range(0, len(flat), 4)
    }


def _entries(flat: Sequence[bytes]) -> tuple[HeldEntry, ...]:
    """(entry id, anonymous id, payload) triples of a script's flat reply."""
    return tuple(
        HeldEntry(flat[i].decode(), flat[i + 1].decode(), bytes(flat[i + 2]))
        for i in range(0, len(flat), 3)
    )

