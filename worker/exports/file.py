"""An export run on a local file: probe, plan through the planner as a render would, write the document.

The only part of the exports that touches files; never runs ffmpeg.
"""

from __future__ import annotations

import dataclasses
import os
import time
from fractions import Fraction
from pathlib import Path

from worker import planner
from worker.allowlists import input_options
from worker.errors import InvalidJob
from worker.exports import FORMATS, export
from worker.exports.cut import build_cut, media_format_for
from worker.output import OutputSpec
from worker.plan import Segment
from worker.probe import probe
from worker.settings import Settings


def read_start_timecode(path: str, max_pixels: int) -> str | None:
    """The start timecode a source declares (a mov's ``tmcd`` track, or the container's tag), if any.

    Opened with the probe's allowlists; only tags are read, nothing is decoded.
    """
    import av

    try:
        with av.open(path, options=input_options(max_pixels), timeout=(10.0, 10.0)) as container:
            for stream in container.streams:
                tc = stream.metadata.get("timecode")
                if tc:
                    return str(tc)[:32]
            tc = container.metadata.get("timecode")
            return str(tc)[:32] if tc else None
    except av.error.FFmpegError:
        return None  # the probe, which ran first, decides what is unreadable


@dataclasses.dataclass(frozen=True)
class ExportResult:
    path: str
    format: str
    content_type: str
    duration_s: float
    source_duration_s: float
    size_bytes: int
    pieces: int
    rate: str  # the document's edit rate, "30000/1001"
    wall_s: float

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def export_file(
    source: str,
    segments: list[Segment] | None,
    fmt: str,
    output: str,
    *,
    settings: Settings | None = None,
    source_name: str | None = None,
    source_url: str | None = None,
) -> ExportResult:
    """Probe ``source``, plan the cut exactly as a render would, and write the ``fmt`` document to ``output``.

    Never runs ffmpeg. The document appears at ``output`` whole or not at all.
    """
    started = time.monotonic()
    kind = FORMATS.get(fmt)
    if kind is None:
        raise InvalidJob(f"not an export format: {fmt}")
    limits = planner.Limits.from_settings(settings or Settings())
    info = probe(source, max_pixels=limits.max_source_pixels)
    plan = planner.plan_render(source, segments, OutputSpec(format=media_format_for(info)), limits=limits, info=info)
    out = Path(output)
    cut = build_cut(
        info,
        plan.timeline,
        source_name=source_name or Path(source).name,
        source_url=source_url or Path(source).resolve().as_uri(),
        start_timecode=read_start_timecode(str(source), limits.max_source_pixels) if info.video else None,
    )
    data = export(cut, fmt).encode("utf-8")
    doc_rate = kind.rate_of(cut)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return ExportResult(
        path=str(out),
        format=fmt,
        content_type=kind.content_type,
        duration_s=float(Fraction(cut.total) / cut.rate),
        source_duration_s=info.duration,
        size_bytes=len(data),
        pieces=len(cut.clips),
        rate=f"{doc_rate.numerator}/{doc_rate.denominator}",
        wall_s=time.monotonic() - started,
    )
