"""What a client reads: record fields salvaged from a bad message, and error messages that name the job's
source (never the worker's scratch file or a host path), secrets redacted and bounded."""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

from worker.errors import (
    InvalidJob,
    RenderError,
    redact,
)
from worker.jobs import Job, is_id
from worker.output import OUTPUT_FORMATS, OutputSpec
from worker.settings import Settings

#: Longest error_message stored in a record or sent in an event.
MAX_ERROR_MESSAGE = 300


def defaults_from_raw(raw: Any) -> dict[str, Any]:
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
LOCAL_SOURCE_NAMES = re.compile(r"\b(?:source|[0-9a-f]{32})\.[A-Za-z0-9]{1,8}\b")


def client_message(message: str, source_uri: str, work_dir: str) -> str:
    """``message`` as a client may read it: the job's source where it named the worker's copy, no host path."""
    root = os.path.realpath(work_dir or tempfile.gettempdir())
    for base in dict.fromkeys((work_dir, root, tempfile.gettempdir())):
        if base:
            message = re.sub(re.escape(base.rstrip("/")) + r"/[^\s:'\"]*", source_uri, message)
    return LOCAL_SOURCE_NAMES.sub(source_uri, message)


def name_the_source(err: RenderError, job: Job, settings: Settings) -> None:
    """Rewrite ``err``'s message (it goes to the record, the webhook and the client) with :func:`client_message`."""
    err.message = client_message(err.message, job.source_uri, settings.work_dir)


def bounded_message(message: str) -> str:
    """An error message as stored and sent: secrets redacted, at most :data:`MAX_ERROR_MESSAGE` characters.

    Every message is built with bounded excerpts already; this is the last
    line, where it is stored, for messages from code that forgot.
    """
    text = redact(message)
    return text if len(text) <= MAX_ERROR_MESSAGE else text[: MAX_ERROR_MESSAGE - 1] + "…"


def job_defaults(job: Job) -> dict[str, Any]:
    return {"asset_id": job.asset_id, "cut_id": job.cut_id, "output": job.output.to_dict()}
