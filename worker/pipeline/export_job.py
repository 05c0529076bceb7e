"""An editor-export job: the cut as a timeline document, stored and completed like a render's output."""

from __future__ import annotations

import time
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from worker.errors import LeaseBusy
from worker.exports.file import export_file
from worker.jobs import Job
from worker.output import content_type_of, extension_of
from worker.pipeline.deps import Deps
from worker.pipeline.guards import Lease, Watch
from worker.pipeline.outputs import job_output_key
from worker.pipeline.sources import fetch_source
from worker.render import RenderResult
from worker.scratch import Scratch


def run_export(job: Job, deps: Deps, lease: Lease, watch: Watch, scratch: Scratch) -> RenderResult:
    """An editor export (DESIGN, "Editor exports"): the cut as a timeline document, stored like an output.

    The source is fetched and probed, and the timeline planned exactly as a render of the same job would
    plan it (:func:`worker.exports.file.export_file`); no ffmpeg runs. The document is stored under the render's
    key with its own extension and content type, and the record completes as for any render.
    """
    settings = deps.settings
    fmt = job.output.format
    ext, content_type = extension_of(fmt), content_type_of(fmt)
    src, _ = fetch_source(job, deps, watch, scratch.path)
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
    deps.storage.put(out, job_output_key(settings, job), content_type)
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
