"""Cut plans: validate the kept segments and snap them to an exact timeline.

Pure: no I/O, no ffmpeg. The output is a list of :class:`Piece` in integer
units (frames for video, samples for audio) that the graph builder turns into
``trim``/``atrim`` ranges.

Why cumulative placement: snapping each segment's length on its own lets the
rounding error of every segment add up, so after hundreds of cuts the picture
drifts against the plan. Instead every boundary is placed on the *output*
timeline at ``round(planned_cumulative_time * rate)``, and inside a piece output
frame k shows the source frame nearest the plan's source time for k (one
rounding per piece, see :func:`build_timeline`), so no output frame is ever more
than half a frame away from where the plan puts it, whatever the number of
segments. Audio boundaries are derived from the same output frame
boundaries (``round(frames * sample_rate / fps)``, cumulative), so audio and
video lengths agree per segment to one sample and cannot drift apart either;
the graph keeps the two streams' pieces apart so that nothing (``concat``'s
per-piece padding) can add a sample the plan did not place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from worker.errors import InvalidJob, excerpt

# An end this far past the end of the source is clamped; further is a plan for
# some other media and is rejected.
END_TOLERANCE_S = 1.0
# Plans are refused before parsing past this many bytes (see plan_byte_limit)
# or this bracket depth (a valid plan needs 3).
PLAN_BYTES_BASE = 64 * 1024
PLAN_BYTES_PER_SEGMENT = 256
PLAN_MAX_DEPTH = 16
# Integers beyond this are not exact as floats, and far beyond any media time.
_MAX_EXACT_INT = 2**53
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[][{}]")
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
    first_unit: int = 0  # grid position of the start of the source's extent
    # Render-timeline seconds of grid unit 0 (the first video frame, or the first
    # audio sample) and of audio sample 0 (the first decoded sample).
    origin: Fraction = Fraction(0)
    audio_origin: Fraction = Fraction(0)

    @property
    def total_units(self) -> int:
        return sum(p.length for p in self.pieces)

    @property
    def total_samples(self) -> int:
        return sum(p.a_len for p in self.pieces)

    @property
    def duration(self) -> float:
        return float(self.total_units / self.rate)


def _number(v: Any) -> float | None:
    """``v`` as a finite float, or None when it is not a JSON number that fits one.

    Checked in this order because ``bool`` is an ``int`` and ``float(10**400)``
    raises ``OverflowError``: a tenant's value must give a clean refusal.
    """
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    if isinstance(v, int):
        return float(v) if abs(v) <= _MAX_EXACT_INT else None
    return v if math.isfinite(v) else None


def parse_segments(raw: Any, *, max_segments: int = 10_000) -> list[Segment] | None:
    """Validate the ``segments`` field of a job or plan file.

    ``None`` means the full source. Raises :class:`InvalidJob` naming the bad
    segment and a short excerpt of its value (never the whole value), whatever
    ``raw`` is.
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
            raise InvalidJob(f"segments[{i}] must be an object with numeric start and end, got {excerpt(item)}")
        vals = []
        for key in ("start", "end"):
            v = _number(item[key])
            if v is None:
                raise InvalidJob(f"segments[{i}].{key} must be a finite number, got {excerpt(item[key])}")
            vals.append(v)
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


def plan_byte_limit(max_segments: int) -> int:
    """The largest plan document accepted for ``max_segments`` segments.

    Generous per segment (pretty-printed, 17 significant digits), so any plan
    the segment limit allows fits, while a plan too big to be valid is refused
    before it is parsed: parsing an 80 MB document costs ~600 MB of memory.
    """
    return PLAN_BYTES_BASE + max_segments * PLAN_BYTES_PER_SEGMENT


def _nesting(text: str, limit: int) -> int:
    """Bracket depth of a JSON text, counting only brackets outside strings; stops past ``limit``.

    Linear, so a deeply nested document is refused without ever reaching
    :func:`json.loads`, whose recursion would overflow the stack.
    """
    depth = deepest = 0
    for match in _BRACKETS.finditer(_JSON_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        else:
            depth -= 1
    return deepest


def parse_plan(data: bytes | str, *, max_segments: int = 10_000, source: str = "cut plan") -> list[Segment] | None:
    """A cut plan document (``{"segments": [...]}`` or the bare list) → validated segments.

    Every document, whatever its size, shape or encoding, gives segments or
    :class:`InvalidJob`: the size is checked before decoding, the nesting
    before parsing. ``source`` names the document in messages.
    """
    limit = plan_byte_limit(max_segments)
    if len(data) > limit:
        raise InvalidJob(f"{source} is larger than {limit} bytes, the most {max_segments} segments can need")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJob(f"{source} is not UTF-8 text (byte {exc.start})") from exc
    else:
        text = data
    if _nesting(text, PLAN_MAX_DEPTH) > PLAN_MAX_DEPTH:
        raise InvalidJob(f"{source} is nested more than {PLAN_MAX_DEPTH} levels deep")
    try:
        doc = json.loads(text)
    except RecursionError as exc:  # the scan above should make this unreachable; refuse cleanly regardless
        raise InvalidJob(f"{source} is nested too deeply") from exc
    except ValueError as exc:
        # JSONDecodeError's own text is short and quotes no input; other ValueErrors
        # (an int of 5,000 digits) are described only by their kind.
        why = "bad value"
        if isinstance(exc, json.JSONDecodeError):
            why = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise InvalidJob(f"{source} is not valid JSON: {why}") from exc
    if isinstance(doc, dict):
        if "segments" not in doc:
            raise InvalidJob(f"{source} has no 'segments' field")
        doc = doc["segments"]
    return parse_segments(doc, max_segments=max_segments)


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
    origin: Fraction = Fraction(0),
    audio_origin: Fraction | None = None,
) -> Timeline:
    """Snap ``segments`` (already clamped, render-timeline seconds) to the grid ``rate``.

    Grid unit ``u`` is the instant ``origin + u / rate``: the grid is anchored
    on the first video frame (or the first audio sample), not on zero, so a
    stream that starts off the frame grid (an mkv remux's 21 ms) is cut on its
    own frames. ``first_unit``/``end_unit`` bound the grid positions that exist
    in the source, ``[first_unit, end_unit)``; a negative ``first_unit`` is
    audio before the first frame. With no segments the whole range is kept.

    Audio sample ``k`` (counted from the first decoded sample) is the instant
    ``audio_origin + k / sample_rate``. Each piece takes the samples from the
    instant of its first frame, and its length comes from the same *output*
    boundaries as the video (``round(out * sample_rate / rate)``, cumulative),
    so no rounding adds up over the pieces. ``a_src`` is negative where a piece
    starts before the audio does (the graph fills that with silence).
    """
    if end_unit <= first_unit:
        raise InvalidJob("the source has no frames or samples to render")
    if audio_origin is None:
        audio_origin = origin
    whole = segments is None
    if segments is None:
        segments = [Segment(float(origin + first_unit / rate), float(origin + end_unit / rate))]

    # Planned time is accumulated exactly (as Fractions of the float inputs), so
    # the boundary of segment 1000 is as exact as the boundary of segment 1.
    #
    # One rounding (the half-frame rule): inside segment j the plan maps output
    # time t to source time start_j + (t - T_j), T_j being the planned time kept
    # before it. Output frame k therefore shows source frame
    # round(k + (start_j - origin - T_j) * rate): the offset between output and
    # source frames is rounded once per piece. Rounding the piece's source start
    # and its output start separately (round(a) - round(b) instead of
    # round(a - b)) put whole pieces one frame off the plan.
    spans: list[tuple[int, int]] = []  # (src start unit, length in units)
    planned = Fraction(0)
    out_prev = 0
    for seg in segments:
        start = Fraction(seg.start)
        offset = _round((start - origin - planned) * rate)
        planned += Fraction(seg.end) - start
        out_next = _round(planned * rate)
        src = min(max(out_prev + offset, first_unit), end_unit)
        if spans and src < spans[-1][0] + spans[-1][1]:
            # Only reachable when an earlier piece was cut short at the source's end (or its start was
            # clamped): the offsets themselves never decrease, so no source frame is shown twice.
            src = min(spans[-1][0] + spans[-1][1], end_unit)
        length = min(out_next - out_prev, end_unit - src)
        if length > 0:
            spans.append((src, length))
            out_prev += length
        # A segment shorter than half a frame keeps nothing; its time still
        # counts in ``planned`` so later boundaries stay where the plan puts them.
    if whole:
        # The whole source is exactly its grid range, whatever the float round trip says.
        spans = [(first_unit, end_unit - first_unit)]
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
        elif Fraction(sample_rate) == rate and audio_origin == origin:
            a_src, a_len, a_out = src, length, out
        else:
            sr = Fraction(sample_rate)
            a_out = _round(out * sr / rate)
            a_len = _round((out + length) * sr / rate) - a_out
            a_src = _round((origin - audio_origin + Fraction(src) / rate) * sr)
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
    return Timeline(
        rate=rate,
        sample_rate=sample_rate,
        pieces=tuple(pieces),
        fade_samples=fade,
        first_unit=first_unit,
        origin=origin,
        audio_origin=audio_origin,
    )
