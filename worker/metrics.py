"""Prometheus metrics of the render worker: the ``render_*`` family, queue depth, and the one exposition server.

What lives here
---------------
* :class:`RenderMetrics` – every ``render_*`` metric object, built together so a test can build a private copy
  against its own registry; :func:`get_metrics` is the process-wide copy the helpers below write to.
* Helpers the render actor calls: :func:`observe_job`, :func:`observe_failure`, :func:`track_in_progress`,
  :func:`observe_upload`, :func:`observe_webhook`, :func:`set_nvenc_available`, and :class:`PipelineObserver`
  which maps ``worker.pipeline``'s observer hooks onto them. Label values are checked so that no caller can create
  unbounded series (user-supplied formats collapse to ``other``).
* :func:`read_queue_depths` / :func:`update_queue_metrics` – ready/delayed/dead counts read straight from
  Dramatiq's Redis keys.
* :func:`prepare_multiprocess_dir`, :func:`make_registry`, :func:`start_http_server`, :func:`mark_process_dead` –
  prometheus_client multiprocess mode.
* :class:`TelemetryMiddleware`, :class:`DramatiqMetrics` and :func:`install` – the Dramatiq wiring.

Decision: one exposition server for ``dramatiq_*`` and ``render_*``
-------------------------------------------------------------------
Dramatiq's own ``Prometheus`` middleware forks an HTTP server on ``dramatiq_prom_port`` (9191 by default, the same
default as ``RENDER_METRICS_PORT``) that serves the multiprocess directory ``dramatiq_prom_db``. Running it next to
a second server of ours would mean two ports (or a bind conflict) and two directories. So:

* we keep Dramatiq's middleware for the ``dramatiq_*`` *definitions* (their names are part of the contract in
  DESIGN.md and we do not want to copy and drift from them) via :class:`DramatiqMetrics`, a subclass that points its
  directory at ours and **drops its fork**;
* :class:`TelemetryMiddleware` forks exactly one extra process (:func:`run_telemetry`, started once per host by the
  Dramatiq CLI through the middleware ``forks`` hook). That process serves ``/metrics`` on
  ``settings.metrics_port`` from the shared multiprocess directory – so it shows ``dramatiq_*`` and ``render_*``
  from every worker process – and polls queue depth and NVML every ``settings.queue_depth_interval_s``. Queue depth
  is read by this single loop, not by every worker process, so Redis sees one poller per host.

Multiprocess mode
-----------------
Dramatiq runs several worker processes. prometheus_client only shares values between processes through files in
the directory named by the ``PROMETHEUS_MULTIPROC_DIR`` environment variable, and it reads that variable *itself*
(when it picks its value class, when it opens files, in ``MultiProcessCollector``) – there is no argument to pass
instead. That is why :func:`prepare_multiprocess_dir` is the one place in the worker that writes to ``os.environ``:
it must run in the parent process *before* Dramatiq starts the worker processes, so every child inherits the
variable and writes its own ``<type>_<pid>.db`` files, and so stale files of an earlier run are removed exactly once
(a child cleaning the directory would delete its siblings' live values).

Gauge modes: ``livesum`` for things every worker process contributes to (jobs in progress, worker processes),
``livemax`` for per-host flags (NVENC available, build info) and ``livemostrecent`` for values written only by the
telemetry process (queue depth, GPU). ``live*`` files are deleted by :func:`mark_process_dead`, so a stopped process
stops counting; counters and histograms of dead processes are kept, as they must be for ``rate()``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import json
import logging
import os
import shutil
import socketserver
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware
from dramatiq.middleware import prometheus as dramatiq_prometheus
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, multiprocess
from prometheus_client import values as prometheus_values

from worker.errors import ErrorCode
from worker.settings import Settings, load

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from worker.gpu import GpuSample
    from worker.pipeline import Observer as _ObserverBase
else:
    # At run time the observer is duck-typed: importing worker.pipeline here would pull PyAV, boto3 and the whole
    # render path into the telemetry process. For mypy it subclasses the real Observer, so the signatures are checked.
    _ObserverBase = object

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Label vocabularies. Anything outside them would be a programming error (or, for formats, user input), and an
# unbounded label is how a metrics backend falls over, so helpers validate against these.
JOB_OUTCOMES = ("completed", "failed")
FORMATS = ("mp4", "mov", "m4a", "mp3")
OTHER_FORMAT = "other"  # a job rejected before its format was validated
ENCODERS = ("cpu", "nvenc", "none")  # "none": the job failed before an encoder was chosen
WEBHOOK_OUTCOMES = ("delivered", "retry", "gave_up")
QUEUE_STATES = ("ready", "delayed", "dead")

# Renders run from seconds to the 4 h time limit, so the buckets span that whole range.
JOB_DURATION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
REALTIME_FACTOR_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
UPLOAD_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

# Dramatiq's Redis broker key layout (dramatiq/brokers/redis.py and redis/dispatch.lua, dramatiq 2.x):
#   <ns>:<q>           LIST of message ids waiting to be fetched (fetch LPOPs, enqueue RPUSHes)
#   <ns>:<q>.msgs      HASH id -> message; also holds fetched-but-unacked messages, so it is not "waiting"
#   <ns>:<q>.DQ        the delay queue, the same LIST/HASH pair; workers fetch delayed messages early and hold them
#                      in memory until their eta, so the HASH (.DQ.msgs) is the count of delayed messages
#   <ns>:<q>.XQ        SORTED SET of dead-lettered ids scored by time of death (+ .XQ.msgs HASH)
DEFAULT_NAMESPACE = "dramatiq"
_AGE_SCAN = 100  # how many ids from the head of the ready list are inspected for the oldest age


class RenderMetrics:
    """Every ``render_*`` metric object.

    Built together so that tests can create a private instance against their own registry; the process-wide instance
    comes from :func:`get_metrics`. ``registry=None`` (multiprocess mode) registers nowhere, because in that mode the
    exposition reads the mmap files, never the in-process objects.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry
        self.registry = registry
        self.jobs = Counter(
            "render_jobs_total",
            "Renders that reached a terminal state, by outcome, output format and encoder.",
            ("outcome", "format", "encoder"),
            registry=r,
        )
        self.failures = Counter(
            "render_failures_total", "Failed renders by error code (one per failed job).", ("code",), registry=r
        )
        self.job_duration = Histogram(
            "render_job_duration_seconds",
            "Wall time of completed renders, from start of work to uploaded output.",
            ("format",),
            buckets=JOB_DURATION_BUCKETS,
            registry=r,
        )
        self.realtime_factor = Histogram(
            "render_realtime_factor",
            "Output media seconds produced per wall-clock second, for completed renders.",
            ("format", "encoder"),
            buckets=REALTIME_FACTOR_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "render_jobs_in_progress",
            "Renders being worked on right now, by encoder.",
            ("encoder",),
            multiprocess_mode="livesum",
            registry=r,
        )
        self.source_seconds = Counter(
            "render_source_seconds_total", "Source media seconds of completed renders.", ("format",), registry=r
        )
        self.output_seconds = Counter(
            "render_output_seconds_total", "Output media seconds of completed renders.", ("format",), registry=r
        )
        self.upload_bytes = Counter(
            "render_upload_bytes_total", "Bytes of output uploaded to object storage.", registry=r
        )
        self.upload_duration = Histogram(
            "render_upload_duration_seconds",
            "Time to upload one output to object storage.",
            buckets=UPLOAD_DURATION_BUCKETS,
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "render_webhook_deliveries_total",
            "Webhook delivery attempts by outcome: delivered, retry (will try again) or gave_up.",
            ("outcome",),
            registry=r,
        )
        self.queue_depth = Gauge(
            "render_queue_depth",
            "Messages in the broker by queue and state: ready (waiting, unclaimed), delayed (retry backoff), dead.",
            ("queue", "state"),
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.queue_oldest_age = Gauge(
            "render_queue_oldest_age_seconds",
            "How long the oldest ready message has been waiting (0 when the queue is empty).",
            ("queue",),
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.nvenc_available = Gauge(
            "render_nvenc_available",
            "1 when the NVENC probe passed in a live worker process of this host, else 0.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.worker_processes = Gauge(
            "render_worker_processes",
            "Live worker processes on this host (each sets 1 at boot and 0 at shutdown).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.build_info = Gauge(
            "render_build_info",
            "Always 1; the version label says which render-worker build is running.",
            ("version",),
            multiprocess_mode="livemax",
            registry=r,
        )

        def gpu_gauge(name: str, doc: str) -> Gauge:
            # Written only by the telemetry process; absent on hosts without a GPU (see worker.gpu).
            return Gauge(name, doc + " (NVML)", ("gpu", "name"), multiprocess_mode="livemostrecent", registry=r)

        self.gpu_utilization = gpu_gauge("render_gpu_utilization_ratio", "GPU busy ratio")
        self.gpu_encoder_utilization = gpu_gauge("render_gpu_encoder_utilization_ratio", "NVENC busy ratio")
        self.gpu_decoder_utilization = gpu_gauge("render_gpu_decoder_utilization_ratio", "NVDEC busy ratio")
        self.gpu_encoder_sessions = gpu_gauge("render_gpu_encoder_sessions", "Open NVENC sessions")
        self.gpu_encoder_fps = gpu_gauge("render_gpu_encoder_fps", "Average encode fps over open NVENC sessions")
        self.gpu_memory_used = gpu_gauge("render_gpu_memory_used_bytes", "GPU memory in use")
        self.gpu_memory_total = gpu_gauge("render_gpu_memory_total_bytes", "GPU memory installed")

    def collectors(self) -> list[Counter | Gauge | Histogram]:
        """All metric objects (used to unregister them from a registry)."""
        return [v for v in vars(self).values() if isinstance(v, Counter | Gauge | Histogram)]

    # --- the helpers the render actor calls ------------------------------------------------------------------

    def initialize_series(self) -> None:
        """Create the known label sets at 0, so ``rate()`` sees the first increment and panels show 0, not "no data".

        GPU gauges are deliberately not touched: on a host without a GPU they must be absent, not zero.
        """
        for outcome in JOB_OUTCOMES:
            for fmt in FORMATS:
                for encoder in ("cpu", "nvenc"):
                    self.jobs.labels(outcome=outcome, format=fmt, encoder=encoder)
        for code in ErrorCode:
            self.failures.labels(code=code.value)
        for encoder in ("cpu", "nvenc"):
            self.in_progress.labels(encoder=encoder)
        for webhook_outcome in WEBHOOK_OUTCOMES:
            self.webhook_deliveries.labels(outcome=webhook_outcome)

    def observe_job(
        self,
        outcome: str,
        format: str,
        encoder: str,
        duration_s: float,
        output_s: float = 0.0,
        source_s: float = 0.0,
    ) -> None:
        """Count one render that reached a terminal state.

        Durations, realtime factor and media seconds are recorded for completed renders only: a job rejected in
        milliseconds would otherwise drag the duration percentiles down. Failures are counted by code separately,
        with :meth:`observe_failure`.
        """
        outcome = _checked("outcome", outcome, JOB_OUTCOMES)
        encoder = _checked("encoder", encoder, ENCODERS)
        fmt = format if format in FORMATS else OTHER_FORMAT
        self.jobs.labels(outcome=outcome, format=fmt, encoder=encoder).inc()
        if outcome != "completed":
            return
        self.job_duration.labels(format=fmt).observe(max(duration_s, 0.0))
        if output_s > 0:
            self.output_seconds.labels(format=fmt).inc(output_s)
            if duration_s > 0:
                self.realtime_factor.labels(format=fmt, encoder=encoder).observe(output_s / duration_s)
        if source_s > 0:
            self.source_seconds.labels(format=fmt).inc(source_s)

    def observe_failure(self, code: ErrorCode | str) -> None:
        """Count one failed render by its error code (call once per job that ends ``failed``)."""
        self.failures.labels(code=ErrorCode(code).value).inc()

    def observe_upload(self, nbytes: int, seconds: float) -> None:
        self.upload_bytes.inc(max(nbytes, 0))
        self.upload_duration.observe(max(seconds, 0.0))

    def observe_webhook(self, outcome: str) -> None:
        self.webhook_deliveries.labels(outcome=_checked("outcome", outcome, WEBHOOK_OUTCOMES)).inc()

    def set_nvenc_available(self, available: bool) -> None:
        """Record the result of a real NVENC probe.

        Do not call it when ``RENDER_NVENC=off``: the gauge then stays absent, which is how an operator silences
        RenderGpuEncoderUnavailable on a GPU host that is meant to render on the CPU.
        """
        self.nvenc_available.set(1 if available else 0)

    def set_queue_depths(self, depths: dict[str, QueueDepth]) -> None:
        for queue, depth in depths.items():
            self.queue_depth.labels(queue=queue, state="ready").set(depth.ready)
            self.queue_depth.labels(queue=queue, state="delayed").set(depth.delayed)
            self.queue_depth.labels(queue=queue, state="dead").set(depth.dead)
            self.queue_oldest_age.labels(queue=queue).set(depth.oldest_age_s)

    def set_queue_unknown(self, queues: Iterable[str]) -> None:
        """Broker unreachable: write NaN rather than keep the last numbers.

        Stale numbers would look real; series cannot be removed in multiprocess mode; NaN makes every comparison in
        an alert false and shows as a gap on a panel.
        """
        nan = float("nan")
        for queue in queues:
            for state in QUEUE_STATES:
                self.queue_depth.labels(queue=queue, state=state).set(nan)
            self.queue_oldest_age.labels(queue=queue).set(nan)

    def set_gpu_samples(self, samples: Iterable[GpuSample]) -> None:
        """Publish NVML samples; a field the GPU does not support (``None``) leaves its series absent."""
        for s in samples:
            labels = {"gpu": str(s.index), "name": s.name}
            for gauge, value in (
                (self.gpu_utilization, s.utilization_ratio),
                (self.gpu_encoder_utilization, s.encoder_utilization_ratio),
                (self.gpu_decoder_utilization, s.decoder_utilization_ratio),
                (self.gpu_encoder_sessions, s.encoder_sessions),
                (self.gpu_encoder_fps, s.encoder_fps),
                (self.gpu_memory_used, s.memory_used_bytes),
                (self.gpu_memory_total, s.memory_total_bytes),
            ):
                if value is not None:
                    gauge.labels(**labels).set(value)


class InProgress:
    """Handle returned by :func:`track_in_progress`; :meth:`switch` moves the job to another encoder's gauge.

    A render that starts on NVENC and falls back to the CPU preset must not be counted under NVENC for the rest of
    its (much longer) encode.
    """

    def __init__(self, gauge: Gauge, encoder: str) -> None:
        self._gauge = gauge
        self.encoder = _checked("encoder", encoder, ENCODERS)
        self._gauge.labels(encoder=self.encoder).inc()

    def switch(self, encoder: str) -> None:
        encoder = _checked("encoder", encoder, ENCODERS)
        if encoder == self.encoder:
            return
        self._gauge.labels(encoder=encoder).inc()
        self._gauge.labels(encoder=self.encoder).dec()
        self.encoder = encoder

    def close(self) -> None:
        self._gauge.labels(encoder=self.encoder).dec()


def _checked(what: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"metrics: {what} must be one of {', '.join(allowed)}, not {value!r}")
    return value


# --- the process-wide instance and module-level helpers ------------------------------------------------------

_default: RenderMetrics | None = None
_default_lock = threading.Lock()


def get_metrics() -> RenderMetrics:
    """The process-wide :class:`RenderMetrics`, created on first use.

    Created lazily rather than at import time so that :func:`prepare_multiprocess_dir` can still switch the process
    to multiprocess mode after this module was imported: prometheus_client decides per metric object, when it is
    created, whether values live in memory or in the shared files.
    """
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = RenderMetrics(registry=None if multiprocess_dir() else REGISTRY)
    return _default


def _drop_default() -> None:
    global _default
    with _default_lock:
        if _default is not None and _default.registry is not None:
            for collector in _default.collectors():
                _default.registry.unregister(collector)
        _default = None


def observe_job(
    outcome: str, format: str, encoder: str, duration_s: float, output_s: float = 0.0, source_s: float = 0.0
) -> None:
    """See :meth:`RenderMetrics.observe_job`."""
    get_metrics().observe_job(outcome, format, encoder, duration_s, output_s, source_s)


def observe_failure(code: ErrorCode | str) -> None:
    """See :meth:`RenderMetrics.observe_failure`."""
    get_metrics().observe_failure(code)


@contextlib.contextmanager
def track_in_progress(encoder: str) -> Iterator[InProgress]:
    """Count a render in ``render_jobs_in_progress`` for the duration of the block, whatever way it exits."""
    handle = InProgress(get_metrics().in_progress, encoder)
    try:
        yield handle
    finally:
        handle.close()


def observe_upload(nbytes: int, seconds: float) -> None:
    get_metrics().observe_upload(nbytes, seconds)


def observe_webhook(outcome: str) -> None:
    get_metrics().observe_webhook(outcome)


_nvenc_known: bool | None = None  # this process's last NVENC probe result, for the in-progress label


def set_nvenc_available(available: bool) -> None:
    """See :meth:`RenderMetrics.set_nvenc_available` (only after a real probe)."""
    global _nvenc_known
    _nvenc_known = bool(available)
    get_metrics().set_nvenc_available(available)


# --- the pipeline observer -----------------------------------------------------------------------------------

VIDEO_FORMATS = ("mp4", "mov")
_current_job = threading.local()


class PipelineObserver(_ObserverBase):
    """The metrics side of ``worker.pipeline.Observer`` (duck-typed, so the pipeline does not import this module).

    ``started`` opens a ``render_jobs_in_progress`` entry for the calling worker thread; ``finished``/``failed``
    close it, and :class:`TelemetryMiddleware` closes whatever is still open when Dramatiq finishes the message –
    the pipeline has no hook for a delivery that ends in a retry or steps aside, and a leaked entry would count
    forever. The encoder label of a job in flight is a guess (NVENC for video when this process's probe passed);
    the completed job is counted under the encoder that really produced the file.
    """

    def started(self, fmt: str) -> None:
        close_current_job()
        encoder = "nvenc" if fmt in VIDEO_FORMATS and _nvenc_known else "cpu"
        _current_job.handle = InProgress(get_metrics().in_progress, encoder)

    def finished(self, outcome: str, fmt: str, encoder: str, wall_s: float, output_s: float, source_s: float) -> None:
        close_current_job()
        observe_job(outcome, fmt, encoder, wall_s, output_s, source_s)

    def failed(self, code: str, fmt: str) -> None:
        encoder = close_current_job() or "none"
        observe_job("failed", fmt, encoder, 0.0)
        observe_failure(code)

    def uploaded(self, size: int, seconds: float) -> None:
        observe_upload(size, seconds)

    def nvenc(self, available: bool) -> None:
        set_nvenc_available(available)

    def webhook(self, outcome: str) -> None:
        observe_webhook(outcome)


def close_current_job() -> str | None:
    """Close this thread's in-progress entry, if any; returns the encoder it was counted under."""
    handle: InProgress | None = getattr(_current_job, "handle", None)
    if handle is None:
        return None
    _current_job.handle = None
    handle.close()
    return handle.encoder


def build_version() -> str:
    try:
        return importlib.metadata.version("render-worker")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --- queue depth ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueDepth:
    ready: int
    delayed: int
    dead: int
    oldest_age_s: float  # of the ready queue; 0.0 when it is empty


def read_queue_depths(
    client: redis.Redis,
    queues: Iterable[str],
    *,
    namespace: str = DEFAULT_NAMESPACE,
    now: float | None = None,
) -> dict[str, QueueDepth]:
    """Read ready/delayed/dead counts and the oldest ready age of each queue from Dramatiq's Redis keys.

    * ready = ``LLEN <ns>:<q>``: waiting and not yet claimed by any worker (what KEDA scales on as well);
      messages a worker has fetched sit in the ``.msgs`` hash only and are "in progress" instead.
    * delayed = ``HLEN <ns>:<q>.DQ.msgs``: workers pull delayed messages out of the ``.DQ`` list early and hold them
      until their eta, so the list alone under-counts.
    * dead = ``ZCARD <ns>:<q>.XQ``.
    * oldest age: the message bodies at the head of the ready list carry ``message_timestamp`` (ms); a message that
      came back from the delay queue waited only since its ``eta``, so the later of the two is used.
    """
    queues = list(queues)
    now_ms = (time.time() if now is None else now) * 1000.0
    pipe = client.pipeline(transaction=False)
    for q in queues:
        base = f"{namespace}:{q}"
        pipe.llen(base)
        pipe.hlen(f"{base}.DQ.msgs")
        pipe.zcard(f"{base}.XQ")
        pipe.lrange(base, 0, _AGE_SCAN - 1)
    replies = pipe.execute()

    heads: dict[str, list[bytes]] = {}
    counts: dict[str, tuple[int, int, int]] = {}
    for i, q in enumerate(queues):
        ready, delayed, dead, head = replies[4 * i : 4 * i + 4]
        counts[q] = (int(ready), int(delayed), int(dead))
        heads[q] = list(head)

    pipe = client.pipeline(transaction=False)
    with_heads = [q for q in queues if heads[q]]
    for q in with_heads:
        pipe.hmget(f"{namespace}:{q}.msgs", heads[q])
    bodies = dict(zip(with_heads, pipe.execute(), strict=True)) if with_heads else {}

    result: dict[str, QueueDepth] = {}
    for q in queues:
        waiting_since = [t for t in (_waiting_since_ms(b) for b in bodies.get(q, [])) if t is not None]
        age = max(0.0, (now_ms - min(waiting_since)) / 1000.0) if waiting_since else 0.0
        ready, delayed, dead = counts[q]
        result[q] = QueueDepth(ready=ready, delayed=delayed, dead=dead, oldest_age_s=age)
    return result


def _waiting_since_ms(body: bytes | str | None) -> float | None:
    if body is None:  # acked between LRANGE and HMGET
        return None
    try:
        data = json.loads(body)
        since = float(data["message_timestamp"])
        eta = (data.get("options") or {}).get("eta")
        return max(since, float(eta)) if eta is not None else since
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # not Dramatiq's JSON encoding: count it, but it has no age


def update_queue_metrics(
    client: redis.Redis,
    queues: Iterable[str],
    metrics: RenderMetrics | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
) -> dict[str, QueueDepth]:
    """Read the queue depths and set ``render_queue_depth`` / ``render_queue_oldest_age_seconds``.

    Redis errors propagate; the telemetry loop turns them into NaN (see :meth:`RenderMetrics.set_queue_unknown`).
    """
    depths = read_queue_depths(client, queues, namespace=namespace)
    (metrics or get_metrics()).set_queue_depths(depths)
    return depths


# --- multiprocess mode and exposition ------------------------------------------------------------------------

_fork_settings: Settings | None = None


def multiprocess_dir() -> Path | None:
    """The shared metrics directory, or None in single-process mode.

    Read from ``PROMETHEUS_MULTIPROC_DIR`` because that variable is how the directory reaches child processes and
    prometheus_client; it is not configuration (that is ``RENDER_METRICS_DIR``).
    """
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def prepare_multiprocess_dir(settings: Settings, *, clean: bool = True) -> Path:
    """Create (and by default empty) the multiprocess directory and point ``PROMETHEUS_MULTIPROC_DIR`` at it.

    Call once in the parent process, before Dramatiq starts its worker processes; see the module docstring for
    why this must be the parent. ``RENDER_METRICS_DIR`` empty means a fresh temporary directory, removed when the
    parent exits. Only ``*.db`` files are removed from a configured directory: an operator may point it anywhere.
    """
    global _fork_settings
    if settings.metrics_dir:
        path = Path(settings.metrics_dir)
        path.mkdir(parents=True, exist_ok=True)
        if clean:
            for stale in path.glob("*.db"):
                stale.unlink(missing_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="render-metrics-"))
        owner = os.getpid()
        # Forked children inherit atexit handlers; only the process that created the directory removes it.
        atexit.register(_remove_temp_dir, path, owner)
    os.environ[MULTIPROC_ENV] = str(path)
    if prometheus_values.ValueClass is prometheus_values.MutexValue:
        # prometheus_client chose in-memory values when it was imported, before the variable existed; choose again
        # so that metric objects created from now on (ours and Dramatiq's) write to the shared files.
        prometheus_values.ValueClass = prometheus_values.get_value_class()
        _drop_default()
    _fork_settings = settings
    return path


def ensure_multiprocess_dir(settings: Settings) -> Path:
    """The shared directory, preparing it (without cleaning) when the parent did not.

    That happens with a bare ``dramatiq worker.actors`` or a single-process worker in a test. With
    ``RENDER_METRICS_DIR`` set, every process still finds the same directory (only stale files of earlier runs are
    not removed); without it each process gets its own, which is only complete for a single process. Never cleans:
    a worker process must not delete its siblings' files.
    """
    path = multiprocess_dir()
    if path is None:
        logger.warning(
            "metrics: prepare_multiprocess_dir() did not run before the worker processes started%s",
            "" if settings.metrics_dir else "; metrics are only complete for a single-process worker",
        )
        path = prepare_multiprocess_dir(settings, clean=False)
    return path


def _remove_temp_dir(path: Path, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def make_registry() -> CollectorRegistry:
    """The registry to expose: every process's files in multiprocess mode, else the default registry."""
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))
    return registry


def mark_process_dead(pid: int | None = None) -> None:
    """Drop the ``live*`` gauge files of a process that exited (default: this one).

    Without this a stopped process keeps counting in ``render_jobs_in_progress`` and ``render_worker_processes``.
    Worker processes call it from ``after_worker_shutdown``; a supervisor that reaps children may call it too.
    """
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(os.getpid() if pid is None else pid, str(path))


def live_worker_processes(registry: CollectorRegistry) -> float:
    """Sum of ``render_worker_processes`` in a registry (what ``/readyz`` checks)."""
    total = 0.0
    for family in registry.collect():
        if family.name == "render_worker_processes":
            total += sum(s.value for s in family.samples if s.name == "render_worker_processes")
    return total


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        logger.debug("metrics http: " + format, *args)


class MetricsServer:
    """The HTTP endpoint: ``/metrics`` (Prometheus text), ``/healthz`` (process up), ``/readyz`` (workers booted).

    ``/readyz`` answers 503 until at least one worker process has booted, so a rollout waits for real workers and
    not just for this exposition process.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        metrics_app = make_wsgi_app(registry)

        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "/")
            if path == "/healthz":
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            if path == "/readyz":
                ready = live_worker_processes(self.registry) > 0
                start_response("200 OK" if ready else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"ready\n" if ready else b"no worker process has booted\n"]
            return metrics_app(environ, start_response)

        self._server = make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
        self.port: int = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_http_server(settings: Settings, *, registry: CollectorRegistry | None = None) -> MetricsServer | None:
    """Serve :func:`make_registry` on ``settings.metrics_host:metrics_port``; None when the port is 0 (disabled)."""
    if not settings.metrics_port:
        return None
    server = MetricsServer(registry or make_registry(), settings.metrics_host, settings.metrics_port)
    logger.info("metrics: serving on %s:%d", settings.metrics_host, server.port)
    return server


# --- the telemetry process -----------------------------------------------------------------------------------


class TelemetryLoop:
    """Polls queue depth and NVML and writes the gauges; one per host, in the telemetry process."""

    def __init__(self, client: redis.Redis, queues: Sequence[str], metrics: RenderMetrics | None = None) -> None:
        from worker.gpu import GpuCollector  # gpu imports this module; import it lazily to avoid a cycle

        self.client = client
        self.queues = list(queues)
        self.metrics = metrics or get_metrics()
        self.gpu = GpuCollector()
        self._broker_down = False

    def poll_once(self) -> None:
        try:
            update_queue_metrics(self.client, self.queues, self.metrics)
            if self._broker_down:
                logger.info("metrics: broker reachable again")
            self._broker_down = False
        except redis.RedisError as exc:
            if not self._broker_down:  # one line per outage, not one per poll
                logger.warning("metrics: cannot read queue depth from the broker: %s", exc)
            self._broker_down = True
            self.metrics.set_queue_unknown(self.queues)
        self.gpu.update_metrics(self.metrics)

    def run(self, interval_s: float, stop: threading.Event) -> None:
        while not stop.is_set():
            self.poll_once()
            stop.wait(interval_s)

    def close(self) -> None:
        self.gpu.close()
        self.client.close()


def run_telemetry(settings: Settings | None = None, stop: threading.Event | None = None) -> int:
    """The one extra process per host: serve ``/metrics`` and poll queue depth + GPU until stopped.

    Dramatiq's CLI calls fork functions without arguments, so the settings are the ones
    :func:`prepare_multiprocess_dir` saw in the parent (inherited through fork) or, when the process was spawned,
    loaded from the environment. Dramatiq stops fork processes with SIGTERM, which raises ``SystemExit`` here;
    the ``finally`` then removes this process's live gauges.
    """
    settings = settings or _fork_settings or load()
    ensure_multiprocess_dir(settings)
    stop = stop or threading.Event()
    metrics = get_metrics()
    metrics.build_info.labels(version=build_version()).set(1)
    server = start_http_server(settings)
    loop = TelemetryLoop(
        redis.Redis.from_url(settings.redis_url, socket_timeout=5), [settings.queue, settings.webhook_queue], metrics
    )
    try:
        loop.run(settings.queue_depth_interval_s, stop)
    finally:
        loop.close()
        if server is not None:
            server.close()
        mark_process_dead()
    return 0


# --- Dramatiq wiring -----------------------------------------------------------------------------------------


class DramatiqMetrics(dramatiq_prometheus.Prometheus):
    """Dramatiq's own ``dramatiq_*`` metrics, written to our multiprocess directory, without its HTTP server.

    Dramatiq's middleware keeps its directory in the module global ``DB_PATH`` (read from ``dramatiq_prom_db`` at
    import) and uses it in ``after_process_boot`` and ``after_worker_shutdown``; pointing that global at our
    directory keeps both in step with ours. ``forks`` is empty: :class:`TelemetryMiddleware` serves everything.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.booted = False

    @property
    def forks(self) -> list[Callable[[], int]]:
        return []

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        dramatiq_prometheus.DB_PATH = str(ensure_multiprocess_dir(self.settings))
        super().after_process_boot(broker)
        self.booted = True

    # Dramatiq's hooks use metric objects created in after_process_boot. A producer process, or a worker run
    # in-process by a test, never emits process_boot: there the hooks do nothing instead of logging a critical
    # "Unexpected failure" for every message.

    def after_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if self.booted:
            super().after_nack(broker, message)

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        if self.booted:
            super().after_enqueue(broker, message, delay)

    def before_delay_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if self.booted:
            super().before_delay_message(broker, message)

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if self.booted:
            super().before_process_message(broker, message)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if self.booted:
            super().after_process_message(broker, message, result=result, exception=exception)

    after_skip_message = after_process_message  # as in Dramatiq's class

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.booted:
            super().after_worker_shutdown(broker, worker)


class TelemetryMiddleware(Middleware):
    """Per worker process: count the process, initialise series, report NVENC; per host: fork :func:`run_telemetry`.

    ``probe_nvenc``: run the (cached, per-process) NVENC probe of ``worker.encoders`` in a background thread at
    boot, so ``render_nvenc_available`` is known before the first video job – a GPU host whose NVENC is broken
    should alert while idle, not after it rendered a day of jobs on the CPU. The render path reuses the cached
    result. Skipped when ``RENDER_NVENC=off``, which leaves the gauge absent on purpose.
    """

    def __init__(self, settings: Settings, *, probe_nvenc: bool = True) -> None:
        self.settings = settings
        self.probe_nvenc = probe_nvenc

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [run_telemetry] if self.settings.metrics_port else []

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        ensure_multiprocess_dir(self.settings)
        metrics = get_metrics()
        metrics.initialize_series()
        metrics.worker_processes.set(1)
        if self.probe_nvenc and self.settings.nvenc != "off":
            threading.Thread(target=self._report_nvenc, name="nvenc-probe", daemon=True).start()

    def _report_nvenc(self) -> None:
        from worker.encoders import nvenc_status

        try:
            status = nvenc_status(
                self.settings.nvenc,
                ffmpeg_path=self.settings.ffmpeg_path or None,  # the same cache key as worker.render
                timeout_s=self.settings.nvenc_probe_timeout_s,
            )
        except Exception:  # noqa: BLE001 - telemetry must never take a worker down
            logger.warning("metrics: NVENC probe failed", exc_info=True)
            return
        set_nvenc_available(status.available)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        close_current_job()  # runs in the worker thread that processed the message

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        close_current_job()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        get_metrics().worker_processes.set(0)
        mark_process_dead()


def install(broker: dramatiq.Broker, settings: Settings) -> None:
    """Add the metrics middleware to a broker; the queue layer calls this where it builds the broker.

    No side effects beyond that: importing the broker module (in a test, say) does not switch the process to
    multiprocess mode. :func:`prepare_multiprocess_dir` should run in the parent before Dramatiq forks (the
    ``render-worker`` entry point does); the middleware falls back to :func:`ensure_multiprocess_dir` at boot.
    """
    broker.add_middleware(DramatiqMetrics(settings))
    broker.add_middleware(TelemetryMiddleware(settings))
