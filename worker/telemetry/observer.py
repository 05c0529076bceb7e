"""The metrics side of ``worker.pipeline.Observer``: the pipeline's hooks mapped onto ``render_*`` metrics."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from worker.telemetry.definitions import (
    InProgress,
    get_metrics,
    observe_failure,
    observe_frames,
    observe_job,
    observe_upload,
)
from worker.telemetry.definitions import observe_webhook as _observe_webhook

if TYPE_CHECKING:
    from worker.pipeline import Observer as _ObserverBase
else:
    # At run time the observer is duck-typed: importing worker.pipeline here would pull PyAV, boto3 and the whole
    # render path into the telemetry process. For mypy it subclasses the real Observer, so the signatures are checked.
    _ObserverBase = object

_current_job = threading.local()


def set_nvenc_available(available: bool) -> None:
    """Record a real NVENC probe's result (never called with ``RENDER_NVENC=off``: the gauge stays absent)."""
    get_metrics().set_nvenc_available(available)


class PipelineObserver(_ObserverBase):
    """``started`` opens a ``render_jobs_in_progress`` entry for the calling worker thread; ``finished``,
    ``failed`` and ``cancelled`` close it, and the telemetry middleware closes whatever is still open when Dramatiq
    finishes the message: the pipeline has no hook for a delivery that ends in a retry or steps aside, and a leaked
    entry would count forever. A job counts under encoder "none" until an encode starts (``encoding``), then under the
    encoder really running, which is also what its record says; a job that ends before encoding ends under "none".
    """

    def started(self, fmt: str) -> None:
        close_current_job()
        # "none" until an encode starts (download, probe, an export that never encodes): the README's meaning.
        _current_job.handle = InProgress(get_metrics().in_progress, "none")

    def encoding(self, encoder: str) -> None:
        handle: InProgress | None = getattr(_current_job, "handle", None)
        if handle is not None:
            handle.switch(encoder)

    def finished(self, outcome: str, fmt: str, encoder: str, wall_s: float, output_s: float, source_s: float) -> None:
        close_current_job()
        observe_job(outcome, fmt, encoder, wall_s, output_s, source_s)

    def failed(self, code: str, fmt: str) -> None:
        encoder = close_current_job() or "none"
        observe_job("failed", fmt, encoder, 0.0)
        observe_failure(code)

    def cancelled(self, fmt: str) -> None:
        """A render stopped on request: finished with outcome ``cancelled``, never counted as a failure."""
        encoder = close_current_job() or "none"
        observe_job("cancelled", fmt, encoder, 0.0)

    def uploaded(self, size: int, seconds: float) -> None:
        observe_upload(size, seconds)

    def frames(self, fmt: str, copied: int, encoded: int) -> None:
        observe_frames(fmt, copied, encoded)

    def nvenc(self, available: bool) -> None:
        set_nvenc_available(available)

    def webhook(self, outcome: str) -> None:
        _observe_webhook(outcome)


def close_current_job() -> str | None:
    """Close this thread's in-progress entry, if any; returns the encoder it was counted under."""
    handle: InProgress | None = getattr(_current_job, "handle", None)
    if handle is None:
        return None
    _current_job.handle = None
    handle.close()
    return handle.encoder
