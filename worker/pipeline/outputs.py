"""A job's output: its key, the fingerprint that lets a retry or a redelivery reuse it (in the scratch
directory, or already in storage), the name a download is saved under, and its signed URL."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from worker.jobs import Job
from worker.output import extension_of
from worker.pipeline.deps import Deps
from worker.render import RenderResult
from worker.settings import Settings
from worker.storage.base import Storage, output_key

#: Whether a retry reuses the output an earlier attempt rendered (a switch for the test that shows it matters).
REUSE_OUTPUT = True
RENDERED_FILE = "rendered.json"


def fingerprint(job: Job) -> str:
    """What the rendered output depends on: a kept output is reused only for the very same job."""
    segments = None if job.segments is None else [(s.start, s.end) for s in job.segments]
    text = json.dumps([job.source_uri, segments, job.output.to_dict()], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# Object metadata of a stored output (S3 lower-cases user metadata names): the job it is the output of, and its
# result, so that a delivery after one that stored it but could not complete the record completes from it.
META_FINGERPRINT = "render-fingerprint"
META_RESULT = "render-result"


def result_metadata(fingerprint: str, result: RenderResult) -> dict[str, str]:
    fields = {k: v for k, v in result.to_dict().items() if k not in ("path", "notes")}
    return {META_FINGERPRINT: fingerprint, META_RESULT: json.dumps(fields, separators=(",", ":"))}


def stored_result(deps: Deps, key: str, fingerprint: str, out: Path) -> RenderResult | None:
    """The result of this very job's output, if an earlier delivery stored it at ``key`` already."""
    meta = deps.storage.output_metadata(key)
    if not meta or meta.get(META_FINGERPRINT) != fingerprint:
        return None
    try:
        return RenderResult(**{**json.loads(meta[META_RESULT]), "path": str(out)})
    except (KeyError, ValueError, TypeError):
        return None


def rendered(scratch: Path, out: Path, fingerprint: str) -> RenderResult | None:
    """The result of an earlier attempt that rendered this job's output here, if the output is intact."""
    try:
        saved = json.loads((scratch / RENDERED_FILE).read_text())
        if saved["fingerprint"] != fingerprint:
            return None
        result = RenderResult(**{**saved["result"], "path": str(out)})
        if out.stat().st_size != result.size_bytes:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return result


def job_output_key(settings: Settings, job: Job) -> str:
    return output_key(settings.output_prefix, job.render_id, extension_of(job.output.format))


def download_name(job: Job) -> str:
    """The name a download of the output is saved under: the source's, ``<name>.cut.<ext>`` for a cut and
    ``<name>.full.<ext>`` for the whole source (the stored object keeps the render id's name)."""
    stem = PurePosixPath(unquote(urlsplit(job.source_uri).path)).stem or "render"
    return f"{stem}.{'full' if job.segments is None else 'cut'}.{extension_of(job.output.format)}"


def download_url(storage: Storage, record: Mapping[str, Any], expiry_s: int) -> str | None:
    """A freshly minted URL for a completed record (never stored: it expires)."""
    key = record.get("output_key")
    if record.get("state") != "completed" or not key:
        return None
    return storage.presign(key, record.get("download_name") or PurePosixPath(key).name, expiry_s)
