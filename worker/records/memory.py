"""The record store in one process (``render-cli``, unit tests): the same contract under a lock, leases
lapsing on a clock as Redis keys expire."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from worker.records.base import (
    TERMINAL,
    CancelResult,
    RecordStore,
    StartResult,
    clean_reason,
    decode_record,
    encode_fields,
    now_iso,
)


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
