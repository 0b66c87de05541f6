"""The catalog's keys in the Redis store (`stream.state.catalog` says what they hold).

A mixin of `RedisStore`, under its prefix:
    cat      hash  resource key -> "<1|0> <partition> <offset> <topic>": what Klaviyo accepted
    catp     hash  resource key -> the id of the job in progress holding it
    catjobs  hash  job id -> the job (kind, action, members, started)
A job's finish is one Lua script (move forward only, release the members, forget the job).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import redis as redis_lib

from stream.core.errors import StateError
from stream.state.catalog import CatalogJob, CatalogState, Version

# ARGV: prefix, job id, then per accepted resource: key, present, topic, partition, offset
_FINISH = """
local P, job = ARGV[1], ARGV[2]
local i = 3
while i <= #ARGV do
  local key, present, topic, part, off = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  local old = redis.call('HGET', P .. 'cat', key)
  local keep = false
  if old then
    local _, _, _, opart, ooff, otopic = string.find(old, '^(%S+) (%S+) (%S+) (.*)$')
    if otopic == topic and opart == part and tonumber(ooff) > tonumber(off) then keep = true end
  end
  if not keep then
    redis.call('HSET', P .. 'cat', key, present .. ' ' .. part .. ' ' .. off .. ' ' .. topic)
  end
  if redis.call('HGET', P .. 'catp', key) == job then redis.call('HDEL', P .. 'catp', key) end
  i = i + 5
end
local stored = redis.call('HGET', P .. 'catjobs', job)
if stored then
  for _, key in ipairs(cjson.decode(stored)['m']) do
    if redis.call('HGET', P .. 'catp', key[1]) == job then
      redis.call('HDEL', P .. 'catp', key[1])
    end
  end
  redis.call('HDEL', P .. 'catjobs', job)
end
return 1
"""


def _fail(exc: redis_lib.RedisError) -> NoReturn:
    retriable = isinstance(exc, redis_lib.ConnectionError | redis_lib.TimeoutError)
    raise StateError(f"Redis state: {exc}", retriable=retriable) from exc


class RedisCatalog:
    """`CatalogStore` on the Redis store's connection."""

    _r: redis_lib.Redis
    prefix: str
    _finish_script: Any = None

    def catalog_states(self, keys: Sequence[str]) -> dict[str, CatalogState]:
        """See CatalogStore.catalog_states: two HMGETs in one round trip."""
        if not keys:
            return {}
        p = self.prefix
        try:
            with self._r.pipeline(transaction=False) as pipe:
                pipe.hmget(p + "cat", list(keys))
                pipe.hmget(p + "catp", list(keys))
                marks, jobs = pipe.execute()
        except redis_lib.RedisError as exc:
            _fail(exc)
        out: dict[str, CatalogState] = {}
        for key, mark, job in zip(keys, marks, jobs, strict=True):
            if mark is None and job is None:
                continue
            exists: bool | None = None
            version: Version | None = None
            if mark is not None:
                present, part, offset, topic = mark.decode().split(" ", 3)
                exists, version = present == "1", (topic, int(part), int(offset))
            out[key] = CatalogState(exists, version, job.decode() if job else None)
        return out

    def catalog_job_started(self, job: CatalogJob) -> None:
        """See CatalogStore.catalog_job_started: one MULTI."""
        p = self.prefix
        try:
            with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(p + "catjobs", job.id, job.encode())
                pipe.hset(p + "catp", mapping={key: job.id for key, _ in job.members})
                pipe.execute()
        except redis_lib.RedisError as exc:
            _fail(exc)

    def catalog_job_finished(
        self, job_id: str, accepted: Sequence[tuple[str, bool, Version]]
    ) -> None:
        """See CatalogStore.catalog_job_finished: one Lua script."""
        if self._finish_script is None:
            self._finish_script = self._r.register_script(_FINISH)
        args: list[str] = [self.prefix, job_id]
        for key, exists, (topic, partition, offset) in accepted:
            args += [key, "1" if exists else "0", topic, str(partition), str(offset)]
        try:
            self._finish_script(args=args)
        except redis_lib.RedisError as exc:
            _fail(exc)

    def catalog_job(self, job_id: str) -> CatalogJob | None:
        """See CatalogStore.catalog_job."""
        try:
            payload = self._r.hget(self.prefix + "catjobs", job_id)
        except redis_lib.RedisError as exc:
            _fail(exc)
        if payload is None:
            return None
        raw = payload if isinstance(payload, bytes) else payload.encode()
        return CatalogJob.decode(job_id, raw)

    def catalog_stats(self) -> dict[str, int]:
        """See CatalogStore.catalog_stats."""
        try:
            with self._r.pipeline(transaction=False) as pipe:
                pipe.hlen(self.prefix + "cat")
                pipe.hlen(self.prefix + "catjobs")
                resources, jobs = pipe.execute()
        except redis_lib.RedisError as exc:
            _fail(exc)
        return {"catalog_resources": int(resources), "catalog_jobs": int(jobs)}
