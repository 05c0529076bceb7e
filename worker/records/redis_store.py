"""The fleet's record store: one Redis hash a render, each transition one Lua script that checks the state
(and the lease key) before it writes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import redis

from worker.errors import StorageError
from worker.records.base import CancelResult, RecordStore, StartResult, clean_reason, encode_fields, now_iso

# KEYS = [record, lease] in every script. A lease key holds its holder's token and expires on its own.

_START = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'completed' or state == 'failed' or state == 'cancelled' then return {'terminal', 0, state} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {'busy', 0, state or ''} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if not state then
  local defaults = cjson.decode(ARGV[4])
  for k, v in pairs(defaults) do redis.call('HSET', KEYS[1], k, v) end
end
redis.call('HSET', KEYS[1], 'state', 'processing', 'started_at', ARGV[3], 'progress', '0',
           'error_code', '', 'error_message', '')
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {'started', attempts, 'processing'}
"""

# The holder renews its lease; a lapsed lease nobody took over is taken back.
_PROGRESS = """
if redis.call('HGET', KEYS[1], 'state') ~= 'processing' then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
return 1
"""

_NOTE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'processing' then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
local fields = cjson.decode(ARGV[2])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
return 1
"""

_COMPLETE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'processing' then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
local fields = cjson.decode(ARGV[2])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
redis.call('HSET', KEYS[1], 'state', 'completed', 'progress', '1')
redis.call('DEL', KEYS[2])
return 1
"""

_FAIL = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'completed' or state == 'failed' or state == 'cancelled' then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[6] then return 0 end
if not state then
  local defaults = cjson.decode(ARGV[4])
  for k, v in pairs(defaults) do redis.call('HSET', KEYS[1], k, v) end
end
redis.call('HSET', KEYS[1], 'state', 'failed', 'error_code', ARGV[1], 'error_message', ARGV[2],
           'completed_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('DEL', KEYS[2])
return 1
"""

_RELEASE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'processing' then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
local note = cjson.decode(ARGV[2])
for k, v in pairs(note) do redis.call('HSET', KEYS[1], k, v) end
return 1
"""

# No token: whoever asks may cancel a render that has not ended. The lease goes, so the worker rendering it
# is refused from now on (progress, complete, fail, release all need 'processing').
_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', ''} end
if state == 'completed' or state == 'failed' or state == 'cancelled' then return {'terminal', state} end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'cancelled_at', ARGV[1], 'cancel_reason', ARGV[2],
           'error_code', '', 'error_message', '')
redis.call('DEL', KEYS[2])
return {'cancelled', state}
"""

_MARK_EVENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'event_enqueued', '1')
return 1
"""


class RedisRecordStore(RecordStore):
    def __init__(self, client: redis.Redis, *, ttl_s: int = 30 * 86400, prefix: str = "render") -> None:
        self.r = client
        self.ttl_s = ttl_s
        self.prefix = prefix
        self._start = client.register_script(_START)
        self._progress = client.register_script(_PROGRESS)
        self._complete = client.register_script(_COMPLETE)
        self._note = client.register_script(_NOTE)
        self._fail = client.register_script(_FAIL)
        self._release = client.register_script(_RELEASE)
        self._mark_event = client.register_script(_MARK_EVENT)
        self._cancel = client.register_script(_CANCEL)
        self._part_lease = client.register_script(_PART_LEASE)
        self._part_release = client.register_script(_PART_RELEASE)

    @classmethod
    def from_url(cls, url: str, *, ttl_s: int = 30 * 86400) -> RedisRecordStore:
        return cls(redis.Redis.from_url(url, decode_responses=True), ttl_s=ttl_s)

    def _keys(self, render_id: str) -> list[str]:
        return [f"{self.prefix}:{render_id}", f"{self.prefix}:{render_id}:lease"]

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise StorageError(f"render record store unavailable: {exc}") from exc

    def create(self, render_id: str, fields: Mapping[str, Any]) -> bool:
        key = self._keys(render_id)[0]
        values = encode_fields({"id": render_id, "state": "pending", "attempts": 0, **fields})

        def txn(pipe: Any) -> bool:
            if pipe.exists(key):
                return False
            pipe.multi()
            pipe.hset(key, mapping=values)
            pipe.expire(key, self.ttl_s)
            return True

        return bool(self._call(self.r.transaction, txn, key, value_from_callable=True))

    def start(self, render_id: str, token: str, lease_ttl_s: float, defaults: Mapping[str, Any]) -> StartResult:
        d = encode_fields({"id": render_id, "created_at": now_iso(), **defaults})
        status, attempts, state = self._call(
            self._start,
            keys=self._keys(render_id),
            args=[token, _ms(lease_ttl_s), now_iso(), json.dumps(d), self.ttl_s],
        )
        return StartResult(status=status, attempts=int(attempts), state=state or None)

    def progress(self, render_id: str, token: str, ratio: float, lease_ttl_s: float) -> bool:
        args = [token, f"{ratio:.4f}", _ms(lease_ttl_s)]
        return bool(self._call(self._progress, keys=self._keys(render_id), args=args))

    def note(self, render_id: str, token: str, fields: Mapping[str, Any]) -> bool:
        f = encode_fields(fields)
        return bool(self._call(self._note, keys=self._keys(render_id), args=[token, json.dumps(f)]))

    def complete(self, render_id: str, token: str, fields: Mapping[str, Any]) -> bool:
        f = encode_fields({"completed_at": now_iso(), **fields})
        return bool(self._call(self._complete, keys=self._keys(render_id), args=[token, json.dumps(f)]))

    def fail(self, render_id: str, token: str | None, code: str, message: str, defaults: Mapping[str, Any]) -> bool:
        d = encode_fields({"id": render_id, "created_at": now_iso(), "attempts": 0, **defaults})
        # No token is sent as "": no lease ever holds the empty token, so any holder refuses it.
        args = [code, message, now_iso(), json.dumps(d), self.ttl_s, token or ""]
        return bool(self._call(self._fail, keys=self._keys(render_id), args=args))

    def release(self, render_id: str, token: str, note: Mapping[str, Any] | None = None) -> bool:
        args = [token, json.dumps(encode_fields(note or {}))]
        return bool(self._call(self._release, keys=self._keys(render_id), args=args))

    def cancel(self, render_id: str, reason: Any = None) -> CancelResult:
        args = [now_iso(), clean_reason(reason)]
        status, state = self._call(self._cancel, keys=self._keys(render_id), args=args)
        return CancelResult(status, state or None, self.get(render_id))

    def get_raw(self, render_id: str) -> dict[str, str] | None:
        raw = self._call(self.r.hgetall, self._keys(render_id)[0])
        return dict(raw) if raw else None

    def state(self, render_id: str) -> str | None:
        return self._call(self.r.hget, self._keys(render_id)[0], "state") or None

    def mark_event(self, render_id: str) -> None:
        self._call(self._mark_event, keys=self._keys(render_id), args=[])

    def _part_key(self, render_id: str, part: str) -> str:
        return f"{self.prefix}:{render_id}:part:{part}"

    def part_lease(self, render_id: str, part: str, token: str, ttl_s: float) -> bool:
        key = self._part_key(render_id, part)
        return bool(self._call(self._part_lease, keys=[key], args=[token, _ms(ttl_s)]))

    def part_release(self, render_id: str, part: str, token: str) -> None:
        self._call(self._part_release, keys=[self._part_key(render_id, part)], args=[token])

    def chunk_stored(self, render_id: str, index: int) -> int:
        key = f"{self.prefix}:{render_id}:chunks:stored"
        pipe = self.r.pipeline()
        pipe.sadd(key, str(index))
        pipe.expire(key, self.ttl_s)
        pipe.scard(key)
        return int(self._call(pipe.execute)[-1])

    def chunk_progress(self, render_id: str, index: int, frames: int) -> int:
        key = f"{self.prefix}:{render_id}:chunks:progress"
        pipe = self.r.pipeline()
        pipe.hset(key, str(index), str(int(frames)))
        pipe.expire(key, self.ttl_s)
        pipe.hvals(key)
        return sum(int(v) for v in self._call(pipe.execute)[-1])

    def chunks_clear(self, render_id: str) -> None:
        base = f"{self.prefix}:{render_id}"
        keys = [f"{base}:chunks:stored", f"{base}:chunks:progress"]
        keys += list(self._call(lambda: list(self.r.scan_iter(match=f"{base}:part:*", count=1000))))
        self._call(self.r.delete, *keys)


_PART_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_PART_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
