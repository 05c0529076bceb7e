"""Chunked renders: cut a render's output timeline into chunks that encode apart and join by stream copy.

Pure: no I/O, no ffmpeg. :func:`plan_chunks` takes the snapped :class:`~worker.plan.Timeline` of a video
render and cuts its *output* frames into contiguous ranges; the graph builder (worker/graph.py,
``build_chunk_graph``) turns one chunk into an ffmpeg run that encodes only those frames, and
:func:`concat_list` / :func:`assembly_args` describe the stream-copy join of the encoded pieces with the
audio, which is rendered once, whole (worker/render/parts.py).

Why cut the output, not the source: every output frame belongs to exactly one chunk, so the joined file
is the whole render's frames in order by construction; a chunk only has to know which parts of which
pieces fall in its frame range.

Why runs: a chunk decodes only what it shows. Each run is one seek (ffmpeg's ``-ss`` before ``-i`` goes
to the last keyframe at or before the seek point, decodes from there and discards what comes before it)
followed by a contiguous decode through the run's spans. Spans separated by more than ``seek_gap`` units
get a run of their own, so the stretches the cut drops are never walked; a gap shorter than that costs
less to decode through than a new seek (which decodes from a keyframe anyway), and the number of runs is
bounded (each run is one more open of the source) by merging the smallest gaps first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from fractions import Fraction

from worker.plan import Timeline

#: A gap in the source this long (seconds) or longer between two spans of a chunk starts a new run (a new
#: seek), unless the source's keyframes are further apart: a seek decodes from the keyframe before it.
SEEK_GAP_S = 2.0
#: At most this many runs (opens of the source) per chunk; beyond, the smallest gaps are decoded through.
MAX_RUNS = 32
#: Seconds of the previous chunk's frames each chunk encodes first and drops. A one-pass ABR encoder starts
#: from a fixed guess: measured on 720p grain, x264 gives its first frames +10 dB PSNR and then pays the bits
#: back with 1.5 s at -3 dB, a pulse a viewer sees at every join. Encoded after a pre-roll, the chunk's
#: first frame (an IDR frame, forced there) meets a rate control that has settled, like the whole render's.
PREROLL_S = 2.0


@dataclasses.dataclass(frozen=True)
class Span:
    """Part of one timeline piece that a chunk shows: ``length`` source units from ``src``."""

    src: int  # first source grid unit (negative: black before the first frame)
    length: int
    out: int  # its first frame on the whole output timeline


@dataclasses.dataclass(frozen=True)
class Run:
    """One decode: seek to ``seek`` (a source grid unit), then decode forward through ``spans``."""

    seek: int  # the decoder starts at the last keyframe at or before this unit; <= 0: from the start
    spans: tuple[Span, ...]

    @property
    def end(self) -> int:
        """One past the last source unit the run shows."""
        return self.spans[-1].src + self.spans[-1].length


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Output frames ``[start, end)``, encoded after ``preroll`` frames of the chunk before (see :data:`PREROLL_S`)."""

    index: int
    start: int  # first output frame
    end: int  # one past the last output frame
    runs: tuple[Run, ...]  # decode from output frame start - preroll
    preroll: int = 0

    @property
    def frames(self) -> int:
        return self.end - self.start

    @property
    def encoded(self) -> int:
        """Frames the chunk's encoder sees: the pre-roll, then its own."""
        return self.preroll + self.frames

    @property
    def spans(self) -> tuple[Span, ...]:
        return tuple(s for r in self.runs for s in r.spans)


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    rate: Fraction  # output frames per second
    total: int  # output frames
    chunks: tuple[Chunk, ...]

    def seconds(self, frames: int) -> float:
        return float(frames / self.rate)


def chunk_count(total_frames: int, rate: Fraction, *, chunk_s: float, min_s: float) -> int:
    """How many chunks an output of ``total_frames`` gets: 1 up to ``min_s`` seconds, else about ``chunk_s`` each.

    ``round(duration / chunk_s)`` keeps every chunk within ``chunk_s / (2 K)`` of ``chunk_s`` (K chunks), and
    never fewer than 2 once the output is past ``min_s`` (which is why it is split at all).
    """
    duration = total_frames / rate
    if duration <= Fraction(min_s) or total_frames < 2:
        return 1
    return min(total_frames, max(2, math.floor(duration / Fraction(chunk_s) + Fraction(1, 2))))


def spans_in(timeline: Timeline, start: int, end: int) -> list[Span]:
    """The parts of the timeline's pieces that fall in output frames ``[start, end)``, in order."""
    spans = []
    for p in timeline.pieces:
        lo, hi = max(start, p.out), min(end, p.out + p.length)
        if lo < hi:
            spans.append(Span(src=p.src + (lo - p.out), length=hi - lo, out=lo))
    return spans


def runs_of(spans: Sequence[Span], *, seek_gap: int, margin: int, max_runs: int) -> tuple[Run, ...]:
    """Group spans into runs: a new run where the source skips ``seek_gap`` units or more; at most ``max_runs``."""
    gaps = [(b.src - (a.src + a.length), i) for i, (a, b) in enumerate(zip(spans, spans[1:], strict=False), 1)]
    splits = sorted(i for gap, i in gaps if gap >= seek_gap)
    if len(splits) + 1 > max_runs:
        # Keep the largest gaps as seeks (they save the most decoding); decode through the rest.
        biggest = sorted((g for g in gaps if g[0] >= seek_gap), reverse=True)[: max_runs - 1]
        splits = sorted(i for _, i in biggest)
    runs = []
    for a, b in zip([0, *splits], [*splits, len(spans)], strict=True):
        part = tuple(spans[a:b])
        # The margin lets a VFR source's first slot show the frame on screen before it (a drop repeats its
        # neighbour), exactly as in the whole render; a CFR source needs none.
        runs.append(Run(seek=part[0].src - margin, spans=part))
    return tuple(runs)


def plan_chunks(
    timeline: Timeline,
    *,
    count: int | None = None,
    chunk_s: float = 60.0,
    min_s: float = 60.0,
    seek_gap: int | None = None,
    margin: int = 0,
    max_runs: int = MAX_RUNS,
    preroll: int = 0,
) -> ChunkPlan:
    """Cut ``timeline``'s output frames into contiguous chunks.

    ``count`` asks for that many chunks (at most one per frame; ``render-cli render --chunks N``);
    otherwise the count comes from ``chunk_s`` and ``min_s`` (RENDER_CHUNK_S, RENDER_CHUNK_MIN_S). Chunk k
    covers output frames ``[round(k T / K), round((k+1) T / K))``: sizes differ by at most one frame.
    ``seek_gap`` (units; default :data:`SEEK_GAP_S`) and ``margin`` (units decoded before each run's first
    frame) shape the runs, see :class:`Run`. ``preroll`` (output frames) is what each chunk but the first
    encodes of the chunk before it and drops (:data:`PREROLL_S`).
    """
    total = timeline.total_units
    rate = timeline.rate
    if total <= 0:
        raise ValueError("the timeline has no frames")
    if count is None:
        count = chunk_count(total, rate, chunk_s=chunk_s, min_s=min_s)
    if count < 1:
        raise ValueError(f"chunk count must be at least 1, got {count}")
    count = min(count, total)
    if seek_gap is None:
        seek_gap = max(1, math.ceil(SEEK_GAP_S * rate))
    bounds = [math.floor(Fraction(k * total, count) + Fraction(1, 2)) for k in range(count + 1)]
    chunks = []
    for k in range(count):
        pre = min(preroll, bounds[k])
        spans = spans_in(timeline, bounds[k] - pre, bounds[k + 1])
        runs = runs_of(spans, seek_gap=seek_gap, margin=margin, max_runs=max_runs)
        chunks.append(Chunk(index=k, start=bounds[k], end=bounds[k + 1], runs=runs, preroll=pre))
    return ChunkPlan(rate=rate, total=total, chunks=tuple(chunks))


def piece_name(index: int, extension: str) -> str:
    """The file name of chunk ``index``'s encoded piece: fixed width, so names sort in chunk order."""
    return f"chunk-{index:05d}.{extension}"


def piece_durations_us(plan: ChunkPlan) -> list[int]:
    """Each piece's duration for the concat list, in microseconds, rounded so that they add up exactly.

    The concat demuxer places piece k at the sum of the durations before it. Left to itself it takes each
    piece's duration from the mp4, where the edit list states it in milliseconds: 5 ticks (0.3 ms) short
    for 997 frames at 30 fps, so every later frame would come early. Stated here as differences of
    ``round(boundary / rate)`` in microseconds, piece k starts within half a microsecond of its exact
    time, however many pieces there are, far inside the half a tick it would take to move a frame.
    """
    edges = [math.floor(Fraction(c.start) / plan.rate * 1_000_000 + Fraction(1, 2)) for c in plan.chunks]
    edges.append(math.floor(Fraction(plan.total) / plan.rate * 1_000_000 + Fraction(1, 2)))
    return [b - a for a, b in zip(edges, edges[1:], strict=False)]


def concat_list(names: Sequence[str], durations_us: Sequence[int] | None = None) -> str:
    """The concat demuxer's list of the worker's own pieces (``file`` and ``duration`` lines, nothing else).

    Only bare file names in the list's own directory are written, made by :func:`piece_name`: the concat
    demuxer runs with ``-safe 1`` (relative, portable names only) and the ``file`` protocol alone, so the
    list can name nothing but the pieces beside it. It is never used on anything a tenant sent.
    """
    if durations_us is not None and len(durations_us) != len(names):
        raise ValueError(f"{len(names)} pieces but {len(durations_us)} durations")
    lines = ["ffconcat version 1.0"]
    for i, name in enumerate(names):
        if not name or "/" in name or "'" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"not a piece name: {name!r}")
        lines.append(f"file '{name}'")
        if durations_us is not None:
            us = int(durations_us[i])
            lines.append(f"duration {us // 1_000_000}.{us % 1_000_000:06d}")
    return "\n".join(lines) + "\n"


def assembly_args(
    list_file: str,
    audio_file: str,
    output_file: str,
    *,
    muxer: str,
    muxer_args: Sequence[str] = (),
) -> list[str]:
    """The ffmpeg arguments (without the binary) that join the pieces and the audio by stream copy.

    The inputs are the worker's own intermediates, never a tenant's source, and are opened as tightly as
    the source is: the concat list with only the concat and mov demuxers and the ``file`` protocol (the
    demuxer hands its whitelists down to every piece it opens) and ``-safe 1``; the audio with only mov.
    Nothing is decoded or encoded: ``-c copy``.
    """
    args = ["-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-nostats", "-progress", "pipe:1"]
    args += ["-protocol_whitelist", "file", "-format_whitelist", "concat,mov", "-f", "concat", "-safe", "1"]
    args += ["-i", list_file]
    args += ["-protocol_whitelist", "file", "-format_whitelist", "mov", "-f", "mov", "-i", audio_file]
    args += ["-map", "0:v:0", "-map", "1:a:0", "-c", "copy"]
    args += ["-map_metadata", "-1", "-map_chapters", "-1"]
    args += ["-f", muxer, *muxer_args, output_file]
    return args
