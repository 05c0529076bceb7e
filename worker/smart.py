"""Smart render, planned: which of a cut's frames are copied from the source packet for packet, and which are
re-encoded (``output.smart``, on by default). Pure: no I/O, no ffmpeg.

**When** (:func:`why_not`): the output would carry the source's video unchanged: H.264 in, an x264 format out,
8-bit 4:2:0, CFR, no rotation, no scaling, crop or tone mapping, and the source's bitrate within what the
render would spend (Auto caps the target to the source, so a tier at or above the source qualifies). The
source's GOP index (worker/gops.py) then says where copies can start.

**How** (:func:`plan_smart`): inside each kept piece, the frames from its first closed-GOP start to its last
GOP boundary are copied; the frames from the cut to that start, and from that boundary to the cut's end, are
encoded. Output frames that are not copied are grouped into maximal contiguous ranges, and each range is one
encode, a :class:`~worker.chunks.Chunk` with no pre-roll (the chunked renderer's own unit: its runs, graph,
picture chain and forced IDR start), so the tail of one piece and the head of the next are one encode.
Every output frame is in exactly one segment by construction; the copied frames are the source's own, so
"the source frame nearest the plan's time" holds for them exactly as for encoded ones.

**Whether** (the cost model, :func:`plan_smart` returning None): each encode is one more ffmpeg, a seek and a
decode from the keyframe before it, so a render that would copy under :data:`MIN_COPIED_SHARE` of its frames
is re-encoded whole instead: at that share the encodes' overheads eat what the copies save. A piece too
short to hold a whole GOP is simply encoded (it has no copy range).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

from worker.chunks import MAX_RUNS, Chunk, runs_of, spans_in
from worker.encoding import EncodeSettings
from worker.gops import GopIndex
from worker.output import OutputSpec
from worker.plan import Piece, Timeline
from worker.presets import Preset
from worker.probe import SourceInfo

#: A render copies at least this share of its frames, or it is re-encoded whole.
MIN_COPIED_SHARE = 0.3
#: The video encoders whose output a copied H.264 stream can continue (the CPU preset's x264).
MATCHING_ENCODERS = ("libx264",)
#: Encoded segments one ffmpeg encodes in a row (a batch); more make more batches. Each segment is about one or
#: two runs of the source (a seek each), and a chunk's runs are capped at worker.chunks.MAX_RUNS.
SEGMENTS_PER_BATCH = 12


@dataclasses.dataclass(frozen=True)
class Copy:
    """Output frames ``[start, end)`` are the source's frames from ``src`` on, copied packet for packet."""

    start: int
    end: int
    src: int  # the source frame (grid unit) shown at output frame ``start``: a closed GOP's IDR frame

    @property
    def frames(self) -> int:
        return self.end - self.start


Segment = Copy | Chunk


@dataclasses.dataclass(frozen=True)
class Batch:
    """Encoded segments one ffmpeg encodes in a row, as one chunk: its frames are theirs, in output order, and
    each segment's first frame is forced to an IDR frame (``keys``), in a closed GOP, so each is cut out of
    the batch's file by its packets alone (worker/render/splice.py)."""

    index: int
    chunk: Chunk  # frames [0, n): the members' spans, one after the other
    members: tuple[Chunk, ...]

    @property
    def keys(self) -> tuple[int, ...]:
        """The batch frame each member starts at."""
        starts, at = [], 0
        for m in self.members:
            starts.append(at)
            at += m.frames
        return tuple(starts)


@dataclasses.dataclass(frozen=True)
class SmartPlan:
    rate: Fraction
    total: int  # output frames
    segments: tuple[Segment, ...]  # in output order, covering [0, total) once
    seek_gap: int = 0  # the runs' seek gap (source frames; worker/chunks.py)

    @property
    def copies(self) -> tuple[Copy, ...]:
        return tuple(s for s in self.segments if isinstance(s, Copy))

    @property
    def encodes(self) -> tuple[Chunk, ...]:
        return tuple(s for s in self.segments if isinstance(s, Chunk))

    @property
    def copied(self) -> int:
        return sum(c.frames for c in self.copies)

    @property
    def encoded(self) -> int:
        return self.total - self.copied

    def batches(self, parallel: int) -> tuple[Batch, ...]:
        """The encoded segments in at least ``parallel`` batches (where there are that many segments) of
        contiguous segments with about equal frames; at most :data:`SEGMENTS_PER_BATCH` segments a batch.

        One ffmpeg a batch rather than one a segment: a process start, an encoder start and a rate control
        that begins from nothing cost each segment (a few frames around a cut) as much as its frames do.
        """
        encodes = self.encodes
        if not encodes:
            return ()
        count = min(len(encodes), max(parallel, -(-len(encodes) // SEGMENTS_PER_BATCH)))
        total = sum(c.frames for c in encodes)
        groups: list[list[Chunk]] = [[] for _ in range(count)]
        done = 0
        for c in encodes:
            # The segment goes to the batch its middle frame falls in, by frames: batches of about equal work.
            groups[min(count - 1, (2 * done + c.frames) * count // (2 * total))].append(c)
            done += c.frames
        batches: list[Batch] = []
        for members in (g for g in groups if g):
            spans, at = [], 0
            for m in members:
                for s in m.spans:
                    spans.append(dataclasses.replace(s, out=at))
                    at += s.length
            runs = runs_of(spans, seek_gap=self.seek_gap, margin=0, max_runs=MAX_RUNS)
            chunk = Chunk(index=len(batches), start=0, end=at, runs=runs)
            batches.append(Batch(len(batches), chunk, tuple(members)))
        return tuple(batches)


def why_not(info: SourceInfo, spec: OutputSpec, enc: EncodeSettings, preset: Preset) -> str | None:
    """Why a render of ``info`` into ``spec`` can't copy the source's video (None: it can, where GOPs allow)."""
    video = info.video
    if not spec.smart:
        return "output.smart is false"
    if not preset.has_video or video is None:
        return "the output has no video"
    if preset.video_codec not in MATCHING_ENCODERS:
        return f"the {preset.format} preset encodes with {preset.video_codec}, which a copied H.264 cannot continue"
    if video.codec != "h264":
        return f"the source's video is {video.codec}, not H.264"
    if video.pix_fmt != "yuv420p":
        return f"the source's pixels are {video.pix_fmt}, not 8-bit 4:2:0 (yuv420p)"
    if video.is_vfr:
        return "the source's frame rate is variable"
    if video.rotation:
        return f"the source is rotated {video.rotation} degrees (the output is drawn upright)"
    if video.is_hdr:
        return "the source is HDR (the output is tone-mapped)"
    if enc.crop is not None or enc.crop_odd or (enc.width, enc.height) != (video.width, video.height):
        return f"the output is {enc.width}x{enc.height}, the source {video.width}x{video.height}"
    src_bps = video.bit_rate or info.bit_rate
    if not src_bps or enc.video_bps is None or src_bps > enc.video_bps * 1.05:
        return f"the source's bitrate ({src_bps} b/s) is over the render's ({enc.video_bps} b/s)"
    return None


def plan_smart(
    timeline: Timeline, index: GopIndex, *, seek_gap: int, min_share: float = MIN_COPIED_SHARE
) -> SmartPlan | None:
    """The copies and encodes of ``timeline`` over a source with GOP ``index``; None where too little copies."""
    if index.problem is not None or not index.starts:
        return None
    bounds = sorted({*index.starts, index.frames})  # where a copy may end: a closed GOP's start, or the end
    copies: list[Copy] = []
    for piece in timeline.pieces:
        lo, hi = piece.src, piece.src + piece.length
        if lo < 0 or hi > index.frames:
            continue  # black before the first frame, or the last frame held: drawn, not copied
        first = next((s for s in index.starts if s >= lo), None)
        last = next((b for b in reversed(bounds) if b <= hi), None)
        if first is not None and last is not None and first < last:
            copies.append(Copy(piece.out + first - lo, piece.out + last - lo, first))
    total = timeline.total_units
    copied = sum(c.frames for c in copies)
    if total <= 0 or copied < min_share * total:
        return None
    segments: list[Segment] = []
    at = 0
    for copy in [*copies, None]:
        end = copy.start if copy is not None else total
        if end > at:
            spans = spans_in(timeline, at, end)
            runs = runs_of(spans, seek_gap=seek_gap, margin=0, max_runs=MAX_RUNS)
            segments.append(Chunk(index=len(segments), start=at, end=end, runs=runs))
        if copy is not None:
            segments.append(copy)
            at = copy.end
    return SmartPlan(rate=timeline.rate, total=total, segments=tuple(segments), seek_gap=seek_gap)


def window(timeline: Timeline, start: int, end: int) -> Timeline:
    """Output frames ``[start, end)`` of ``timeline`` as a timeline of their own, numbered from 0: what a chunk of
    a chunked smart render plans its copies over (picture only: the audio is rendered whole)."""
    pieces = tuple(Piece(s.src, s.length, s.out - start, 0, 0, 0, False, False) for s in spans_in(timeline, start, end))
    return dataclasses.replace(timeline, pieces=pieces, sample_rate=None)


def plan_chunk(timeline: Timeline, chunk: Chunk, index: GopIndex, *, seek_gap: int) -> SmartPlan:
    """The copies and encodes of one chunk of a chunked smart render: its own frames (the pre-roll a chunk's
    encoder would see first is not needed: the encodes match the copies), whatever share is copied (every
    piece of such a render is made the same way, so its track splices with the others)."""
    found = plan_smart(window(timeline, chunk.start, chunk.end), index, seek_gap=seek_gap, min_share=0.0)
    assert found is not None, "a chunk of a smart render has frames and a source with closed GOPs"
    return found


def join_args(
    video_file: str, audio_file: str, output_file: str, *, muxer: str, muxer_args: tuple[str, ...] | list[str] = ()
) -> list[str]:
    """The ffmpeg arguments (without the binary) that put the spliced video track and the audio into the output
    by stream copy. Both inputs are the worker's own files, opened as tightly as a chunked render's pieces."""
    args = ["-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-nostats", "-progress", "pipe:1"]
    for name in (video_file, audio_file):
        args += ["-protocol_whitelist", "file", "-format_whitelist", "mov", "-f", "mov", "-i", name]
    args += ["-map", "0:v:0", "-map", "1:a:0", "-c", "copy", "-map_metadata", "-1", "-map_chapters", "-1"]
    return [*args, "-f", muxer, *muxer_args, output_file]


__all__ = [
    "Batch",
    "Copy",
    "plan_chunk",
    "window",
    "MIN_COPIED_SHARE",
    "Segment",
    "SmartPlan",
    "join_args",
    "plan_smart",
    "why_not",
]
