"""The cut as every editor export sees it: :class:`Cut` (the source, its grid, the kept clips), built from a
probed source and the planner's :class:`~worker.plan.Timeline`.

Units. A source with video is exported on its own frame grid: frame 0 is the source's first frame (the
grid the renderer anchors on), so a clip's source in point is ``piece.src`` frames into the media and its
record position is ``piece.out``. An audio-only source is exported on its sample grid (the rate of every
time in the document is the sample rate), which is the grid an audio-only render is cut on; a frame grid
could not hold its cut points exactly.

Start timecode. A camera's mov carries the timecode of its first frame (a ``tmcd`` track); editors place
source in points on that timecode, so it is added to every source time in xmeml, FCPXML and EDL (and to
the OTIO media reference's available range, which is where OTIO keeps it).

Known limit: a piece that runs outside the video's own frames (audio before the first frame, or after the
last) is exported as it is planned, so its video clip names frames the media does not have; the render
shows black (before) or holds the last frame (after) there, an editor shows the media as missing.
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction
from pathlib import PurePosixPath

from worker.exports.timecode import drop_frames, parse_timecode, timecode_base
from worker.plan import Timeline
from worker.probe import SourceInfo

#: CMX 3600 reel names are at most 8 characters (FCPXML carries the same reel).
REEL_CHARS = 8


@dataclasses.dataclass(frozen=True)
class Clip:
    """One kept piece: ``src`` units into the source, ``length`` units long, at ``record`` on the timeline."""

    src: int
    length: int
    record: int


@dataclasses.dataclass(frozen=True)
class Cut:
    """What every writer needs, in units of ``rate`` (frames, or samples for an audio-only source)."""

    title: str
    source_name: str  # the file name, as editors show it
    source_url: str  # where the media is: a file:// URL, or the job's s3:// URI
    rate: Fraction
    video: bool
    width: int | None
    height: int | None
    channels: int  # audio channels (0: no audio)
    sample_rate: int | None
    source_units: int  # the source's length on the grid
    start_tc: int  # frames of the source's start timecode (0 without one; always 0 on the sample grid)
    drop_frame: bool
    clips: tuple[Clip, ...]

    @property
    def total(self) -> int:
        return sum(c.length for c in self.clips)


def build_cut(
    info: SourceInfo,
    timeline: Timeline,
    *,
    source_name: str,
    source_url: str,
    start_timecode: str | None = None,
    title: str | None = None,
) -> Cut:
    """The export of ``timeline`` (built for ``info`` by :func:`worker.planner.plan_render`)."""
    video = info.video
    audio = info.audio
    if video is not None and timeline.rate == video.rate:
        rate = video.rate
        units = max(1, round(Fraction(video.duration) * rate))
        start_tc = parse_timecode(start_timecode, rate) or 0
        drop = bool(drop_frames(rate))
        timecode_base(rate)  # refuse a rate editors have no timecode for, before writing anything
    else:
        assert audio is not None and timeline.sample_rate is not None
        rate = Fraction(timeline.sample_rate)
        units = max(1, round(Fraction(audio.duration) * rate))
        start_tc, drop = 0, False
    clips = tuple(Clip(src=p.src, length=p.length, record=p.out) for p in timeline.pieces)
    stem = PurePosixPath(source_name).stem or "source"
    return Cut(
        title=title or f"{stem} (cut)",
        source_name=source_name,
        source_url=source_url,
        rate=rate,
        video=video is not None and rate == video.rate,
        width=video.display_width if video is not None else None,
        height=video.display_height if video is not None else None,
        channels=audio.channels if audio is not None else 0,
        sample_rate=audio.sample_rate if audio is not None else None,
        source_units=units,
        start_tc=start_tc,
        drop_frame=drop,
        clips=clips,
    )


def reel_name(source_name: str) -> str:
    """The source's reel: its file name without extension, letters and digits only, at most 8 characters."""
    reel = re.sub(r"[^A-Za-z0-9]", "", PurePosixPath(source_name).stem).upper()[:REEL_CHARS]
    return reel or "AX"


def media_format_for(info: SourceInfo) -> str:
    """The render an export stands for: mp4 when the source has video (cut on frames), else m4a (samples)."""
    return "mp4" if info.video is not None else "m4a"
