"""Every ``render_*`` metric object, its label vocabularies, and the process-wide copy the helpers write to.

:class:`RenderMetrics` is built as one object so a test can build a private copy against its own registry;
:func:`get_metrics` is the process-wide copy. Helpers validate label values, so no caller can create unbounded
series (a user-supplied format collapses to ``other``).

Gauge modes (prometheus_client multiprocess): ``livesum`` for what every worker process contributes to (jobs in
progress, worker processes, queue consumers), ``livemax`` for per-host flags (NVENC available, build info) and
``livemostrecent`` for values written only by the telemetry process (queue depth, GPU, Redis/storage reachable).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from worker.errors import ErrorCode
from worker.gpu import GpuSample
from worker.output import OUTPUT_FORMATS

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Label vocabularies. Anything outside them would be a programming error (or, for formats, user input), and an
# unbounded label is how a metrics backend falls over, so helpers validate against these.
# "cancelled": a render stopped on request; it is finished, but never a failure (no render_failures_total).
JOB_OUTCOMES = ("completed", "failed", "cancelled")
# Media renders and editor exports (xmeml, fcpxml, edl, otio: encoder "none") alike.
FORMATS = OUTPUT_FORMATS
OTHER_FORMAT = "other"  # a job rejected before its format was validated
ENCODERS = ("cpu", "nvenc", "none")  # "none": the job ended before an encoder was chosen
WEBHOOK_OUTCOMES = ("delivered", "retry", "gave_up")
QUEUE_STATES = ("ready", "delayed", "dead")
FRAME_ORIGINS = ("copied", "encoded")  # render_video_frames_total's "how"

# Renders run from seconds to RENDER_TIME_LIMIT_S (4 h by default), so the finite buckets reach 4 h; a render that
# ran longer (the limit raised) still lands in +Inf. tests/test_metrics_static.py ties the top bucket to the
# default time limit.
JOB_DURATION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 10800, 14400, 21600)
REALTIME_FACTOR_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
UPLOAD_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True)
class QueueDepth:
    ready: int
    delayed: int
    dead: int
    oldest_age_s: float  # of the ready queue; 0.0 when it is empty


class RenderMetrics:
    """Every ``render_*`` metric object.

    ``registry=None`` (multiprocess mode) registers nowhere, because in that mode the exposition reads the mmap
    files, never the in-process objects.
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
        self.video_frames = Counter(
            "render_video_frames_total",
            "Video frames of completed renders, by format and how they were made: copied from the source packet "
            "for packet (smart render) or encoded.",
            ("format", "how"),
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
        self.queue_consumers = Gauge(
            "render_queue_consumers",
            "Live worker processes on this host that consume the queue.",
            ("queue",),
            multiprocess_mode="livesum",
            registry=r,
        )
        # Unlabelled gauges exist (at 0) from the moment they are built, in every process that builds them. These
        # three must be absent until someone really sets them: NVENC only after a real probe (never with
        # RENDER_NVENC=off), reachability only in the telemetry process. So they are built on first use.
        self._lazy: dict[str, Gauge] = {}
        self._lazy_lock = threading.Lock()
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

    _LAZY_GAUGES: dict[str, tuple[str, str, Literal["livemax", "livemostrecent"]]] = {
        "nvenc_available": (
            "render_nvenc_available",
            "1 when the NVENC probe passed in a live worker process of this host, else 0 (absent: RENDER_NVENC=off).",
            "livemax",
        ),
        "redis_up": (
            "render_redis_up",
            "1 when the last readiness check reached Redis (the broker and record store), else 0.",
            "livemostrecent",
        ),
        "storage_up": (
            "render_storage_up",
            "1 when the last readiness check reached the output bucket of the object store, else 0.",
            "livemostrecent",
        ),
    }

    def _lazy_gauge(self, attr: str) -> Gauge:
        with self._lazy_lock:
            gauge = self._lazy.get(attr)
            if gauge is None:
                name, doc, mode = self._LAZY_GAUGES[attr]
                gauge = self._lazy[attr] = Gauge(name, doc, multiprocess_mode=mode, registry=self.registry)
            return gauge

    @property
    def nvenc_available(self) -> Gauge:
        return self._lazy_gauge("nvenc_available")

    @property
    def redis_up(self) -> Gauge:
        return self._lazy_gauge("redis_up")

    @property
    def storage_up(self) -> Gauge:
        return self._lazy_gauge("storage_up")

    def collectors(self) -> list[Counter | Gauge | Histogram]:
        """All metric objects built so far (used to unregister them from a registry)."""
        built = [v for v in vars(self).values() if isinstance(v, Counter | Gauge | Histogram)]
        return built + list(self._lazy.values())

    # --- the helpers the render actor calls ------------------------------------------------------------------

    def initialize_series(self) -> None:
        """Create the known label sets at 0, so ``rate()`` sees the first increment and panels show 0, not "no data".

        GPU gauges and ``render_nvenc_available`` are deliberately not touched: on a host without a GPU, or with
        ``RENDER_NVENC=off``, they must be absent, not zero.
        """
        for outcome in JOB_OUTCOMES:
            for fmt in FORMATS:
                for encoder in ENCODERS:
                    self.jobs.labels(outcome=outcome, format=fmt, encoder=encoder)
        for code in ErrorCode:
            self.failures.labels(code=code.value)
        for encoder in ENCODERS:
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
        with :meth:`observe_failure`; a cancelled render is never one.
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

    def observe_frames(self, format: str, copied: int, encoded: int) -> None:
        """Count a completed video render's frames, copied and encoded (both series exist from the first render
        on, so a dashboard's share of copied frames has data even where nothing qualifies for a copy)."""
        fmt = format if format in FORMATS else OTHER_FORMAT
        for how, n in zip(FRAME_ORIGINS, (copied, encoded), strict=True):
            self.video_frames.labels(format=fmt, how=how).inc(max(0, n))

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

        Never called when ``RENDER_NVENC=off``: the gauge then stays absent, so RenderGpuEncoderUnavailable stays
        silent on hosts that are meant to render on the CPU.
        """
        self.nvenc_available.set(1 if available else 0)

    def set_queue_depths(self, depths: dict[str, QueueDepth]) -> None:
        for queue, depth in depths.items():
            self.queue_depth.labels(queue=queue, state="ready").set(depth.ready)
            self.queue_depth.labels(queue=queue, state="delayed").set(depth.delayed)
            self.queue_depth.labels(queue=queue, state="dead").set(depth.dead)
            self.queue_oldest_age.labels(queue=queue).set(depth.oldest_age_s)

    def set_reachable(self, *, redis_ok: bool, storage_ok: bool) -> None:
        self.redis_up.set(1 if redis_ok else 0)
        self.storage_up.set(1 if storage_ok else 0)

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


def multiprocess_dir() -> Path | None:
    """The shared metrics directory, or None in single-process mode.

    Read from ``PROMETHEUS_MULTIPROC_DIR`` because that variable is how the directory reaches child processes and
    prometheus_client (which reads it itself); it is not configuration (that is ``RENDER_METRICS_DIR``).
    """
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


_default: RenderMetrics | None = None
_default_lock = threading.Lock()


def get_metrics() -> RenderMetrics:
    """The process-wide :class:`RenderMetrics`, created on first use.

    Created lazily rather than at import time so that ``prepare_multiprocess_dir`` can still switch the process
    to multiprocess mode after this module was imported: prometheus_client decides per metric object, when it is
    created, whether values live in memory or in the shared files.
    """
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = RenderMetrics(registry=None if multiprocess_dir() else REGISTRY)
    return _default


def drop_default() -> None:
    """Forget the process-wide instance (unregistering it), so the next :func:`get_metrics` builds a new one."""
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


def observe_frames(format: str, copied: int, encoded: int) -> None:
    """See :meth:`RenderMetrics.observe_frames`."""
    get_metrics().observe_frames(format, copied, encoded)


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


def build_version() -> str:
    try:
        return importlib.metadata.version("render-worker")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
