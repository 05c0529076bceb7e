"""Telemetry of the render worker: Prometheus metrics, readiness, queue depth and GPU, one endpoint per host.

One module per concern:

* :mod:`~worker.telemetry.definitions`: every ``render_*`` metric, label vocabularies, the process-wide copy
* :mod:`~worker.telemetry.observer`: :class:`PipelineObserver`, the pipeline's hooks mapped onto the metrics
* :mod:`~worker.telemetry.middleware`: Dramatiq wiring (``dramatiq_*`` metrics, per-process state) and :func:`install`
* :mod:`~worker.telemetry.queues`: queue depth from Dramatiq's Redis keys
* :mod:`~worker.telemetry.readiness`: Redis and output-bucket checks behind ``/readyz``
* :mod:`~worker.telemetry.exposition`: multiprocess mode and the HTTP server (``/metrics``, ``/healthz``, ``/readyz``)
* :mod:`~worker.telemetry.process`: the one telemetry process per host (server, readiness, queue/GPU polling)

``worker.gpu`` samples NVML and knows nothing of Prometheus; this package publishes its samples.
"""

from worker.telemetry.definitions import (
    ENCODERS,
    FORMATS,
    JOB_DURATION_BUCKETS,
    JOB_OUTCOMES,
    WEBHOOK_OUTCOMES,
    InProgress,
    QueueDepth,
    RenderMetrics,
    build_version,
    get_metrics,
    multiprocess_dir,
    observe_failure,
    observe_frames,
    observe_job,
    observe_upload,
    observe_webhook,
    track_in_progress,
)
from worker.telemetry.exposition import (
    MetricsServer,
    ensure_multiprocess_dir,
    live_worker_processes,
    make_registry,
    mark_process_dead,
    prepare_multiprocess_dir,
    start_http_server,
)
from worker.telemetry.middleware import DramatiqMetrics, TelemetryMiddleware, install
from worker.telemetry.observer import PipelineObserver, close_current_job, set_nvenc_available
from worker.telemetry.process import TelemetryLoop, run_telemetry
from worker.telemetry.queues import discover_queues, read_queue_depths, update_queue_metrics
from worker.telemetry.readiness import Readiness, ReadinessChecker, redis_check, storage_check

__all__ = [
    "ENCODERS",
    "FORMATS",
    "JOB_DURATION_BUCKETS",
    "JOB_OUTCOMES",
    "WEBHOOK_OUTCOMES",
    "DramatiqMetrics",
    "InProgress",
    "MetricsServer",
    "PipelineObserver",
    "QueueDepth",
    "Readiness",
    "ReadinessChecker",
    "RenderMetrics",
    "TelemetryLoop",
    "TelemetryMiddleware",
    "build_version",
    "close_current_job",
    "discover_queues",
    "ensure_multiprocess_dir",
    "get_metrics",
    "install",
    "live_worker_processes",
    "make_registry",
    "mark_process_dead",
    "multiprocess_dir",
    "observe_failure",
    "observe_frames",
    "observe_job",
    "observe_upload",
    "observe_webhook",
    "prepare_multiprocess_dir",
    "read_queue_depths",
    "redis_check",
    "run_telemetry",
    "set_nvenc_available",
    "start_http_server",
    "storage_check",
    "track_in_progress",
    "update_queue_metrics",
]
