"""The expected output timeline of a render, derived from the promises, without worker/plan.py.

The promise (README, "How a render stays exact"): a render cuts on a grid of slots, ``rate`` per second,
anchored at ``origin`` (the source's first frame, or first audio sample for audio-only outputs). Segment j
keeps the planned time ``[start_j, end_j)``; its first output slot is ``round(T_j * rate)``, with ``T_j``
the planned time kept before it (so no boundary is ever more than half a slot from the plan, however many
segments). Inside segment j the plan maps output time ``t`` to source time ``start_j + t - T_j``, and output
slot ``k`` shows the source slot nearest the plan's source time for ``k``: ``round(k + (start_j - origin -
T_j) * rate)``, one rounding (the half-frame rule). Audio follows the picture: the output audio at output
time ``t`` is the source audio at the source instant of the slot shown at ``t``.

Everything here is exact (Fractions) and written from that statement alone, so a test comparing a render
with it checks the renderer against the promise rather than against itself.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import mediacheck as mc
import numpy as np


def round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


@dataclasses.dataclass(frozen=True)
class Span:
    """One segment as rendered: ``length`` slots from source slot ``src``, placed at output slot ``out``."""

    src: int
    length: int
    out: int
    planned_out: Fraction  # where the plan puts its first output slot (T_j * rate, not rounded)
    planned_src: Fraction  # where the plan puts its first source slot ((start_j - origin) * rate)


@dataclasses.dataclass(frozen=True)
class Expected:
    rate: Fraction
    origin: Fraction  # render-timeline seconds of source slot 0
    spans: tuple[Span, ...]

    @property
    def total(self) -> int:
        return sum(s.length for s in self.spans)

    def slots(self) -> list[int]:
        """The source slot every output slot shows, in output order."""
        return [s.src + i for s in self.spans for i in range(s.length)]

    @functools.cached_property
    def _outs(self) -> list[int]:
        return [s.out for s in self.spans]

    def span_at(self, out_slot: int) -> Span:
        # Spans are contiguous and sorted on the output: a binary search keeps 10,000 pieces cheap.
        k = bisect.bisect_right(self._outs, out_slot) - 1
        if k < 0 or not out_slot < self.spans[k].out + self.spans[k].length:
            raise IndexError(out_slot)
        return self.spans[k]

    def source_time(self, out_t: Fraction) -> Fraction:
        """Render-timeline instant of the source shown at output time ``out_t`` (seconds)."""
        s = self.span_at(math.floor(out_t * self.rate))
        return self.origin + Fraction(s.src) / self.rate + out_t - Fraction(s.out) / self.rate


def expected(
    segments: Sequence[tuple[float, float]] | None,
    *,
    rate: Fraction,
    origin: Fraction,
    first: int,
    end: int,
) -> Expected:
    """The spans a render keeps of a source whose slots ``[first, end)`` exist (``first`` may be < 0)."""
    if segments is None:
        return Expected(rate, origin, (Span(first, end - first, 0, Fraction(0), Fraction(first)),))
    begin = origin + Fraction(first) / rate
    spans: list[Span] = []
    kept = Fraction(0)  # planned time before the current segment
    out = 0
    for start_f, end_f in segments:
        start, stop = Fraction(start_f), Fraction(end_f)
        start = max(start, begin)  # the output starts at the earliest instant the source has
        if stop <= start:
            continue
        planned_out = kept * rate
        planned_src = (start - origin) * rate
        # The slot shown at output slot k is round(k + planned_src - planned_out): rounded once, so slot k is
        # within half a slot of the plan's source time for k.
        src = min(max(out + round_half_up(planned_src - planned_out), first), end)
        kept += stop - start
        if spans and src < spans[-1].src + spans[-1].length:
            src = spans[-1].src + spans[-1].length  # never show a source slot twice
        length = min(round_half_up(kept * rate) - out, end - src)
        if length > 0:
            spans.append(Span(src, length, out, planned_out, planned_src))
            out += length
    return Expected(rate, origin, tuple(spans))


# --------------------------------------------------------------------------------------------------------------
# Checking a render against it
# --------------------------------------------------------------------------------------------------------------


def check_timeline_promise(exp: Expected) -> None:
    """The oracle's own spans keep the promise: output boundaries within half a slot, every slot's content
    within half a slot of the plan's source time for it."""
    for s in exp.spans:
        assert abs(s.out - s.planned_out) <= Fraction(1, 2) or s is not exp.spans[0]
        assert abs(s.src - s.planned_src) <= 1
        assert abs(Fraction(s.src - s.out) - (s.planned_src - s.planned_out)) <= Fraction(1, 2)


def plan_error(exp: Expected, out_slot: int, shown: int) -> Fraction:
    """How far (in slots) the source slot ``shown`` at output slot ``out_slot`` is from the plan's source time
    for that slot: ``shown - (out_slot + planned_src - planned_out)`` of the segment the slot belongs to."""
    s = exp.span_at(out_slot)
    return shown - (out_slot + s.planned_src - s.planned_out)


@dataclasses.dataclass
class SyncReport:
    measured: int  # pieces with at least one window measured
    too_short: int  # pieces shorter than two minimum windows: nothing to correlate
    silent: int  # windows planned where the source has no audio (checked to be silent instead)
    gap_edges: int  # windows within GAP_EDGE_S of a hole's edge: codec transitions, neither noise nor silence
    worst_s: float
    offsets_s: list[float]


MIN_WINDOW = 480  # 10 ms at 48 kHz: the shortest noise window that still correlates clearly after AAC
# Around each edge of a hole in the source audio, the codecs blur noise and silence: AAC decodes the first
# frame after the hole overlapped with the last one before it (1024 samples), and the output encoder spreads
# each edge over its window (2048 samples). 64 ms covers both at 48 kHz, with room.
GAP_EDGE_S = Fraction(64, 1000)


def _gap_state(t0: Fraction, t1: Fraction, gaps: Sequence[tuple[float, float]]) -> str:
    """Where the source interval ``[t0, t1)`` lies relative to the holes: "sound", "hole" or "edge"."""
    for g0_f, g1_f in gaps:
        g0, g1 = Fraction(g0_f), Fraction(g1_f)
        if t1 <= g0 - GAP_EDGE_S or t0 >= g1 + GAP_EDGE_S:
            continue
        if t0 >= g0 + GAP_EDGE_S and t1 <= g1 - GAP_EDGE_S:
            return "hole"
        return "edge"
    return "sound"


def measure_sync(
    out: Path,
    exp: Expected,
    ref: np.ndarray,
    ref_rate: int,
    *,
    ref_start: float = 0.0,
    windows_per_piece: int = 2,
    spans: Sequence[Span] | None = None,
    gaps: Sequence[tuple[float, float]] = (),
) -> SyncReport:
    """Locate audio windows of every piece in the source noise and compare with where the picture says.

    ``ref`` is the mono source signal whose sample 0 plays at render time ``ref_start``. Every piece at least
    two minimum windows long is measured (windows shrink with the piece, never below MIN_WINDOW); shorter
    pieces are counted, not silently dropped, and the caller asserts the counts.

    ``gaps`` are holes in the source audio (render-timeline seconds, ``[start, end)``): the promise is silence
    there, so a window inside one must be silent, and the noise after it must still be where the picture
    says. Windows at a hole's edge are counted in ``gap_edges``, not measured.
    """
    audio, sr = mc.decode_audio(out)
    mono = audio.mean(axis=0)
    report = SyncReport(0, 0, 0, 0, 0.0, [])
    fade = round(0.005 * sr)
    for s in spans if spans is not None else exp.spans:
        a0 = round_half_up(Fraction(s.out) * sr / exp.rate)
        a1 = round_half_up(Fraction(s.out + s.length) * sr / exp.rate)
        usable = a1 - a0 - 2 * fade
        if usable < 2 * MIN_WINDOW:
            report.too_short += 1
            continue
        win = min(2048, usable // 2)
        measured = False
        for w in range(windows_per_piece):
            frac = Fraction(w + 1, windows_per_piece + 1)
            m = a0 + fade + int((usable - win) * frac)
            src_t = exp.source_time(Fraction(m, sr))
            expected_pos = (src_t - Fraction(ref_start)) * ref_rate
            where = _gap_state(src_t, src_t + Fraction(win, sr), gaps)
            if where == "edge":
                report.gap_edges += 1
                continue
            if where == "hole" or expected_pos < 0 or expected_pos + win > len(ref):
                # The source has no audio here: the render must be silent.
                assert np.abs(mono[m : m + win]).max() < 1e-3, f"sound where the source has none (output {m})"
                report.silent += 1
                continue
            pos, peak = mc.find_offset(ref, mono[m : m + win], round_half_up(expected_pos), int(0.05 * ref_rate))
            assert peak > 0.8, f"audio at output sample {m} not found in the source (peak {peak:.2f})"
            off = float((pos - expected_pos) / ref_rate)
            report.offsets_s.append(off)
            report.worst_s = max(report.worst_s, abs(off))
            measured = True
        report.measured += measured
    return report
