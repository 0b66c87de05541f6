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
    seq:tomb            counter of tombstone write marks
    er                  hash erasure id -> the identifiers removed (until Klaviyo has them)
    cat / catp / catjobs  the catalog's resources, job pointers and jobs (`catalog_redis`)
    layout              the layout version (absent: v1)
Scripts compute key names at run time, so Redis Cluster is not supported (one primary only).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import orjson
import redis as redis_lib

from stream.core.errors import StateError
from stream.core.retry import RetryPolicy
from stream.state.base import (
    DEFAULT_DEDUP_WINDOW,
    HELD_LEASE_SECONDS,
    Forgotten,
    HeldEntry,
    Identifier,
    LinkResult,
    Person,
    build_person,
    check_identifiers,
    tombstone_hash,
)
from stream.state.catalog_redis import RedisCatalog
from stream.state.rules import DEFAULT_LIMITS, Limits, ordered_identifiers, plan_link

_RELEASE = """
local function release(P, anons, lease)
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
return {owners, persons}
"""

_APPLY = (
    _RELEASE
    + """
local P, ts, lease = ARGV[1], ARGV[2], ARGV[3]
local tsn = tonumber(ts)
local idmap = P .. 'ids'
local at = 4
local function take()
  local v = ARGV[at]
  at = at + 1
  return v
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
  released = release(P, candidates, lease)
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
local P, lease = ARGV[1], ARGV[4]
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
  end
  out[#out + 1] = m
  out[#out + 1] = anon
  out[#out + 1] = payload
end
if bytes > 0 then redis.call('DECRBY', P .. 'hbytes', bytes) end
return out
"""

_RECLAIM = """
local P, lease = ARGV[1], ARGV[4]
local ms = redis.call('ZRANGEBYSCORE', P .. 'hl', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local out = {}
for _, m in ipairs(ms) do
  redis.call('ZADD', P .. 'hl', lease, m)
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
  end
end
if bytes > 0 then redis.call('DECRBY', P .. 'hbytes', bytes) end
return bytes
"""

_FORGET = """
local P, eid, dat, payload = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local existing = redis.call('HGET', P .. 'er', eid)
if existing then return {'again', existing} end
local idmap = P .. 'ids'
local at = 5
local function take()
  local v = ARGV[at]
  at = at + 1
  return v
end
-- applied before: every identifier asked has a tombstone at least as late
local na0 = tonumber(take())
local applied = true
for i = 1, na0 do
  local cur = redis.call('HGET', P .. 'tomb', take())
  if (not cur) or tonumber(cur) < tonumber(dat) then applied = false end
end
if applied then return {'applied'} end
-- nothing the caller read changed meanwhile: the identifiers' owners, and each owner
local n = tonumber(take())
for i = 1, n do
  if (redis.call('HGET', idmap, ARGV[at]) or '') ~= ARGV[at + n] then return {'conflict'} end
  at = at + 1
end
at = at + n
local np = tonumber(take())
local persons = {}
for i = 1, np do
  local pid, ver = take(), take()
  if (redis.call('HGET', P .. 'p:' .. pid, 'ver') or '0') ~= ver then return {'conflict'} end
  persons[#persons + 1] = pid
end
for _, pid in ipairs(persons) do
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
  if (not cur) or tonumber(dat) > tonumber(cur) then redis.call('HSET', P .. 'tomb', h, dat) end
  redis.call('ZADD', P .. 'tombz', seq, h)
end
redis.call('HSET', P .. 'er', eid, payload)
return {'done', tostring(held)}
"""

_TOMBSTONES = """
local P = ARGV[1]
local found = redis.call('ZRANGEBYSCORE', P .. 'tombz', '(' .. ARGV[2], '+inf', 'WITHSCORES')
local out = {}
for k = 1, #found, 2 do
  out[#out + 1] = found[k]
  out[#out + 1] = redis.call('HGET', P .. 'tomb', found[k])
  out[#out + 1] = found[k + 1]
end
return out
"""


LAYOUT_VERSION = 3  # v2: leased held entries (hl), person versions (ver), tombstones, erasures
# v3: the catalog's keys (cat, catp, catjobs): new keys, nothing to migrate
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

    def _layout(self) -> None:
        """Check the data's layout version (`<prefix>layout`) and bring an older one up to
        date. v1 (no version key) lacks the leases and person versions of v2; both additions
        are read with defaults, so migrating is writing the version, and replicas of v1 and v2
        can share the data during a rolling upgrade."""
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
    ) -> LinkResult:
        """See StateStore.link: one script reads what the identity rules need, the rules plan
        the link here, a second script applies the plan only if nothing it read changed
        meanwhile (another consumer linking the same person), else all of it is tried again."""
        ids = ordered_identifiers(identifiers, first)
        keys = [f"{k}:{v}" for k, v in ids]
        lease = (time.time() if now is None else now) + self.lease_seconds
        trait_args: list[str | bytes] = []
        for key, value in (traits or {}).items():
            trait_args += [key, orjson.dumps(value)]
        for attempt in range(LINK_ATTEMPTS):
            if attempt:
                time.sleep(CONFLICT_BACKOFF.delay(attempt - 1))
            try:
                owner_list, person_list = self._gather(
                    args=[self.prefix, str(len(keys)), *keys]
                )
            except redis_lib.RedisError as exc:
                _fail(exc)
            owners = {
                ident: o.decode() for ident, o in zip(ids, owner_list, strict=True) if o
            }
            holdings, versions = {}, {}
            for i in range(0, len(person_list), 2):
                pid = person_list[i].decode()
                holdings[pid], versions[pid] = _holdings(person_list[i + 1])
            plan = plan_link(ids, owners, holdings, timestamp, self.limits)
            args: list[str | bytes] = [self.prefix, _num(timestamp), _num(lease), str(len(keys))]
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
        try:
            flat = self._expire(args=[self.prefix, _num(older_than), str(int(limit)), lease])
        except redis_lib.RedisError as exc:
            _fail(exc)
        return list(_entries(flat))

    def reclaim_held(self, now: float, limit: int = 1000) -> list[HeldEntry]:
        """See StateStore.reclaim_held; one Lua script."""
        lease = _num(now + self.lease_seconds)
        try:
            flat = self._reclaim(args=[self.prefix, _num(now), str(int(limit)), lease])
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
        self, identifiers: Sequence[Identifier], deleted_at: float, erasure_id: str
    ) -> Forgotten:
        """See StateStore.forget: one script reads the owners (as `link` does), the rest of
        their identifiers and the tombstone hashes are worked out here (Redis' Lua has no
        SHA-256), a second script applies it only if nothing it read changed meanwhile."""
        ids = check_identifiers(identifiers)
        keys = [f"{k}:{v}" for k, v in ids]
        for attempt in range(LINK_ATTEMPTS):
            if attempt:
                time.sleep(CONFLICT_BACKOFF.delay(attempt - 1))
            try:
                owner_list, person_list = self._gather(args=[self.prefix, str(len(keys)), *keys])
            except redis_lib.RedisError as exc:
                _fail(exc)
            removed: list[Identifier] = list(ids)
            versions: list[str] = []
            for i in range(0, len(person_list), 2):
                holdings, version = _holdings(person_list[i + 1])
                versions += [person_list[i].decode(), version]
                for kind, values in holdings.items():
                    for value, _seen in sorted(values, key=lambda v: -v[1]):
                        if (kind, value) not in removed:
                            removed.append((kind, value))
            anons = [value for kind, value in removed if kind == "anonymous_id"]
            forgotten = Forgotten(tuple(removed), len(versions) // 2)
            args: list[str | bytes] = [
                self.prefix, erasure_id, _num(deleted_at), forgotten.encode(),
                str(len(ids)), *[tombstone_hash(ident) for ident in ids],
                str(len(keys)), *keys, *[o.decode() if o else "" for o in owner_list],
                str(len(versions) // 2), *versions,
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
                return Forgotten(forgotten.identifiers, forgotten.persons, int(reply[1]))
        raise StateError("Redis state: a deletion kept meeting concurrent changes", retriable=True)

    def settle_erasure(self, erasure_id: str) -> None:
        """See StateStore.settle_erasure."""
        try:
            self._r.hdel(self.prefix + "er", erasure_id)
        except redis_lib.RedisError as exc:
            _fail(exc)

    def tombstones(self, after: int = 0) -> tuple[list[tuple[str, float]], int]:
        """See StateStore.tombstones; one Lua script."""
        try:
            flat = self._tombstones(args=[self.prefix, str(int(after))])
        except redis_lib.RedisError as exc:
            _fail(exc)
        found = [(flat[i].decode(), float(flat[i + 1])) for i in range(0, len(flat), 3)]
        last = max((int(float(flat[i + 2])) for i in range(0, len(flat), 3)), default=int(after))
        return found, last

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


def _entries(flat: Sequence[bytes]) -> tuple[HeldEntry, ...]:
    """(entry id, anonymous id, payload) triples of a script's flat reply."""
    return tuple(
        HeldEntry(flat[i].decode(), flat[i + 1].decode(), bytes(flat[i + 2]))
        for i in range(0, len(flat), 3)
    )

