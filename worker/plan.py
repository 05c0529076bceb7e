"""Cut plans: validate the kept segments and snap them to an exact timeline.

Pure: no I/O, no ffmpeg. The output is a list of :class:`Piece` in integer
units (frames for video, samples for audio) that the graph builder turns into
``trim``/``atrim`` ranges.

Why cumulative placement: snapping each segment's length on its own lets the
rounding error of every segment add up, so after hundreds of cuts the picture
drifts against the plan. Instead every boundary is placed on the *output*
timeline at ``round(planned_cumulative_time * rate)``, so no output frame is
ever more than half a frame away from where the plan puts it, whatever the
number of segments. Audio boundaries are derived from the same frame
boundaries (``round(frames * sample_rate / fps)``), so audio and video lengths
agree per segment to one sample and cannot drift apart either.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from worker.errors import InvalidJob

# An end this far past the end of the source is clamped; further is a plan for
# some other media and is rejected.
END_TOLERANCE_S = 1.0
# Length of the audio fades at real cuts. Long enough to remove the click of a
# waveform cut mid-cycle, short enough to be inaudible as a fade.
FADE_S = 0.005


@dataclasses.dataclass(frozen=True)
class Segment:
    start: float
    end: float


@dataclasses.dataclass(frozen=True)
class Piece:
    """One kept span after snapping, in grid units and audio samples.

    ``src`` and ``out`` are positions in grid units (frames, or samples when the
    source has no video), on the source's render timeline and on the output
    timeline. ``a_src``/``a_len`` are the audio samples taken for the piece.
    """

    src: int
    length: int
    out: int
    a_src: int
    a_len: int
    a_out: int
    fade_in: bool
    fade_out: bool


@dataclasses.dataclass(frozen=True)
class Timeline:
    rate: Fraction  # grid units per second (fps, or the sample rate for audio-only)
    sample_rate: int | None  # of the audio, when there is audio to cut
    pieces: tuple[Piece, ...]
    fade_samples: int
    first_unit: int = 0  # grid position of the source's first frame (or sample)

    @property
    def total_units(self) -> int:
        return sum(p.length for p in self.pieces)

    @property
    def total_samples(self) -> int:
        return sum(p.a_len for p in self.pieces)

    @property
    def duration(self) -> float:
        return float(self.total_units / self.rate)


def parse_segments(raw: Any, *, max_segments: int = 10_000) -> list[Segment] | None:
    """Validate the ``segments`` field of a job or plan file.

    ``None`` means the full source. Raises :class:`InvalidJob` naming the bad
    segment and value.
    """
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidJob(f"segments must be a list or null, got {type(raw).__name__}")
    if not raw:
        raise InvalidJob("segments is an empty list: nothing would be kept (use null for the full source)")
    if len(raw) > max_segments:
        raise InvalidJob(f"segments has {len(raw)} entries, more than the limit of {max_segments}")
    out: list[Segment] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) - {"start", "end"} or not {"start", "end"} <= set(item):
            raise InvalidJob(f"segments[{i}] must be an object with numeric start and end, got {item!r}")
        vals = []
        for key in ("start", "end"):
            v = item[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise InvalidJob(f"segments[{i}].{key} must be a finite number, got {v!r}")
            vals.append(float(v))
        start, end = vals
        if start < 0:
            raise InvalidJob(f"segments[{i}].start must be >= 0, got {start}")
        if not start < end:
            raise InvalidJob(f"segments[{i}] must have start < end, got start={start} end={end}")
        if out and start < out[-1].end:
            prev = out[-1]
            what = "overlaps" if start >= prev.start else "is not sorted after"
            raise InvalidJob(
                f"segments[{i}] (start={start}) {what} segments[{i - 1}] (start={prev.start}, end={prev.end})"
            )
        out.append(Segment(start, end))
    return out


def clamp_to_source(segments: Sequence[Segment], duration: float) -> list[Segment]:
    """Clamp ends that run a little past the source; reject segments past the end."""
    out = []
    for i, seg in enumerate(segments):
        if seg.start >= duration:
            raise InvalidJob(f"segments[{i}].start={seg.start} is past the end of the source ({duration:.3f} s)")
        if seg.end > duration + END_TOLERANCE_S:
            raise InvalidJob(
                f"segments[{i}].end={seg.end} is more than {END_TOLERANCE_S:g} s past the end "
                f"of the source ({duration:.3f} s)"
            )
        out.append(Segment(seg.start, min(seg.end, duration)))
    return out


def _round(x: Fraction) -> int:
    """Round half up, exactly (Python's round() is half-to-even on Fractions)."""
    return math.floor(x + Fraction(1, 2))


def build_timeline(
    segments: Sequence[Segment] | None,
    *,
    rate: Fraction,
    first_unit: int,
    end_unit: int,
    sample_rate: int | None,
) -> Timeline:
    """Snap ``segments`` (already clamped) to the grid ``rate``.

    ``first_unit``/``end_unit`` bound the grid positions that exist in the
    source: ``[first_unit, end_unit)``. With no segments the whole range is kept.
    """
    if end_unit <= first_unit:
        raise InvalidJob("the source has no frames or samples to render")
    if segments is None:
        segments = [Segment(float(first_unit / rate), float(end_unit / rate))]

    # Planned time is accumulated exactly (as Fractions of the float inputs), so
    # the boundary of segment 1000 is as exact as the boundary of segment 1.
    spans: list[tuple[int, int]] = []  # (src start unit, length in units)
    planned = Fraction(0)
    out_prev = 0
    for seg in segments:
        start = Fraction(seg.start)
        planned += Fraction(seg.end) - start
        out_next = _round(planned * rate)
        src = min(max(_round(start * rate), first_unit), end_unit)
        if spans and src < spans[-1][0] + spans[-1][1]:
            # The previous piece took one frame more than its span (its end was
            # rounded up on the output timeline): start after it, so no source
            # frame is shown twice. This never moves a frame further from the
            # plan than the previous piece already was.
            src = min(spans[-1][0] + spans[-1][1], end_unit)
        length = min(out_next - out_prev, end_unit - src)
        if length > 0:
            spans.append((src, length))
            out_prev += length
        # A segment shorter than half a frame keeps nothing; its time still
        # counts in ``planned`` so later boundaries stay where the plan puts them.
    if not spans:
        raise InvalidJob("every segment is shorter than one frame: nothing would be kept")

    # Segments that touch on the source are one continuous span: no cut, no fade.
    merged: list[list[int]] = []
    for src, length in spans:
        if merged and merged[-1][0] + merged[-1][1] == src:
            merged[-1][1] += length
        else:
            merged.append([src, length])

    fade = 0
    pieces: list[Piece] = []
    out = 0
    for i, (src, length) in enumerate(merged):
        if sample_rate is None:
            a_src = a_len = a_out = 0
        elif Fraction(sample_rate) == rate:
            a_src, a_len, a_out = src, length, out
        else:
            sr = Fraction(sample_rate)
            a_out = _round(out * sr / rate)
            a_len = _round((out + length) * sr / rate) - a_out
            a_src = _round(src * sr / rate)
        pieces.append(
            Piece(
                src=src,
                length=length,
                out=out,
                a_src=a_src,
                a_len=a_len,
                a_out=a_out,
                # A cut is real where the source does not continue: between
                # pieces, and at the output's edges when the source was trimmed.
                fade_in=i > 0 or src > first_unit,
                fade_out=i < len(merged) - 1 or src + length < end_unit,
            )
        )
        out += length
    if sample_rate is not None:
        fade = max(1, round(FADE_S * sample_rate))
    return Timeline(rate=rate, sample_rate=sample_rate, pieces=tuple(pieces), fade_samples=fade, first_unit=first_unit)
