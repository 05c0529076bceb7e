"""One exception root for the whole worker, and the error codes of the contract.

Every failure that leaves the core is a :class:`RenderError` carrying one of the
:class:`ErrorCode` values from ``shared/DESIGN.md``. Library errors (PyAV,
botocore, redis, subprocess) are translated where they are caught, with
``raise ... from exc``, so callers never need to know which library failed.

Tree::

    RenderError                     code, message, transient
    ├── InvalidJob                  invalid_job          (permanent)
    │   ├── IntakeBug               invalid_job          (a validator raised something else: logged as a bug)
    │   └── UnrecordableJob         invalid_job          (no usable render id: dead-lettered, no record to fail)
    ├── SourceError                 source_* codes       (permanent)
    ├── EncodeError                 encode_failed        (permanent; an NVENC one falls back to CPU in the job)
    ├── ChunkStalled                encode_failed        (a chunk made no progress: transient, put back)
    ├── StorageError                storage_failed       (transient until retries run out)
    ├── DiskFull                    disk_full            (the host's: transient, another worker with disk takes it)
    ├── RenderTimeout               timeout              (permanent)
    ├── Cancelled                   internal_error       (the job was asked to stop: shutdown; retried elsewhere)
    ├── CancelRequested             internal_error       (the render's record was cancelled: stop for good)
    ├── LeaseBusy                   internal_error       (another live worker holds the render: step aside)
    ├── EventNotQueued              internal_error       (the record is final, its event not handed over: retried)
    ├── WebhookNotDelivered         internal_error       (a receiver refused or timed out: the delivery retries)
    └── ConfigError                 internal_error       (the operator's: a bad RENDER_* setting stops the
                                                          process; missing credentials fail the job once)

``transient`` is what the queue layer uses to decide whether to retry. Every exception that changes a retry
decision is in this tree.
"""

from __future__ import annotations

import enum
import errno
import re
import threading
import time
from typing import Any

#: Longest excerpt of a tenant's value that an error message may quote.
EXCERPT_CHARS = 60
# Webhook secrets, wherever they hide in a value (a dict repr, a URL, a string).
_SECRET = re.compile(r"whsec_[A-Za-z0-9+/=_-]*")


class ErrorCode(enum.StrEnum):
    """The error codes a failed render record may carry (DESIGN.md)."""

    INVALID_JOB = "invalid_job"
    SOURCE_NOT_FOUND = "source_not_found"
    SOURCE_UNREADABLE = "source_unreadable"
    SOURCE_NO_VIDEO = "source_no_video"
    SOURCE_NO_AUDIO = "source_no_audio"
    SOURCE_TOO_LARGE = "source_too_large"
    ENCODE_FAILED = "encode_failed"
    STORAGE_FAILED = "storage_failed"
    TIMEOUT = "timeout"
    DISK_FULL = "disk_full"
    INTERNAL_ERROR = "internal_error"


class RenderError(Exception):
    """Root of every error the worker raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        transient: bool | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if transient is not None:
            self.transient = transient
        # Extra diagnostic text (an ffmpeg stderr tail, say) kept apart from the
        # one-line message so that records and webhooks stay readable.
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"error_code": self.code.value, "error_message": self.message}


def redact(text: str) -> str:
    """``text`` with every webhook secret replaced by ``whsec_<redacted>``."""
    return _SECRET.sub("whsec_<redacted>", text)


def _bounded_repr(value: Any, depth: int = 0) -> str:
    """A repr that never walks or copies more than a few items of a tenant's value.

    Strings are cut from their end, never from the middle (as :mod:`reprlib`
    does), so a secret's ``whsec_`` prefix always stays in front of what is
    shown and :func:`redact` finds it.
    """
    if isinstance(value, str):
        return repr(value[: EXCERPT_CHARS * 2])
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**30 else "<a very large int>"
    if isinstance(value, list | tuple | dict):
        if depth >= 3:
            return "[…]" if not isinstance(value, dict) else "{…}"
        items = list(value.items())[:4] if isinstance(value, dict) else list(value[:4])
        if isinstance(value, dict):
            parts = [f"{_bounded_repr(k, depth + 1)}: {_bounded_repr(v, depth + 1)}" for k, v in items]
        else:
            parts = [_bounded_repr(v, depth + 1) for v in items]
        if len(value) > len(items):
            parts.append("…")
        open_, close = ("{", "}") if isinstance(value, dict) else ("[", "]")
        return open_ + ", ".join(parts) + close
    return f"<{type(value).__name__}>"


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A short, secret-free repr of a tenant's value, for error messages.

    Error messages end up in render records, webhooks and logs, so they may
    quote the input only in bounded, redacted form: a 10 MB string or a
    ``whsec_`` secret must never be stored as ``error_message``. Redaction
    runs before truncation, so a secret cut short is still hidden.
    """
    text = redact(_bounded_repr(value))
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


class InvalidJob(RenderError):
    code = ErrorCode.INVALID_JOB


class SourceError(RenderError):
    """The source cannot be rendered: the code says why (missing, unreadable...)."""

    code = ErrorCode.SOURCE_UNREADABLE


class EncodeError(RenderError):
    code = ErrorCode.ENCODE_FAILED


class StorageError(RenderError):
    code = ErrorCode.STORAGE_FAILED
    transient = True


class DiskFull(RenderError):
    """The worker's disk cannot hold the job (ENOSPC while downloading, rendering or writing, or too little free
    space to start): the host's fault, never the job's. Transient: the scratch is freed and the job is retried,
    by this worker once it has room or by another; ``disk_full`` is what the record says once retries run out.
    """

    code = ErrorCode.DISK_FULL
    transient = True


#: errno values that mean the disk (or the quota on it) is full.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full_in(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT ``OSError`` in ``exc`` or its causes and contexts (libraries wrap it), if there is one."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


class TransferStopped(RenderError):
    """A download stopped part-way because the render was stopped (cancel, shutdown, a stalled part).

    Not a :class:`StorageError`: nothing failed, so the storage layer does not retry it; the pipeline says
    why it stopped.
    """

    code = ErrorCode.INTERNAL_ERROR
    transient = True


class RenderTimeout(RenderError):
    code = ErrorCode.TIMEOUT


class Cancelled(RenderError):
    """The render was cancelled from outside (shutdown, time limit handled by caller)."""

    code = ErrorCode.INTERNAL_ERROR
    transient = True


def check_stopped(cancel: threading.Event | None, deadline: float | None) -> None:
    """:class:`Cancelled` once ``cancel`` is set, :class:`RenderTimeout` past ``deadline`` (monotonic): what
    long work in this process (a splice, the face search) checks between packets, as an ffmpeg run is watched.
    """
    if cancel is not None and cancel.is_set():
        raise Cancelled("the render was cancelled")
    if deadline is not None and time.monotonic() > deadline:
        raise RenderTimeout("the render ran past its time limit")


class CancelRequested(RenderError):
    """The render's record was cancelled (the API, ``render-cli cancel``): it stops for good and is never retried.

    Not a :class:`Cancelled`: that one means "this worker is going away", and the
    queue layer puts such a job back for another worker. Never leaves
    :func:`worker.pipeline.process`, which turns it into ``Outcome.CANCELLED``.
    """

    code = ErrorCode.INTERNAL_ERROR
    transient = False


class ConfigError(RenderError):
    """The deployment is misconfigured (a bad ``RENDER_*`` value, no credentials): never the job's fault.

    Permanent: retrying cannot fix it. At start-up it stops the process; met during a job, it fails the job
    once with ``internal_error`` instead of being retried as if storage were down.
    """

    code = ErrorCode.INTERNAL_ERROR


class IntakeBug(InvalidJob):
    """A validation step raised something other than :class:`InvalidJob`: still the input's fault, but a bug."""


class UnrecordableJob(InvalidJob):
    """A message so malformed it has no render id: it can only go to the dead-letter queue."""


class ChunkStalled(RenderError):
    """A chunk made no progress for its lease time: stopped and put back on the queue."""

    code = ErrorCode.ENCODE_FAILED
    transient = True


class LeaseBusy(RenderError):
    """Another live worker holds this render; come back later (a duplicate delivery)."""

    code = ErrorCode.INTERNAL_ERROR
    transient = True


class EventNotQueued(RenderError):
    """The record is final but its event could not be handed over: redeliver, and the event goes out then."""

    code = ErrorCode.INTERNAL_ERROR
    transient = True


class WebhookNotDelivered(RenderError):
    """A webhook attempt failed (the receiver's 5xx, a timeout, a refused address): the delivery is retried."""

    transient = True
