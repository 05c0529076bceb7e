"""The job's source on local disk: size and version checked, room on the disk checked, downloaded (or taken
from this process's cache for the parts of a chunked render), and freed when the render is done with it."""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from worker.errors import (
    DiskFull,
    ErrorCode,
    SourceError,
    TransferStopped,
)
from worker.jobs import Job
from worker.pipeline.deps import Deps
from worker.pipeline.guards import Watch
from worker.storage.base import fetch_deadline_s

log = logging.getLogger(__name__)


def ext_of(uri: str) -> str:
    suffix = PurePosixPath(urlsplit(uri).path).suffix.lower()
    # The extension only names the scratch file; the probe decides what it is.
    return suffix if suffix[1:].isalnum() and len(suffix) <= 6 else ".bin"


#: Free space a render needs beyond its source and output (graph files, the muxer's index, other small files).
DISK_HEADROOM_BYTES = 1 << 20


def fetch_source(
    job: Job,
    deps: Deps,
    watch: Watch,
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
        src = keep.enter_context(cache.use(uri, stat.version, ext_of(uri), download))
    elif cache is not None:
        cache.drop_idle()
    if src is None:  # no cache, or its one entry is in use by another source
        src = into / f"source{ext_of(uri)}"
        download(src)
    watch.raise_if_stopped()
    return src, stat.version


def drop_source(job: Job, deps: Deps, scratch: Path) -> None:
    """Free the disk a render's source took, on this worker, once its last part here is done with it."""
    (scratch / f"source{ext_of(job.source_uri)}").unlink(missing_ok=True)
    forget_source(deps, job)


def forget_source(deps: Deps, job: Job) -> None:
    """The render is over on this process (done, failed, cancelled): its cached source goes, if idle."""
    if deps.sources is not None:
        deps.sources.forget(job.source_uri)
