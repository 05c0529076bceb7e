"""One exception root for the whole worker, and the error codes of the contract.

Every failure that leaves the core is a :class:`RenderError` carrying one of the
:class:`ErrorCode` values from ``shared/DESIGN.md``. Library errors (PyAV,
botocore, redis, subprocess) are translated where they are caught, with
``raise ... from exc``, so callers never need to know which library failed.

Tree::

    RenderError                     code, message, transient
    ├── InvalidJob                  invalid_job          (permanent)
    ├── SourceError                 source_* codes       (permanent)
    ├── EncodeError                 encode_failed        (permanent unless told)
    │   └── NvencUnavailable        encode_failed        (transient: falls back to CPU)
    ├── StorageError                storage_failed       (transient until retries run out)
    ├── RenderTimeout               timeout              (permanent)
    └── Cancelled                   internal_error       (the job was asked to stop)

``transient`` is what the queue layer uses to decide whether to retry.
"""

from __future__ import annotations

import enum


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


class InvalidJob(RenderError):
    code = ErrorCode.INVALID_JOB


class SourceError(RenderError):
    """The source cannot be rendered: the code says why (missing, unreadable...)."""

    code = ErrorCode.SOURCE_UNREADABLE


class EncodeError(RenderError):
    code = ErrorCode.ENCODE_FAILED


class NvencUnavailable(EncodeError):
    """NVENC could not open a session or failed mid-encode; the CPU preset takes over."""

    transient = True


class StorageError(RenderError):
    code = ErrorCode.STORAGE_FAILED
    transient = True


class RenderTimeout(RenderError):
    code = ErrorCode.TIMEOUT


class Cancelled(RenderError):
    """The render was cancelled from outside (shutdown, time limit handled by caller)."""

    code = ErrorCode.INTERNAL_ERROR
    transient = True
