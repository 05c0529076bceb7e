"""The guards around a running job: the lease (renewed, with progress), the cancel and shutdown watch, and
the lease of one part of a chunked render (which also notices a chunk that stopped moving)."""

from __future__ import annotations

import logging
import threading
import time

from worker.errors import (
    Cancelled,
    CancelRequested,
    RenderError,
)
from worker.pipeline.deps import Deps

log = logging.getLogger(__name__)

#: How often a running job reads its record's state to notice a cancel (one HGET; "within about a second").
CANCEL_POLL_S = 0.5
#: How often the watch passes the worker's shutdown event on to the render (ffmpeg is stopped within this).
SHUTDOWN_POLL_S = 0.05


class Lease:
    """Renews the lease and writes progress, at most every ``interval`` seconds."""

    def __init__(self, deps: Deps, render_id: str, token: str) -> None:
        self.deps = deps
        self.render_id = render_id
        self.token = token
        self.ratio = 0.0
        self.written = -1.0
        self.last_write = 0.0
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        ttl = deps.settings.lease_ttl_s
        self._thread = threading.Thread(target=self._renew, args=(max(0.2, ttl / 3),), daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def on_encoder(self, encoder: str) -> None:
        """Encoding started: the record says with which encoder from now on, and the metrics count it there, so
        the two agree however the render ends (a cancel mid-encode included)."""
        self.deps.observer.encoding(encoder)
        try:
            self.deps.records.note(self.render_id, self.token, {"encoder": encoder})
        except RenderError as exc:
            log.warning("encoder note for %s failed: %s", self.render_id, exc)

    def on_progress(self, ratio: float) -> None:
        self.ratio = ratio
        if time.monotonic() - self.last_write >= self.deps.settings.progress_interval_s:
            self._write()

    def _write(self) -> None:
        with self._lock:
            self.last_write = time.monotonic()
            try:
                ok = self.deps.records.progress(self.render_id, self.token, self.ratio, self.deps.settings.lease_ttl_s)
            except RenderError as exc:
                log.warning("progress write for %s failed: %s", self.render_id, exc)
                return
            if not ok:
                self.lost.set()

    def _renew(self, every: float) -> None:
        while not self._stop.wait(every):
            self._write()


class Watch:
    """The render's stop signal: set when its record is cancelled, or when the worker's ``shutdown`` event is.

    ffmpeg (and so the render) takes one cancel event, which must fire for both
    reasons; :attr:`requested` says which one it was. The record is read every
    :data:`CANCEL_POLL_S` from a thread of its own, so a cancel is noticed
    within about half a second whatever the render is doing. The lease renewal
    could carry it too, but it runs only every ``lease_ttl_s / 3`` (10 s).
    """

    def __init__(
        self,
        deps: Deps,
        render_id: str,
        shutdown: threading.Event | None,
        stop_states: tuple[str, ...] = ("cancelled",),
    ) -> None:
        self.deps = deps
        self.render_id = render_id
        self.shutdown = shutdown
        #: A chunk also stops when another chunk failed the render (a render whole is the only writer of its record).
        self.stop_states = stop_states
        self.stop = threading.Event()
        self.requested = threading.Event()  # the record is cancelled
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cancel-watch-{render_id}", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def check(self) -> bool:
        """Read the record now; True (and the render stopped) if it is cancelled."""
        try:
            state = self.deps.records.state(self.render_id)
        except RenderError as exc:  # Redis away for a moment: the next poll asks again
            log.warning("cancel check for %s failed: %s", self.render_id, exc)
            return self.requested.is_set()
        if state in self.stop_states:
            self.requested.set()
            self.stop.set()
        return self.requested.is_set()

    def cancelled(self) -> bool:
        """Whether the record is cancelled, asking once more if the watch has not seen it yet."""
        return self.requested.is_set() or self.check()

    def raise_if_stopped(self) -> None:
        if self.check():
            raise CancelRequested(f"render {self.render_id} was cancelled")
        if self.stop.is_set():
            raise Cancelled("the render was cancelled")

    def _run(self) -> None:
        next_poll = time.monotonic() + CANCEL_POLL_S
        while not self._done.wait(SHUTDOWN_POLL_S):
            if self.shutdown is not None and self.shutdown.is_set():
                self.stop.set()
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + CANCEL_POLL_S
                self.check()


class PartLease:
    """Renews a part's lease and writes the render's progress (the sum over its chunks).

    A chunk whose frame count has not moved for ``lease_ttl_s`` is stopped (:attr:`stalled`, and the render's
    stop event) so its message goes back on the queue instead of hanging the render.
    """

    def __init__(
        self, deps: Deps, render_id: str, part: str, token: str, record_token: str, stop: threading.Event
    ) -> None:
        self.deps, self.render_id, self.part = deps, render_id, part
        self.token, self.record_token, self.stop_event = token, record_token, stop
        self.index: int | None = None
        self.watched = False  # whether a stall is looked for: set once the part's ffmpeg starts
        self.frames = 0  # this chunk's frames done (the audio part: ten-thousandths of it)
        self.total = 0  # the render's frames
        self.lost = threading.Event()
        self.stalled = threading.Event()
        self._moved = time.monotonic()
        self._seen = -1
        self._stop = threading.Event()
        # Progress goes out as often as a whole render's does (RENDER_PROGRESS_INTERVAL_S), the lease with it.
        every = max(0.2, min(deps.settings.lease_ttl_s / 3, deps.settings.progress_interval_s))
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def __enter__(self) -> PartLease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def on_progress(self, ratio: float, frames: int) -> None:
        self.frames = int(ratio * frames)

    def _run(self, every: float) -> None:
        ttl = self.deps.settings.lease_ttl_s
        while not self._stop.wait(every):
            try:
                if not self.deps.records.part_lease(self.render_id, self.part, self.token, ttl):
                    self.lost.set()
                if self.index is not None and self.total:
                    done = self.deps.records.chunk_progress(self.render_id, self.index, self.frames)
                    self.deps.records.progress(self.render_id, self.record_token, min(done / self.total, 0.99), ttl)
            except RenderError as exc:
                log.warning("lease renewal for %s %s failed: %s", self.render_id, self.part, exc)
            if not self.watched:
                continue
            if self.frames != self._seen:
                self._seen, self._moved = self.frames, time.monotonic()
            elif time.monotonic() - self._moved >= ttl:
                log.error("render %s: %s made no progress for %.0f s; requeued", self.render_id, self.part, ttl)
                self.stalled.set()
                self.stop_event.set()
