"""One render job end to end: intake → lease → fetch → render → store → record → event.

Free of Dramatiq: the queue layer (``actors.py``) hands a raw message here with
the collaborators it wired (record store, storage, event sender), and maps the
returned :class:`Outcome` or the raised error onto acks and retries. The same
function runs against in-memory collaborators in unit tests.

Retry policy, in one place:

* permanent errors (the input's fault, or a render timeout) fail the record at
  once and send ``render.failed``;
* transient errors (storage, network, lost lease races, shutdown) release the
  lease and propagate, so the queue retries the message with backoff, unless
  this was the last attempt, in which case the record fails with the code of
  the error (``storage_failed`` for storage); a configuration error (missing
  credentials, say) is permanent: retrying cannot fix it;
* a render's scratch directory is keyed by its render id and kept when a
  transient error comes after the output was rendered (an upload that failed),
  so the retry uploads that output instead of rendering it again;
* unexpected exceptions are bugs: the record fails with ``internal_error``
  rather than looping through retries;
* a render whose record was cancelled (:meth:`RecordStore.cancel`) stops for
  good: :class:`_Watch` reads the record's state every :data:`CANCEL_POLL_S`
  while the job runs and stops ffmpeg through the render's cancel event; the
  partial output and the scratch directory go, nothing is uploaded (an object
  uploaded just before the cancel landed is deleted again), the message is
  acknowledged and ``render.cancelled`` is handed over.

Who sends ``render.cancelled``: whoever handles the job's message and finds
the record cancelled with no event handed over yet (:func:`_terminal_event`),
exactly as for a lost ``render.completed``. That is the worker rendering it
when the cancel lands, or, for a render cancelled while queued (or whose
worker crashed), the worker that picks the message up and acknowledges it.
The canceller sends nothing: it does not hold the webhook (only the message
does), and a single sender keeps the event to one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from worker.errors import (
    Cancelled,
    CancelRequested,
    DiskFull,
    ErrorCode,
    InvalidJob,
    RenderError,
    RenderTimeout,
    SourceError,
    TransferStopped,
    disk_full_in,
    redact,
)
from worker.jobs import Job, Webhook, asset_id_of, is_id, parse_job, render_id_of, webhook_of
from worker.output import OUTPUT_FORMATS, OutputSpec
from worker.presets import load_preset
from worker.records import RecordStore
from worker.render import RenderResult, render
from worker.scratch import Scratch
from worker.settings import Settings
from worker.source_cache import SourceCache
from worker.storage.base import Storage, fetch_deadline_s, output_key

log = logging.getLogger(__name__)

#: Whether a retry reuses the output an earlier attempt rendered (a switch for the test that shows it matters).
REUSE_OUTPUT = True

COMPLETED = "render.completed"
FAILED = "render.failed"
CANCELLED = "render.cancelled"
#: How often a running job reads its record's state to notice a cancel (one HGET; "within about a second").
CANCEL_POLL_S = 0.5
#: How often the watch passes the worker's shutdown event on to the render (ffmpeg is stopped within this).
_SHUTDOWN_POLL_S = 0.05
#: Longest error_message stored in a record or sent in an event.
MAX_ERROR_MESSAGE = 300


class Outcome(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # the record was cancelled: stopped (or never started), acknowledged
    DUPLICATE = "duplicate"  # already terminal: nothing done
    DISPATCHED = "dispatched"  # a chunked render: its chunks are on the queue, the assembly completes it
    STORED = "stored"  # one part (a chunk, the audio) of a chunked render stored under its temporary prefix


class LeaseBusy(RenderError):
    """Another live worker holds this render; come back later (a duplicate delivery)."""

    code = ErrorCode.INTERNAL_ERROR
    transient = True


class UnrecordableJob(InvalidJob):
    """A message so malformed it has no render id: it can only go to the dead-letter queue."""


class EventSender(Protocol):
    def __call__(
        self, event_type: str, render_id: str, asset_id: str, webhook: Webhook | None, extra: Mapping[str, Any]
    ) -> None: ...


class Observer:
    """Hooks for metrics; the default does nothing (render-cli, unit tests)."""

    def started(self, fmt: str) -> None: ...

    def finished(
        self, outcome: str, fmt: str, encoder: str, wall_s: float, output_s: float, source_s: float
    ) -> None: ...

    def encoding(self, encoder: str) -> None:
        """The job started encoding with ``encoder`` (until then, and for exports, it counts under "none")."""

    def failed(self, code: str, fmt: str) -> None: ...

    def cancelled(self, fmt: str) -> None: ...

    def uploaded(self, size: int, seconds: float) -> None: ...


@dataclasses.dataclass
class Deps:
    settings: Settings
    records: RecordStore
    storage: Storage
    send_event: EventSender
    observer: Observer = dataclasses.field(default_factory=Observer)
    renderer: Callable[..., RenderResult] = render
    #: Sends a part of a chunked render as a message of its own (``"chunk"``, ``"audio"`` or ``"assembly"``, body); None
    #: (render-cli, unit tests) renders everything whole on this worker.
    dispatch: Callable[[str, dict[str, Any]], None] | None = None
    #: The source kept between the parts of a chunked render on this process; None downloads it every time.
    sources: SourceCache | None = None


def _defaults_from_raw(raw: Any) -> dict[str, Any]:
    """Record fields salvaged from a message that failed validation.

    Only values that pass their own field's check are kept, so a failed record
    holds the same bounded, typed fields as any other: no 10 MB asset id, no
    secret in an output field, no tenant-chosen metric label.
    """
    if not isinstance(raw, dict):
        return {}
    out: dict[str, Any] = {}
    for field in ("asset_id", "cut_id"):
        if is_id(raw.get(field)):
            out[field] = raw[field]
    output = raw.get("output")
    if isinstance(output, dict):
        try:
            out["output"] = OutputSpec.from_dict(output).to_dict()
        except InvalidJob:
            fmt = output.get("format")
            if isinstance(fmt, str) and fmt in OUTPUT_FORMATS:
                out["output"] = {"format": fmt}
    return out


# The names the worker gives a downloaded source on its disk: "source.<ext>" in a render's scratch directory, a
# digest in the source cache (worker/source_cache.py).
_LOCAL_SOURCE_NAMES = re.compile(r"\b(?:source|[0-9a-f]{32})\.[A-Za-z0-9]{1,8}\b")


def client_message(message: str, source_uri: str, work_dir: str) -> str:
    """``message`` as a client may read it: the job's source where it named the worker's copy, no host path."""
    root = os.path.realpath(work_dir or tempfile.gettempdir())
    for base in dict.fromkeys((work_dir, root, tempfile.gettempdir())):
        if base:
            message = re.sub(re.escape(base.rstrip("/")) + r"/[^\s:'\"]*", source_uri, message)
    return _LOCAL_SOURCE_NAMES.sub(source_uri, message)


def _name_the_source(err: RenderError, job: Job, settings: Settings) -> None:
    """Rewrite ``err``'s message (it goes to the record, the webhook and the client) with :func:`client_message`."""
    err.message = client_message(err.message, job.source_uri, settings.work_dir)


def bounded_message(message: str) -> str:
    """An error message as stored and sent: secrets redacted, at most :data:`MAX_ERROR_MESSAGE` characters.

    Every message is built with bounded excerpts already; this is the last
    line, where it is stored, for messages from code that forgot.
    """
    text = redact(message)
    return text if len(text) <= MAX_ERROR_MESSAGE else text[: MAX_ERROR_MESSAGE - 1] + "…"


def _job_defaults(job: Job) -> dict[str, Any]:
    return {"asset_id": job.asset_id, "cut_id": job.cut_id, "output": job.output.to_dict()}


def _ext_of(uri: str) -> str:
    suffix = PurePosixPath(urlsplit(uri).path).suffix.lower()
    # The extension only names the scratch file; the probe decides what it is.
    return suffix if suffix[1:].isalnum() and len(suffix) <= 6 else ".bin"


_RENDERED = "rendered.json"
#: Free space a render needs beyond its source and output (graph files, the muxer's index, other small files).
DISK_HEADROOM_BYTES = 1 << 20


def _fingerprint(job: Job) -> str:
    """What the rendered output depends on: a kept output is reused only for the very same job."""
    segments = None if job.segments is None else [(s.start, s.end) for s in job.segments]
    text = json.dumps([job.source_uri, segments, job.output.to_dict()], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# Object metadata of a stored output (S3 lower-cases user metadata names): the job it is the output of, and its
# result, so that a delivery after one that stored it but could not complete the record completes from it.
_META_FINGERPRINT = "render-fingerprint"
_META_RESULT = "render-result"


def _result_metadata(fingerprint: str, result: RenderResult) -> dict[str, str]:
    fields = {k: v for k, v in result.to_dict().items() if k not in ("path", "notes")}
    return {_META_FINGERPRINT: fingerprint, _META_RESULT: json.dumps(fields, separators=(",", ":"))}


def _stored_result(deps: Deps, key: str, fingerprint: str, out: Path) -> RenderResult | None:
    """The result of this very job's output, if an earlier delivery stored it at ``key`` already."""
    meta = deps.storage.output_metadata(key)
    if not meta or meta.get(_META_FINGERPRINT) != fingerprint:
        return None
    try:
        return RenderResult(**{**json.loads(meta[_META_RESULT]), "path": str(out)})
    except (KeyError, ValueError, TypeError):
        return None


def _rendered(scratch: Path, out: Path, fingerprint: str) -> RenderResult | None:
    """The result of an earlier attempt that rendered this job's output here, if the output is intact."""
    try:
        saved = json.loads((scratch / _RENDERED).read_text())
        if saved["fingerprint"] != fingerprint:
            return None
        result = RenderResult(**{**saved["result"], "path": str(out)})
        if out.stat().st_size != result.size_bytes:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return result


class _Lease:
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

    def __enter__(self) -> _Lease:
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


class _Watch:
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

    def __enter__(self) -> _Watch:
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
        while not self._done.wait(_SHUTDOWN_POLL_S):
            if self.shutdown is not None and self.shutdown.is_set():
                self.stop.set()
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + CANCEL_POLL_S
                self.check()


class EventNotQueued(RenderError):
    """The record is final but its event could not be handed over: redeliver, and the event goes out then."""

    code = ErrorCode.INTERNAL_ERROR
    transient = True


def _send(deps: Deps, event_type: str, render_id: str, asset_id: str, webhook: Webhook | None, extra: dict) -> None:
    """Hand the terminal event over once; a failure here must not undo the render.

    The record is already terminal, so a redelivery does no work: it finds the
    event unmarked and sends it (:func:`_terminal_event`). That needs the queue
    to retry, so whatever the sender raised (a broker error, say) leaves as a
    transient error rather than as an unexpected one, which would dead-letter
    the message and lose the event.
    """
    try:
        deps.send_event(event_type, render_id, asset_id, webhook, extra)
        deps.records.mark_event(render_id)
    except Exception as exc:  # noqa: BLE001 - the record is final; the event is retried on redelivery
        log.exception("could not enqueue %s for %s", event_type, render_id)
        raise EventNotQueued(f"could not enqueue {event_type} for {render_id}: {exc}") from exc


def _terminal_event(deps: Deps, render_id: str, webhook: Webhook | None) -> bool:
    """For a render that ended (here or elsewhere): send its event only if it never went out.

    Returns whether this call handed one over. Whoever hands over ``render.cancelled`` also counts the cancel
    (``render_jobs_total{outcome="cancelled"}``), so a cancelled render is counted once, wherever it ends.
    """
    rec = deps.records.get(render_id)
    if rec is None or deps.records.event_marked(render_id):
        return False
    asset_id = rec.get("asset_id") or ""
    if rec["state"] == "completed":
        _send(deps, COMPLETED, render_id, asset_id, webhook, {})
    elif rec["state"] == "failed":
        extra = {"error_code": rec.get("error_code"), "error_message": rec.get("error_message")}
        _send(deps, FAILED, render_id, asset_id, webhook, extra)
    elif rec["state"] == "cancelled":
        _send(deps, CANCELLED, render_id, asset_id, webhook, {"cancel_reason": rec.get("cancel_reason")})
        deps.observer.cancelled(str((rec.get("output") or {}).get("format") or ""))
    else:
        return False
    return True


def _output_key(settings: Settings, job: Job) -> str:
    return output_key(settings.output_prefix, job.render_id, _extension(job.output.format))


def _extension(fmt: str) -> str:
    """The stored object's extension: the preset's for media, the document's for an editor export."""
    from worker.export import EXPORT_FORMATS

    return EXPORT_FORMATS[fmt][0] if fmt in EXPORT_FORMATS else load_preset(fmt).extension


def _cancelled(deps: Deps, job: Job, *, may_have_uploaded: bool) -> Outcome:
    """A job whose record is cancelled: leave nothing behind on this host or in storage, then the event once.

    ``may_have_uploaded``: the output may be in storage (a cancel that landed during the upload, or a
    redelivery after a worker that had started it crashed); the object is deleted again.
    """
    with Scratch(deps.settings.work_dir, job.render_id):
        pass  # a scratch directory kept for an upload retry on this host: entered without keep, so removed
    if may_have_uploaded:
        try:
            deps.storage.delete(_output_key(deps.settings, job))
        except RenderError as exc:  # the event still goes out; the log names the orphan
            log.error("render %s was cancelled but its output could not be deleted: %s", job.render_id, exc)
    _terminal_event(deps, job.render_id, job.webhook)
    return Outcome.CANCELLED


def _fail(
    deps: Deps,
    render_id: str,
    err: RenderError,
    defaults: dict,
    asset_id: str,
    webhook: Webhook | None,
    token: str | None = None,
) -> None:
    message = bounded_message(err.message)
    if deps.records.fail(render_id, token, err.code.value, message, defaults):
        deps.observer.failed(err.code.value, str(defaults.get("output", {}).get("format", "")))
        extra = {"error_code": err.code.value, "error_message": message}
        _send(deps, FAILED, render_id, asset_id, webhook, extra)
    else:
        _terminal_event(deps, render_id, webhook)


def process(
    raw: Any,
    deps: Deps,
    *,
    last_attempt: bool,
    cancel: threading.Event | None = None,
    token: str | None = None,
) -> Outcome:
    """Run one delivery of a job message. Raises only for the queue to retry or dead-letter."""
    settings = deps.settings
    token = token or uuid.uuid4().hex
    try:
        job = parse_job(
            raw,
            max_segments=settings.max_segments,
            allow_private_webhooks=settings.webhook_allow_private,
            source_buckets=settings.source_bucket_list,
        )
    except Exception as exc:  # noqa: BLE001 - parse_job is total; this is the last line if it is not
        err = exc if isinstance(exc, InvalidJob) else InvalidJob(f"the job message is malformed ({type(exc).__name__})")
        render_id = render_id_of(raw)
        if render_id is None:
            raise UnrecordableJob(f"message has no usable render_id: {err.message}") from exc
        # The record fails and render.failed goes to the webhook if its url and
        # secret are usable, even when the message is malformed elsewhere.
        webhook = webhook_of(raw, allow_private=settings.webhook_allow_private)
        _fail(deps, render_id, err, _defaults_from_raw(raw), asset_id_of(raw) or "", webhook)
        return Outcome.FAILED

    defaults = _job_defaults(job)
    started = deps.records.start(job.render_id, token, settings.lease_ttl_s, defaults)
    if started.status == "terminal":
        if started.state == "cancelled":
            # Cancelled while queued (never started: started_at stays empty), or while a worker that has since
            # crashed rendered it. Either way it stays cancelled: the message is acknowledged, not rendered.
            rec = deps.records.get(job.render_id) or {}
            return _cancelled(deps, job, may_have_uploaded=bool(rec.get("started_at")))
        _terminal_event(deps, job.render_id, job.webhook)
        return Outcome.DUPLICATE
    if started.status == "busy":
        raise LeaseBusy(f"render {job.render_id} is being rendered by another worker")

    fmt = job.output.format
    wall_started = time.monotonic()
    deps.observer.started(fmt)
    try:
        with (
            Scratch(settings.work_dir, job.render_id) as scratch,
            _Lease(deps, job.render_id, token) as lease,
            _Watch(deps, job.render_id, cancel) as watch,
        ):
            try:
                try:
                    result = _run(job, deps, lease, watch, scratch, raw)
                except OSError as exc:
                    # Translated at the boundary: a full disk is the host's (retried), never a bug or the job's.
                    full = disk_full_in(exc)
                    if full is None:
                        raise
                    raise DiskFull(f"the worker's disk is full ({full.strerror})") from exc
            except Exception as exc:
                if watch.cancelled():
                    # Whatever stopped the render (ffmpeg killed, the lease refused), the record is cancelled:
                    # the scratch directory goes with it and nothing is retried.
                    scratch.keep = False
                    if isinstance(exc, CancelRequested):
                        raise
                    raise CancelRequested(f"render {job.render_id} was cancelled") from exc
                if isinstance(exc, RenderError):
                    # Kept only for a retry of this render, which may then skip straight to the upload.
                    retried = exc.transient and (not last_attempt or isinstance(exc, Cancelled))
                    # A full disk keeps nothing: the room goes back to this host's other work.
                    scratch.keep = retried and not isinstance(exc, LeaseBusy | DiskFull)
                raise
    except CancelRequested:
        _forget_source(deps, job)
        # The upload may have been under way when the cancel landed (it is checked just before it starts).
        return _cancelled(deps, job, may_have_uploaded=True)
    except _Dispatched:
        # The record stays processing under this delivery's token, which the chunks renew and the assembly
        # completes with; this message is done.
        return Outcome.DISPATCHED
    except LeaseBusy:
        # Another worker took the render over while this one was stalled: it owns
        # the record now, so this delivery just steps aside.
        return Outcome.DUPLICATE
    except RenderError as err:
        _name_the_source(err, job, settings)
        retry = err.transient and (not last_attempt or isinstance(err, Cancelled))
        if retry:  # the source stays in this process's cache, for the retry if it comes back here
            if isinstance(err, DiskFull):
                _forget_source(deps, job)  # unless the disk is full: then it goes, and the retry downloads again
            deps.records.release(job.render_id, token, {"error_message": bounded_message(f"retrying after: {err}")})
            raise
        _forget_source(deps, job)
        _fail(deps, job.render_id, err, defaults, job.asset_id, job.webhook, token)
        return Outcome.FAILED
    except Exception as exc:  # noqa: BLE001 - a bug: fail the record instead of retrying forever
        log.exception("render %s failed unexpectedly", job.render_id)
        _forget_source(deps, job)
        bug = RenderError(f"unexpected error: {type(exc).__name__}: {exc}")
        _name_the_source(bug, job, deps.settings)
        _fail(deps, job.render_id, bug, defaults, job.asset_id, job.webhook, token)
        return Outcome.FAILED

    fields = {
        "size_bytes": result.size_bytes,
        "duration_s": round(result.duration_s, 6),
        "encoder": result.encoder,
        "output_key": _output_key(settings, job),
        "download_name": download_name(job),
    }

    def finished() -> None:
        wall = time.monotonic() - wall_started
        deps.observer.finished("completed", fmt, result.encoder, wall, result.duration_s, result.source_duration_s)

    # A cancel that won the race with this completion after the upload: the cancel is what the record says, so
    # the object it would have pointed at goes again.
    return _complete_stored(
        deps,
        job,
        token,
        fields,
        finished=finished,
        cancelled=lambda: _cancelled(deps, job, may_have_uploaded=True),
        deadline=wall_started + settings.time_limit_s,
        stop=cancel,
    )


def _complete_stored(
    deps: Deps,
    job: Job,
    token: str,
    fields: Mapping[str, Any],
    *,
    finished: Callable[[], None],
    cancelled: Callable[[], Outcome],
    deadline: float,
    stop: threading.Event | None,
) -> Outcome:
    """Complete the record of a render whose output is stored, and hand its event over, retrying while the
    record store is away (:func:`_until_recorded`).

    ``finished`` runs once, when this delivery completed the record (metrics, clean-up); ``cancelled`` when a
    cancel got there first. Where the lease was gone (someone else finished it, or holds it now) only the
    event is seen to.
    """
    completed = False  # by this delivery, in an earlier try whose event could not be handed over

    def complete() -> Outcome:
        nonlocal completed
        if not completed and not deps.records.complete(job.render_id, token, fields):
            state = deps.records.state(job.render_id)
            if state == "cancelled":
                return cancelled()
            if state is None:
                return _record_lost(job, str(fields["output_key"]))
            _terminal_event(deps, job.render_id, job.webhook)
            return Outcome.DUPLICATE
        if not completed:
            completed = True
            finished()
        _terminal_event(deps, job.render_id, job.webhook)
        return Outcome.COMPLETED

    return _until_recorded(job.render_id, complete, deadline, stop)


#: How long the completion of a stored render waits between tries while the record store is away, at most.
RECORD_RETRY_MAX_S = 10.0


def _until_recorded(
    render_id: str, fn: Callable[[], Outcome], deadline: float, stop: threading.Event | None
) -> Outcome:
    """Run ``fn`` (the record's completion and its event) until the record store answers, up to ``deadline``.

    The output is in storage by then: giving up at the first Redis error would leave the record processing for
    ever (the message acknowledged, no retry queued, no webhook). Each try is idempotent (the record's guarded
    transition, the event marked once). Past ``deadline`` (the job's time limit) or on shutdown the error
    leaves as transient: the message is not acknowledged and comes back, and the delivery that takes it
    completes from the stored object (:func:`_stored_result`) without rendering again.
    """
    delay = 0.5
    while True:
        try:
            return fn()
        except RenderError as exc:
            if not exc.transient or time.monotonic() + delay > deadline or (stop is not None and stop.is_set()):
                raise
            log.warning(
                "render %s is stored but the record store is unavailable (%s); completing it again in %.1f s",
                render_id,
                exc.message,
                delay,
            )
        if stop is not None:
            stop.wait(delay)
        else:
            time.sleep(delay)
        delay = min(delay * 2, RECORD_RETRY_MAX_S)


def _record_lost(job: Job, key: str) -> Outcome:
    """The record vanished under a stored render: the record store lost its data (a Redis without persistence
    restarted). Nothing here can rebuild it; the output stays where it was put, and the message is done."""
    log.error(
        "render %s: its record is gone (the record store lost its data?); the output is stored at %s; no event is sent",
        job.render_id,
        key,
    )
    return Outcome.DUPLICATE


def _run(job: Job, deps: Deps, lease: _Lease, watch: _Watch, scratch: Scratch, raw: Any = None) -> RenderResult:
    if job.output.is_export:
        return _run_export(job, deps, lease, watch, scratch)
    settings = deps.settings
    deadline = time.monotonic() + settings.time_limit_s
    # The same instant on the wall clock, for the chunks of a chunked render: other workers, other clocks.
    wall_deadline = time.time() + settings.time_limit_s
    preset = load_preset(job.output.format)
    tmp = scratch.path
    out = tmp / f"{job.render_id}.{preset.extension}"
    fingerprint = _fingerprint(job)
    key = output_key(settings.output_prefix, job.render_id, preset.extension)
    if REUSE_OUTPUT:
        stored = _stored_result(deps, key, fingerprint, out)
        if stored is not None:
            # An earlier delivery uploaded it and could not complete the record (Redis away, a crash).
            log.info("render %s: its output is stored already (%d bytes); completing", job.render_id, stored.size_bytes)
            return stored
    result = _rendered(tmp, out, fingerprint) if REUSE_OUTPUT else None
    if result is not None:
        log.info(
            "render %s: reusing the output an earlier attempt rendered (%d bytes)", job.render_id, result.size_bytes
        )
    else:
        (tmp / _RENDERED).unlink(missing_ok=True)
        chunkable = deps.dispatch is not None and preset.has_video
        with contextlib.ExitStack() as keep:
            # A render that may be chunked keeps its source in the worker's cache: this worker is likely to
            # take some of the chunks, which then need no download.
            src, version = _fetch_source(job, deps, watch, tmp, keep=keep if chunkable else None)
            plan = None
            if chunkable:
                plan, cplan = _plan(src, job, settings)
                if len(cplan.chunks) > 1:
                    # Its parts encode on the CPU preset: the record says so from now on, however it ends.
                    deps.records.note(job.render_id, lease.token, {"encoder": "cpu"})
                    _dispatch_chunks(deps, raw, len(cplan.chunks), lease.token, wall_deadline, version)
                    raise _Dispatched(job.render_id)
            result = deps.renderer(
                src,
                job.segments,
                job.output,
                out,
                settings=settings,
                on_progress=lease.on_progress,
                cancel=watch.stop,
                deadline=deadline,
                plan=plan,  # the one made to count chunks: the source is probed once
                on_encoder=lease.on_encoder,
            )
        # Not needed again (a retry uploads the output): the disk is the output's during the upload.
        src.unlink(missing_ok=True)
        _forget_source(deps, job)
        (tmp / _RENDERED).write_text(json.dumps({"fingerprint": fingerprint, "result": result.to_dict()}))
    # Asked now rather than at the next poll: a cancel that landed during the last half second uploads nothing.
    watch.raise_if_stopped()
    if lease.lost.is_set():
        raise LeaseBusy(f"lost the lease on {job.render_id} while rendering")
    t0 = time.monotonic()
    deps.storage.put(out, key, preset.content_type, _result_metadata(fingerprint, result))
    deps.observer.uploaded(result.size_bytes, time.monotonic() - t0)
    return result


def _run_export(job: Job, deps: Deps, lease: _Lease, watch: _Watch, scratch: Scratch) -> RenderResult:
    """An editor export (DESIGN, "Editor exports"): the cut as a timeline document, stored like an output.

    The source is fetched and probed, and the timeline planned exactly as a render of the same job would
    plan it (:func:`worker.export.export_file`); no ffmpeg runs. The document is stored under the render's
    key with its own extension and content type, and the record completes as for any render.
    """
    from worker.export import EXPORT_FORMATS, export_file

    settings = deps.settings
    fmt = job.output.format
    ext, content_type = EXPORT_FORMATS[fmt]
    src, _ = _fetch_source(job, deps, watch, scratch.path)
    out = scratch.path / f"{job.render_id}.{ext}"
    done = export_file(
        str(src),
        job.segments,
        fmt,
        str(out),
        settings=settings,
        # The document names the source as the job does: its file name, and its URI to relink from.
        source_name=PurePosixPath(urlsplit(job.source_uri).path).name,
        source_url=job.source_uri,
    )
    src.unlink(missing_ok=True)
    watch.raise_if_stopped()
    if lease.lost.is_set():
        raise LeaseBusy(f"lost the lease on {job.render_id} while exporting")
    t0 = time.monotonic()
    deps.storage.put(out, output_key(settings.output_prefix, job.render_id, ext), content_type)
    deps.observer.uploaded(done.size_bytes, time.monotonic() - t0)
    return RenderResult(
        path=str(out),
        format=fmt,
        encoder="none",  # nothing was encoded
        video_codec=None,
        audio_codec="",
        duration_s=done.duration_s,
        source_duration_s=done.source_duration_s,
        size_bytes=done.size_bytes,
        width=None,
        height=None,
        pieces=done.pieces,
        wall_s=done.wall_s,
        nvenc_fallback=None,
    )


# --- Chunked renders through the queue (DESIGN, "Chunked renders"; README, "Through the queue") -------------
#
# A video render whose output is longer than RENDER_CHUNK_MIN_S is planned by the worker that takes its
# message (the *coordinator*), which sends one ``audio`` message and one ``chunk`` message per chunk and
# acknowledges its own. Any worker takes a part: it gets the source (its process's cache, or a download),
# plans the render exactly as the coordinator did (the plan is a pure function of the probe and the settings;
# a count that differs is refused), encodes only its frames (:func:`worker.render.render_chunk`) or the whole
# audio (:func:`worker.render.render_audio`) and stores the piece under ``tmp/<prefix>/<render_id>/``
# (:data:`TMP_PREFIX`). The barrier is the record store's set of distinct stored parts
# (:meth:`RecordStore.chunk_stored`; the audio is index ``count``): every delivery that stores a part and
# finds the set complete sends the ``assembly`` message, which downloads the pieces, joins them by stream
# copy, uploads the output, completes the record and deletes the pieces.
#
# Why not Dramatiq's ``group(...).add_completion_callback`` with its GroupCallbacks barrier: that barrier
# counts *successful deliveries*, not distinct chunks. A chunk delivered twice (Dramatiq's redelivery of a
# message whose worker stalled past the heartbeat, or a crash between upload and ack) or put back on the queue
# by :func:`worker.actors._requeue` (a busy lease, a shutdown: both return normally) counts again, so the
# assembly would start with pieces missing, and a chunk that succeeds only after a retry made from a copy
# would never be counted at all. A set keyed by chunk index counts each chunk once however often it is
# delivered, and an assembly sent twice is harmless (its own lease, then the terminal record).
#
# Every part runs under the record's lease token (the coordinator's, carried in the message): a chunk's
# progress renews the record's lease, and the assembly completes or any part fails the record with it.


class _Dispatched(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The render's chunks were sent; the coordinator's message is done."""


class ChunkStalled(RenderError):
    """A chunk made no progress for its lease time: stopped and put back on the queue."""

    code = ErrorCode.ENCODE_FAILED
    transient = True


#: Where the pieces of chunked renders are stored in the output bucket, at the top of it: an S3 lifecycle rule
#: matches a key *prefix* only, so ``renders/<id>/tmp/`` could not be expired without expiring the outputs
#: beside it. deploy/s3-lifecycle.json expires everything under it after a day (a crashed render's leftovers).
TMP_PREFIX = "tmp/"


#: The render's audio, encoded whole by a part of its own, beside the video pieces.
AUDIO_PIECE = "audio.m4a"


def _tmp_key(settings: Settings, render_id: str, name: str) -> str:
    parts = [TMP_PREFIX.rstrip("/"), settings.output_prefix.strip("/"), render_id, name]
    return "/".join(p for p in parts if p)


def piece_key(settings: Settings, render_id: str, index: int) -> str:
    """Where chunk ``index``'s piece is stored: ``tmp/<output prefix>/<render id>/chunk-NNNNN.mp4``."""
    from worker.chunks import piece_name

    return _tmp_key(settings, render_id, piece_name(index))


def audio_key(settings: Settings, render_id: str) -> str:
    """Where the audio part stores the render's audio: ``tmp/<output prefix>/<render id>/audio.m4a``."""
    return _tmp_key(settings, render_id, AUDIO_PIECE)


def _plan(src: Path, job: Job, settings: Settings) -> tuple[Any, Any]:
    from worker.render import Limits, chunk_plan_for, plan_render

    plan = plan_render(src, job.segments, job.output, limits=Limits.from_settings(settings))
    return plan, chunk_plan_for(plan, settings)


def _dispatch_chunks(deps: Deps, raw: Any, count: int, token: str, deadline: float, version: str) -> None:
    assert deps.dispatch is not None
    log.info("render %s: %d chunks and the audio on the queue", render_id_of(raw), count)
    common = {
        "job": raw,
        "count": count,
        # The parts the barrier waits for: the chunks and the audio (stored in the set as index ``count``).
        "parts": count + 1,
        "token": token,
        "deadline": round(deadline, 3),
        # Every part renders from these very bytes: an object overwritten mid-render fails it instead
        # of joining chunks of two different recordings.
        "source_version": version,
    }
    # The audio first: an hour of it takes about a minute to encode, which then runs beside the chunks
    # instead of inside the assembly, which is left a stream copy of seconds (BENCHMARKS.md).
    deps.dispatch("audio", {**common, "part": "audio"})
    for index in range(count):
        deps.dispatch("chunk", {**common, "index": index})


def _part_deadline(body: Mapping[str, Any], settings: Settings) -> float:
    """The monotonic instant this part of a chunked render must be done by.

    RENDER_TIME_LIMIT_S bounds the render as a whole, as it bounds a whole render: the coordinator's
    message carries the wall-clock instant it started plus the limit, and every chunk and the assembly
    stop there, however many chunks ran before them or how long they waited on the queue. Without it a
    render of K chunks could run K times the limit. A part is never given more than the limit itself.
    """
    limit = settings.time_limit_s
    wall = body.get("deadline")
    if isinstance(wall, int | float) and not isinstance(wall, bool):  # absent in messages from older workers
        limit = min(limit, wall - time.time())
    if limit <= 0:
        raise RenderTimeout("the render ran past its time limit")
    return time.monotonic() + limit


def _delete_pieces(deps: Deps, render_id: str, count: int) -> None:
    """Delete every temporary piece of the render (missing ones are no error) and its chunk bookkeeping."""
    keys = [piece_key(deps.settings, render_id, index) for index in range(count)]
    for key in [*keys, audio_key(deps.settings, render_id)]:
        try:
            deps.storage.delete(key)
        except RenderError as exc:  # the lifecycle rule on the temporary prefix expires it (deploy/)
            log.error("render %s: could not delete %s: %s", render_id, key, exc)
    with contextlib.suppress(RenderError):
        deps.records.chunks_clear(render_id)


class _PartLease:
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

    def __enter__(self) -> _PartLease:
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


def process_part(
    body: Mapping[str, Any], deps: Deps, *, last_attempt: bool, cancel: threading.Event | None = None
) -> Outcome:
    """Run one delivery of a chunked render's chunk, audio or assembly message (built by :func:`process`)."""
    settings = deps.settings
    job = parse_job(
        body["job"],
        max_segments=settings.max_segments,
        allow_private_webhooks=settings.webhook_allow_private,
        source_buckets=settings.source_bucket_list,
    )
    index = body.get("index")
    count, record_token = int(body["count"]), str(body["token"])
    render_id = job.render_id
    # The slot is the part's place in the barrier's set of stored parts (the audio's is ``count``).
    slot: int | None
    if body.get("part") == "audio":
        part, slot, key = "audio", count, audio_key(settings, render_id)
    elif index is None:
        part, slot, key = "assembly", None, None
    else:
        part, slot, key = f"chunk-{int(index)}", int(index), piece_key(settings, render_id, int(index))
    state = deps.records.state(render_id)
    if state in ("completed", "failed", "cancelled"):
        _forget_source(deps, job)  # a copy this process kept for the render's parts
        if state != "completed":  # pieces a failed or cancelled render left (a completed one deleted its own)
            _delete_pieces(deps, render_id, count)
        _terminal_event(deps, render_id, job.webhook)
        return Outcome.CANCELLED if state == "cancelled" else Outcome.DUPLICATE
    if key is not None and slot is not None and deps.storage.exists(key):
        # Stored already (a duplicate delivery, or a redelivery after a crash between the upload and the ack):
        # nothing to render; the barrier is passed again, in case the crash came before it.
        _part_stored(deps, body, render_id, slot)
        return Outcome.DUPLICATE
    token = uuid.uuid4().hex
    if not deps.records.part_lease(render_id, part, token, settings.lease_ttl_s):
        raise LeaseBusy(f"render {render_id}: {part} is being rendered by another worker")
    defaults = _job_defaults(job)
    # A chunk at work counts as a job in progress on this worker (render_jobs_in_progress); the telemetry
    # middleware closes the entry when the message ends, and only the assembly counts the render as finished.
    deps.observer.started(job.output.format)
    try:
        with (
            Scratch(settings.work_dir, f"{render_id}-{part}") as scratch,
            _Watch(deps, render_id, cancel, stop_states=("cancelled", "failed", "completed")) as watch,
            _PartLease(deps, render_id, part, token, record_token, watch.stop) as lease,
        ):
            try:
                deadline = _part_deadline(body, settings)
                if slot is None:
                    return _assemble_part(job, body, deps, record_token, lease, watch, scratch, deadline)
                if part == "audio":
                    _audio_part(job, body, deps, lease, watch, scratch, deadline)
                else:
                    _chunk_part(job, body, deps, slot, count, lease, watch, scratch, deadline)
            except Exception as exc:
                if lease.stalled.is_set():
                    raise ChunkStalled(f"render {render_id}: {part} made no progress") from exc
                if watch.cancelled():
                    raise CancelRequested(f"render {render_id} was stopped") from exc
                raise
    except CancelRequested:
        _forget_source(deps, job)
        _delete_pieces(deps, render_id, count)
        _terminal_event(deps, render_id, job.webhook)
        return Outcome.CANCELLED
    except RenderError as err:
        _name_the_source(err, job, deps.settings)
        deps.records.part_release(render_id, part, token)
        if err.transient and (not last_attempt or isinstance(err, Cancelled)):
            raise
        _forget_source(deps, job)
        _fail(deps, render_id, err, defaults, job.asset_id, job.webhook, record_token)
        _delete_pieces(deps, render_id, count)
        return Outcome.FAILED
    except Exception as exc:  # noqa: BLE001 - a bug: fail the render instead of retrying forever
        log.exception("render %s: %s failed unexpectedly", render_id, part)
        _forget_source(deps, job)
        bug = RenderError(f"unexpected error: {type(exc).__name__}: {exc}")
        _name_the_source(bug, job, deps.settings)
        _fail(deps, render_id, bug, defaults, job.asset_id, job.webhook, record_token)
        _delete_pieces(deps, render_id, count)
        return Outcome.FAILED
    deps.records.part_release(render_id, part, token)
    return Outcome.STORED


def _fetch_and_plan(
    job: Job,
    body: Mapping[str, Any],
    deps: Deps,
    watch: _Watch,
    scratch: Scratch,
    deadline: float,
    keep: contextlib.ExitStack,
) -> tuple[Any, Any]:
    settings = deps.settings
    count = int(body["count"])
    pinned = body.get("source_version")
    src, _ = _fetch_source(
        job, deps, watch, scratch.path, keep=keep, pinned=pinned if isinstance(pinned, str) else None
    )
    if time.monotonic() > deadline:  # the deadline does not stop a download: checked at its end
        raise RenderTimeout("the render ran past its time limit")
    plan, cplan = _plan(src, job, settings)
    if len(cplan.chunks) != count:  # workers with different RENDER_CHUNK_* settings: a deployment error
        raise RenderError(f"this worker plans {len(cplan.chunks)} chunks, the render was sent as {count}")
    return plan, cplan


def _chunk_part(
    job: Job,
    body: Mapping[str, Any],
    deps: Deps,
    index: int,
    count: int,
    lease: _PartLease,
    watch: _Watch,
    scratch: Scratch,
    deadline: float,
) -> None:
    from worker.chunks import piece_name
    from worker.render import render_chunk

    settings = deps.settings
    with contextlib.ExitStack() as keep:
        plan, cplan = _fetch_and_plan(job, body, deps, watch, scratch, deadline, keep)
        lease.index, lease.total, lease.watched = index, cplan.total, True
        frames = cplan.chunks[index].frames
        piece = scratch.path / piece_name(index)
        log.info("render %s: rendering chunk %d of %d", job.render_id, index, count)
        deps.observer.encoding("cpu")  # chunks use the CPU preset on every worker (see the README)
        render_chunk(
            plan,
            cplan,
            index,
            piece,
            ffmpeg_bin=settings.ffmpeg_path or None,
            on_progress=lambda ratio: lease.on_progress(ratio, frames),
            cancel=watch.stop,
            deadline=deadline,
        )
    _store_part(deps, job, lease, watch, piece, piece_key(settings, job.render_id, index), f"chunk {index}")
    lease.frames = frames
    deps.records.chunk_progress(job.render_id, index, frames)
    log.info("render %s: chunk %d of %d stored", job.render_id, index, count)
    _part_stored(deps, body, job.render_id, index)


def _audio_part(
    job: Job, body: Mapping[str, Any], deps: Deps, lease: _PartLease, watch: _Watch, scratch: Scratch, deadline: float
) -> None:
    """Encode the render's whole audio (as the whole render would) and store it beside the video pieces."""
    from worker.render import render_audio

    settings = deps.settings
    with contextlib.ExitStack() as keep:
        plan, _ = _fetch_and_plan(job, body, deps, watch, scratch, deadline, keep)
        lease.watched = True
        log.info("render %s: rendering the audio", job.render_id)
        deps.observer.encoding("cpu")
        audio = render_audio(
            plan,
            scratch.path / AUDIO_PIECE,
            ffmpeg_bin=settings.ffmpeg_path or None,
            on_progress=lambda ratio: lease.on_progress(ratio, 10_000),
            cancel=watch.stop,
            deadline=deadline,
        )
    _store_part(deps, job, lease, watch, audio, audio_key(settings, job.render_id), "the audio")
    log.info("render %s: audio stored", job.render_id)
    _part_stored(deps, body, job.render_id, int(body["count"]))


def _store_part(deps: Deps, job: Job, lease: _PartLease, watch: _Watch, path: Path, key: str, what: str) -> None:
    """Upload a part's file under the render's temporary prefix, unless the render stopped meanwhile."""
    watch.raise_if_stopped()
    if lease.lost.is_set():
        raise LeaseBusy(f"lost the lease on {what} of {job.render_id} while rendering")
    deps.storage.put(path, key, "audio/mp4" if key.endswith(".m4a") else "video/mp4")
    if deps.records.state(job.render_id) in ("cancelled", "failed"):
        # Stopped during the upload: the part that stopped it may have deleted the pieces already, before this one
        # landed, so this piece goes now rather than waiting for the lifecycle rule.
        deps.storage.delete(key)
        raise CancelRequested(f"render {job.render_id} was stopped while {what} was uploaded")


def _part_stored(deps: Deps, body: Mapping[str, Any], render_id: str, slot: int) -> None:
    """The barrier: the delivery that finds every part stored sends the assembly (a duplicate is harmless).

    The parts are the chunks and the audio (``parts``); a render sent by a worker from before the audio
    had a part of its own names none, and its assembly renders the audio itself.
    """
    if deps.records.chunk_stored(render_id, slot) >= int(body.get("parts", body["count"])):
        assert deps.dispatch is not None
        # The assembly carries the part's message on, but for what names the part: the job, the token, the
        # render's deadline and its source version.
        deps.dispatch("assembly", {k: v for k, v in body.items() if k not in ("index", "part")})


def _assemble_part(
    job: Job,
    body: Mapping[str, Any],
    deps: Deps,
    record_token: str,
    lease: _PartLease,
    watch: _Watch,
    scratch: Scratch,
    deadline: float,
) -> Outcome:
    from worker.chunks import piece_name
    from worker.render import assemble, render_audio

    settings = deps.settings
    started = time.monotonic()
    ffmpeg_bin = settings.ffmpeg_path or None
    count = int(body["count"])
    audio = scratch.path / AUDIO_PIECE
    audio_part = int(body.get("parts", count)) > count
    with contextlib.ExitStack() as keep:
        # The plan (frame count, piece durations) is the source's: probed again, from this process's cached
        # copy when it rendered parts of this render.
        plan, cplan = _fetch_and_plan(job, body, deps, watch, scratch, deadline, keep)
        if not audio_part:
            render_audio(plan, audio, ffmpeg_bin=ffmpeg_bin, cancel=watch.stop, deadline=deadline)
    # The source's last use in this render: the room goes to the pieces and the joined output, which are
    # about an output's size each, so the assembly needs no more disk than a whole render.
    _drop_source(job, deps, scratch.path)
    if audio_part:
        deps.storage.download(audio_key(settings, job.render_id), audio, stop=watch.stop)
    pieces = [scratch.path / "pieces" / piece_name(k) for k in range(count)]
    for k, piece in enumerate(pieces):
        deps.storage.download(piece_key(settings, job.render_id, k), piece, stop=watch.stop)
    watch.raise_if_stopped()
    preset = load_preset(job.output.format, "cpu")
    out = scratch.path / f"{job.render_id}.{preset.extension}"
    assemble(plan, cplan, pieces, audio, out, ffmpeg_bin=ffmpeg_bin, cancel=watch.stop, deadline=deadline)
    watch.raise_if_stopped()
    key = _output_key(settings, job)
    size = out.stat().st_size
    t0 = time.monotonic()
    deps.storage.put(out, key, preset.content_type)
    deps.observer.uploaded(size, time.monotonic() - t0)
    fields = {
        "size_bytes": size,
        "duration_s": round(plan.timeline.duration, 6),
        "encoder": preset.encoder,
        "output_key": key,
        "download_name": download_name(job),
        "chunks": count,
    }

    def finished() -> None:
        wall = time.monotonic() - started
        fmt = job.output.format
        deps.observer.finished("completed", fmt, preset.encoder, wall, plan.timeline.duration, plan.info.duration)
        _delete_pieces(deps, job.render_id, count)

    def cancelled() -> Outcome:
        with contextlib.suppress(RenderError):
            deps.storage.delete(key)
        _delete_pieces(deps, job.render_id, count)
        _terminal_event(deps, job.render_id, job.webhook)
        return Outcome.CANCELLED

    return _complete_stored(
        deps,
        job,
        record_token,
        fields,
        finished=finished,
        cancelled=cancelled,
        deadline=deadline,
        stop=watch.shutdown,
    )


def download_name(job: Job) -> str:
    """The name a download of the output is saved under: the source's, ``<name>.cut.<ext>`` for a cut and
    ``<name>.full.<ext>`` for the whole source (the stored object keeps the render id's name)."""
    stem = PurePosixPath(unquote(urlsplit(job.source_uri).path)).stem or "render"
    return f"{stem}.{'full' if job.segments is None else 'cut'}.{_extension(job.output.format)}"


def download_url(storage: Storage, record: Mapping[str, Any], expiry_s: int) -> str | None:
    """A freshly minted URL for a completed record (never stored: it expires)."""
    key = record.get("output_key")
    if record.get("state") != "completed" or not key:
        return None
    return storage.presign(key, record.get("download_name") or PurePosixPath(key).name, expiry_s)


def _fetch_source(
    job: Job,
    deps: Deps,
    watch: _Watch,
    into: Path,
    *,
    keep: contextlib.ExitStack | None = None,
    pinned: str | None = None,
) -> tuple[Path, str]:
    """The job's source on local disk, after checking its size; returns its path and version.

    Whole renders, chunks and exports all start here. With ``keep`` (the parts of a chunked render, and a
    render that may become one), the source comes from this process's :class:`SourceCache`, downloaded
    there if missing, and stays in use until ``keep`` closes; otherwise it is downloaded into ``into``
    (after the cache's idle source is deleted, to keep the disk one source's). ``pinned`` is the version the
    render's first worker read: a chunk or assembly that finds another fails the render. A download is
    stopped part-way by a cancel or a shutdown (the watch's stop event).
    """
    uri, limit = job.source_uri, deps.settings.max_source_bytes
    stat = deps.storage.stat(uri)
    if stat.size == 0:
        # Known from the HEAD: nothing to download (a GET of an empty object can hang on some stores).
        raise SourceError("the source is empty (0 bytes)", code=ErrorCode.SOURCE_UNREADABLE)
    if stat.size > limit:
        raise SourceError(f"source is {stat.size} bytes, over the limit of {limit}", code=ErrorCode.SOURCE_TOO_LARGE)
    if pinned is not None and stat.version != pinned:
        raise SourceError(
            "the source object was replaced while the render ran; render it again",
            code=ErrorCode.SOURCE_UNREADABLE,
        )

    def download(dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest.parent).free
        # The source, and an output that may be as large (bitrates are capped to the source's), and headroom.
        need = stat.size * (1 if job.output.is_export else 2) + DISK_HEADROOM_BYTES
        if free < need:
            # Declined before fetching: filling the disk would fail this render and whatever else runs here.
            raise DiskFull(
                f"the worker has {free} bytes free in its work dir and the render needs about {need}: "
                "declined for a worker with room"
            )
        try:
            deps.storage.fetch(uri, dest, stop=watch.stop, deadline_s=fetch_deadline_s(stat.size))
        except TransferStopped:
            watch.raise_if_stopped()  # says why: cancelled, shut down, or another part failed the render
            raise
        log.info("render %s: source downloaded (%d bytes)", job.render_id, stat.size)
        if pinned is not None and deps.storage.stat(uri).version != pinned:
            # Replaced during the download: the parts (ranged GETs) may mix two objects. The next attempt
            # sees the new version and fails the render as above.
            dest.unlink(missing_ok=True)
            raise SourceError("the source object was replaced during its download", transient=True)

    src: Path | None = None
    cache = deps.sources
    if cache is not None and keep is not None:
        src = keep.enter_context(cache.use(uri, stat.version, _ext_of(uri), download))
    elif cache is not None:
        cache.drop_idle()
    if src is None:  # no cache, or its one entry is in use by another source
        src = into / f"source{_ext_of(uri)}"
        download(src)
    watch.raise_if_stopped()
    return src, stat.version


def _drop_source(job: Job, deps: Deps, scratch: Path) -> None:
    """Free the disk a render's source took, on this worker, once its last part here is done with it."""
    (scratch / f"source{_ext_of(job.source_uri)}").unlink(missing_ok=True)
    _forget_source(deps, job)


def _forget_source(deps: Deps, job: Job) -> None:
    """The render is over on this process (done, failed, cancelled): its cached source goes, if idle."""
    if deps.sources is not None:
        deps.sources.forget(job.source_uri)
