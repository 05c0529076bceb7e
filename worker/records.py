"""Render records and their guarded state transitions.

A record moves ``pending → processing → completed | failed | cancelled``, and a
pending render may also go straight to ``cancelled``; the last three are
terminal. Every transition is one atomic step (a Lua script in Redis, a lock in
memory) that checks the current state first, so a duplicate or late
redelivery of a finished render changes nothing, and a cancel racing with a
completion leaves exactly one of them in the record.

A *lease* says which worker is rendering right now. It is renewed while the
render runs and lapses ``lease_ttl_s`` after its worker dies, so a job that
Dramatiq requeues after a crash can be taken over, while a duplicate delivered
during a live render is told to come back later instead of rendering twice.

The contract, the same for both stores (tests/test_records.py runs one suite
against each):

* every transition of a started render carries the lease token (``start``,
  ``progress``, ``complete``, ``fail``, ``release``) and is refused while
  *another* token holds the lease. A lapsed lease that nobody took over still
  lets its last holder renew, complete or fail: its render is still the latest;
* a terminal record never changes again, whoever asks;
* only ``create``, ``start`` and ``fail`` may create a record; ``release``,
  ``progress``, ``complete``, ``cancel`` and ``mark_event`` never do;
* ``cancel`` is the one transition that needs no lease token: it is asked for
  from outside (the API, ``render-cli cancel``). It moves a pending or
  processing record to ``cancelled`` and drops the lease, so the worker
  rendering it can no longer renew, complete, fail or release it; the worker
  notices (it polls :meth:`RecordStore.state` while rendering) and stops.

Two implementations share the :class:`RecordStore` interface: Redis for the
fleet and memory for ``render-cli`` and unit tests.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from worker.errors import StorageError, redact

TERMINAL = ("completed", "failed", "cancelled")
#: Longest cancel reason kept in a record (it is free text from whoever asked).
MAX_REASON_CHARS = 200
# Fields of the public record (DESIGN.md); the rest of the hash is internal.
PUBLIC_FIELDS = (
    "id",
    "asset_id",
    "cut_id",
    "state",
    "output",
    "size_bytes",
    "duration_s",
    "error_code",
    "error_message",
    "created_at",
    "started_at",
    "completed_at",
    "cancelled_at",
    "cancel_reason",
    "progress",
    "encoder",
    "attempts",
    "loudness",
    "frames",
)
_INT_FIELDS = {"size_bytes", "attempts"}
_FLOAT_FIELDS = {"duration_s", "progress"}


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class StartResult:
    status: str  # "started", "terminal" or "busy"
    attempts: int = 0
    state: str | None = None


@dataclasses.dataclass(frozen=True)
class CancelResult:
    """What a cancel did: ``cancelled`` (it moved the record), ``terminal`` (nothing: it had ended) or ``missing``.

    ``state`` is the state the record was in when asked (None when missing); ``record`` the record afterwards.
    """

    status: str
    state: str | None = None
    record: dict[str, Any] | None = None

    @property
    def changed(self) -> bool:
        return self.status == "cancelled"


def clean_reason(reason: Any) -> str:
    """A cancel reason as stored: printable text on one line, secrets redacted, at most :data:`MAX_REASON_CHARS`.

    It is free text from the API or an operator and ends up in the public
    record, so it gets the same treatment as an error message: every
    character Python does not call printable (controls, line and paragraph
    separators, zero-width and bidirectional-override characters) becomes a
    space, so a reason cannot forge a log line or reorder what a reader sees;
    runs of spaces collapse; a ``whsec_`` secret is redacted before the text is
    cut, so a secret cut short is still hidden.
    """
    if reason is None:
        return ""
    text = reason if isinstance(reason, str) else str(reason)
    text = text[: MAX_REASON_CHARS * 8]  # bound the work on a huge value
    text = redact(" ".join("".join(c if c.isprintable() else " " for c in text).split()))
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def decode_record(raw: Mapping[str, str]) -> dict[str, Any]:
    """The stored strings as the public record: typed values, nulls for empty fields."""
    out: dict[str, Any] = {}
    for field in PUBLIC_FIELDS:
        value: Any = raw.get(field)
        if value in (None, ""):
            value = 0 if field == "attempts" else (0.0 if field == "progress" else None)
        elif field in _INT_FIELDS:
            value = int(value)
        elif field in _FLOAT_FIELDS:
            value = float(value)
        elif field in ("output", "loudness", "frames"):
            value = json.loads(value)
        out[field] = value
    out["output_key"] = raw.get("output_key") or None
    # The name a download is saved under (pipeline.download_name); internal, like output_key.
    out["download_name"] = raw.get("download_name") or None
    return out


def encode_fields(fields: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in fields.items():
        if v is None:
            out[k] = ""
        elif isinstance(v, dict | list):
            out[k] = json.dumps(v, separators=(",", ":"))
        else:
            out[k] = str(v)
    return out


class RecordStore(abc.ABC):
    """Where render records live. All transitions are guarded and atomic (see the module docstring)."""

    @abc.abstractmethod
    def create(self, render_id: str, fields: Mapping[str, Any]) -> bool:
        """A new pending record; False if one exists already."""

    @abc.abstractmethod
    def start(self, render_id: str, token: str, lease_ttl_s: float, defaults: Mapping[str, Any]) -> StartResult:
        """Take the lease and move to processing (counting the attempt), unless terminal or leased."""

    @abc.abstractmethod
    def progress(self, render_id: str, token: str, ratio: float, lease_ttl_s: float) -> bool:
        """Record progress and renew the lease; False if another token holds it or the record is not processing."""

    @abc.abstractmethod
    def note(self, render_id: str, token: str, fields: Mapping[str, Any]) -> bool:
        """Write ``fields`` into a processing record held by ``token`` (the encoder once it is known); False if
        the record is not processing or another token holds it."""

    @abc.abstractmethod
    def complete(self, render_id: str, token: str, fields: Mapping[str, Any]) -> bool:
        """processing → completed, for the lease holder; False if terminal, not started, or leased by another."""

    @abc.abstractmethod
    def fail(self, render_id: str, token: str | None, code: str, message: str, defaults: Mapping[str, Any]) -> bool:
        """Any non-terminal state → failed (creating the record if needed).

        False if already terminal or another token holds the lease. ``token`` is None where nothing was
        started (a message refused at intake, a job that could not be queued).
        """

    @abc.abstractmethod
    def release(self, render_id: str, token: str, note: Mapping[str, Any] | None = None) -> bool:
        """Drop our lease (the job will be retried), keeping the record in processing, with ``note`` written.

        False, changing nothing, unless the record is processing and the lease is ours (or lapsed).
        """

    @abc.abstractmethod
    def cancel(self, render_id: str, reason: Any = None) -> CancelResult:
        """pending | processing → cancelled, with ``cancelled_at`` and the cleaned ``reason``; drops the lease.

        Needs no token (the canceller holds none). Changes nothing for a terminal record (``terminal``) and
        never creates one (``missing``).
        """

    @abc.abstractmethod
    def get_raw(self, render_id: str) -> dict[str, str] | None: ...

    def state(self, render_id: str) -> str | None:
        """Just the state (cheap: a rendering worker asks this twice a second to notice a cancel)."""
        raw = self.get_raw(render_id)
        return raw.get("state") if raw else None

    @abc.abstractmethod
    def mark_event(self, render_id: str) -> None:
        """Note that the terminal event was handed to the webhook queue (never creates a record)."""

    # -- chunked renders: the parts of one render that run on many workers (DESIGN, "Chunked renders") --------
    #
    # ``part`` names a chunk ("chunk-7"), the audio ("audio") or the assembly. A part lease works as the render's lease
    # does, one level down: held by one token, renewed while it works, lapsing ``ttl_s`` after its holder stops,
    # so a crashed or stuck chunk is taken over by its redelivery while a duplicate delivery is told to wait.
    # ``chunk_stored`` is the barrier: the set of distinct parts stored (the chunks by index, the audio as index
    # ``count``), so a part stored twice (a duplicate delivery, a redelivery after a crash between upload and ack)
    # counts once.

    @abc.abstractmethod
    def part_lease(self, render_id: str, part: str, token: str, ttl_s: float) -> bool:
        """Take or renew the lease on ``part``; False while another token holds it."""

    @abc.abstractmethod
    def part_release(self, render_id: str, part: str, token: str) -> None:
        """Drop our lease on ``part`` (nothing if another token holds it)."""

    @abc.abstractmethod
    def chunk_stored(self, render_id: str, index: int) -> int:
        """Note chunk ``index`` as stored; returns how many distinct chunks are stored."""

    @abc.abstractmethod
    def chunk_progress(self, render_id: str, index: int, frames: int) -> int:
        """Note ``frames`` done in chunk ``index``; returns the sum over the render's chunks."""

    @abc.abstractmethod
    def chunks_clear(self, render_id: str) -> None:
        """Forget the render's chunk bookkeeping (leases, stored set, progress)."""

    def get(self, render_id: str) -> dict[str, Any] | None:
        raw = self.get_raw(render_id)
        return decode_record(raw) if raw else None

    def event_marked(self, render_id: str) -> bool:
        raw = self.get_raw(render_id)
        return bool(raw and raw.get("event_enqueued"))


# --- Redis -----------------------------------------------------------------

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


# --- memory ----------------------------------------------------------------


class MemoryRecordStore(RecordStore):
    """Same contract in one process, leases lapsing on ``clock`` (monotonic time) as Redis keys expire."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._data: dict[str, dict[str, str]] = {}
        self._leases: dict[str, tuple[str, float]] = {}  # render id -> (token, lapses at)
        self._parts: dict[tuple[str, str], tuple[str, float]] = {}  # (render id, part) -> (token, lapses at)
        self._stored: dict[str, set[int]] = {}
        self._chunk_frames: dict[str, dict[int, int]] = {}

    def render_ids(self) -> list[str]:
        """Every render this store holds a record of (tests: that a refused message wrote none)."""
        with self._lock:
            return sorted(self._data)

    def _holder(self, render_id: str) -> str | None:
        lease = self._leases.get(render_id)
        if lease is None:
            return None
        if lease[1] <= self._clock():
            del self._leases[render_id]
            return None
        return lease[0]

    def _blocked(self, render_id: str, token: str | None) -> bool:
        """Whether another token holds the lease."""
        holder = self._holder(render_id)
        return holder is not None and holder != token

    def create(self, render_id: str, fields: Mapping[str, Any]) -> bool:
        with self._lock:
            if render_id in self._data:
                return False
            self._data[render_id] = encode_fields({"id": render_id, "state": "pending", "attempts": 0, **fields})
            return True

    def start(self, render_id: str, token: str, lease_ttl_s: float, defaults: Mapping[str, Any]) -> StartResult:
        with self._lock:
            rec = self._data.get(render_id)
            if rec and rec.get("state") in TERMINAL:
                return StartResult("terminal", 0, rec["state"])
            if self._blocked(render_id, token):
                return StartResult("busy", 0, rec.get("state") if rec else None)
            self._leases[render_id] = (token, self._clock() + lease_ttl_s)
            if rec is None:
                rec = encode_fields({"id": render_id, "created_at": now_iso(), **defaults})
                self._data[render_id] = rec
            attempts = int(rec.get("attempts") or 0) + 1
            rec.update(
                encode_fields(
                    {
                        "state": "processing",
                        "started_at": now_iso(),
                        "progress": 0,
                        "attempts": attempts,
                        "error_code": None,
                        "error_message": None,
                    }
                )
            )
            return StartResult("started", attempts, "processing")

    def progress(self, render_id: str, token: str, ratio: float, lease_ttl_s: float) -> bool:
        with self._lock:
            rec = self._data.get(render_id)
            if not rec or rec.get("state") != "processing" or self._blocked(render_id, token):
                return False
            self._leases[render_id] = (token, self._clock() + lease_ttl_s)
            rec["progress"] = f"{ratio:.4f}"
            return True

    def note(self, render_id: str, token: str, fields: Mapping[str, Any]) -> bool:
        with self._lock:
            rec = self._data.get(render_id)
            if not rec or rec.get("state") != "processing" or self._blocked(render_id, token):
                return False
            rec.update(encode_fields(fields))
            return True

    def complete(self, render_id: str, token: str, fields: Mapping[str, Any]) -> bool:
        with self._lock:
            rec = self._data.get(render_id)
            if not rec or rec.get("state") != "processing" or self._blocked(render_id, token):
                return False
            rec.update(encode_fields({"completed_at": now_iso(), **fields, "state": "completed", "progress": 1}))
            self._leases.pop(render_id, None)
            return True

    def fail(self, render_id: str, token: str | None, code: str, message: str, defaults: Mapping[str, Any]) -> bool:
        with self._lock:
            rec = self._data.get(render_id)
            if rec and rec.get("state") in TERMINAL:
                return False
            if self._blocked(render_id, token):
                return False
            if rec is None:
                rec = encode_fields({"id": render_id, "created_at": now_iso(), "attempts": 0, **defaults})
                self._data[render_id] = rec
            rec.update(
                encode_fields(
                    {"state": "failed", "error_code": code, "error_message": message, "completed_at": now_iso()}
                )
            )
            self._leases.pop(render_id, None)
            return True

    def release(self, render_id: str, token: str, note: Mapping[str, Any] | None = None) -> bool:
        with self._lock:
            rec = self._data.get(render_id)
            if rec is None or rec.get("state") != "processing" or self._blocked(render_id, token):
                return False
            self._leases.pop(render_id, None)
            rec.update(encode_fields(note or {}))
            return True

    def cancel(self, render_id: str, reason: Any = None) -> CancelResult:
        cleaned = clean_reason(reason)
        with self._lock:
            rec = self._data.get(render_id)
            if rec is None:
                return CancelResult("missing")
            state = rec.get("state")
            if state in TERMINAL:
                return CancelResult("terminal", state, decode_record(rec))
            rec.update(
                encode_fields(
                    {
                        "state": "cancelled",
                        "cancelled_at": now_iso(),
                        "cancel_reason": cleaned,
                        "error_code": None,
                        "error_message": None,
                    }
                )
            )
            self._leases.pop(render_id, None)
            return CancelResult("cancelled", state, decode_record(rec))

    def get_raw(self, render_id: str) -> dict[str, str] | None:
        with self._lock:
            rec = self._data.get(render_id)
            return dict(rec) if rec else None

    def mark_event(self, render_id: str) -> None:
        with self._lock:
            if render_id in self._data:
                self._data[render_id]["event_enqueued"] = "1"

    def part_lease(self, render_id: str, part: str, token: str, ttl_s: float) -> bool:
        with self._lock:
            held = self._parts.get((render_id, part))
            if held is not None and held[0] != token and held[1] > self._clock():
                return False
            self._parts[(render_id, part)] = (token, self._clock() + ttl_s)
            return True

    def part_release(self, render_id: str, part: str, token: str) -> None:
        with self._lock:
            held = self._parts.get((render_id, part))
            if held is not None and held[0] == token:
                del self._parts[(render_id, part)]

    def chunk_stored(self, render_id: str, index: int) -> int:
        with self._lock:
            stored = self._stored.setdefault(render_id, set())
            stored.add(index)
            return len(stored)

    def chunk_progress(self, render_id: str, index: int, frames: int) -> int:
        with self._lock:
            done = self._chunk_frames.setdefault(render_id, {})
            done[index] = int(frames)
            return sum(done.values())

    def chunks_clear(self, render_id: str) -> None:
        with self._lock:
            self._stored.pop(render_id, None)
            self._chunk_frames.pop(render_id, None)
            for key in [k for k in self._parts if k[0] == render_id]:
                del self._parts[key]
