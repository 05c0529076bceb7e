"""Render records and their guarded state transitions (:mod:`~worker.records.base`: the interface;
:mod:`~worker.records.redis_store` and :mod:`~worker.records.memory`: the two stores).

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

from worker.records.base import (
    MAX_REASON_CHARS,
    PUBLIC_FIELDS,
    TERMINAL,
    CancelResult,
    RecordStore,
    StartResult,
    clean_reason,
    decode_record,
    encode_fields,
    now_iso,
)
from worker.records.memory import MemoryRecordStore
from worker.records.redis_store import RedisRecordStore

__all__ = [
    "MAX_REASON_CHARS",
    "PUBLIC_FIELDS",
    "TERMINAL",
    "CancelResult",
    "MemoryRecordStore",
    "RecordStore",
    "RedisRecordStore",
    "StartResult",
    "clean_reason",
    "decode_record",
    "encode_fields",
    "now_iso",
]
