"""The plan: validation messages and the exact, drift-free placement of boundaries."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from worker.errors import ErrorCode, InvalidJob
from worker.plan import Segment, build_timeline, clamp_to_source, parse_segments


def random_plan(n: int, seed: int, *, min_len: float = 0.02, max_len: float = 0.4) -> list[Segment]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.uniform(0.01, 0.3)
        start = t
        t += rng.uniform(min_len, max_len)
        out.append(Segment(start, t))
    return out


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("nope", "must be a list"),
        ([], "empty"),
        ([{"start": 1}], "segments[0]"),
        ([{"start": "1", "end": 2}], "segments[0].start must be a finite number"),
        ([{"start": 0, "end": float("nan")}], "segments[0].end"),
        ([{"start": -1, "end": 2}], "segments[0].start must be >= 0"),
        ([{"start": 3, "end": 2}], "segments[0] must have start < end, got start=3.0 end=2.0"),
        ([{"start": 0, "end": 2}, {"start": 1.5, "end": 3}], "segments[1] (start=1.5) overlaps segments[0]"),
        ([{"start": 5, "end": 6}, {"start": 1, "end": 2}], "segments[1] (start=1.0) is not sorted after segments[0]"),
        ([{"start": True, "end": 2}], "segments[0].start"),
        ([{"start": 0, "end": 1, "speed": 2}], "segments[0]"),
    ],
)
def test_invalid_segments_name_the_segment_and_value(raw: object, needle: str) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_segments(raw)
    assert info.value.code is ErrorCode.INVALID_JOB
    assert needle in info.value.message


def test_null_segments_mean_full_source() -> None:
    assert parse_segments(None) is None
    tl = build_timeline(None, rate=Fraction(30), first_unit=0, end_unit=300, sample_rate=48000)
    assert len(tl.pieces) == 1
    p = tl.pieces[0]
    assert (p.src, p.length, p.a_src, p.a_len) == (0, 300, 0, 480000)
    assert not p.fade_in and not p.fade_out


def test_too_many_segments_rejected() -> None:
    with pytest.raises(InvalidJob, match="limit of 3"):
        parse_segments([{"start": i, "end": i + 0.5} for i in range(4)], max_segments=3)


def test_clamp_end_a_little_past_and_reject_start_past_end() -> None:
    assert clamp_to_source([Segment(1, 10.4)], 10.0) == [Segment(1, 10.0)]
    with pytest.raises(InvalidJob, match=r"segments\[1\].start=10.5 is past the end"):
        clamp_to_source([Segment(1, 2), Segment(10.5, 11)], 10.0)
    with pytest.raises(InvalidJob, match=r"segments\[0\].end=30"):
        clamp_to_source([Segment(1, 30)], 10.0)


RATES = [Fraction(24000, 1001), Fraction(25), Fraction(30000, 1001), Fraction(30), Fraction(50), Fraction(60000, 1001)]


def shown_frames(tl) -> list[int]:
    """The source frame each output frame of ``tl`` shows, in output order."""
    return [p.src + i for p in tl.pieces for i in range(p.length)]


def plan_errors(segs: list[Segment], rate: Fraction, shown: list[int], origin: Fraction = Fraction(0)) -> list:
    """For every output frame k: the shown source frame minus the plan's source position for k, in frames.

    Written from the rule alone: frame k belongs to segment j when round(T_j * rate) <= k < round(T_j+1 * rate)
    (T_j: planned time kept before j), and the plan's source time for it is start_j + k / rate - T_j.
    """
    errors = []
    kept = Fraction(0)
    for s in segs:
        lo = math.floor(kept * rate + Fraction(1, 2))
        nxt = kept + Fraction(s.end) - Fraction(s.start)
        hi = math.floor(nxt * rate + Fraction(1, 2))
        for k in range(lo, min(hi, len(shown))):
            errors.append(shown[k] - ((Fraction(s.start) - origin - kept) * rate + k))
        kept = nxt
    return errors


@pytest.mark.parametrize("rate", RATES + [Fraction(60)])
@pytest.mark.parametrize("n", [20, 1000])
def test_every_frame_within_half_a_frame_of_the_plan(rate: Fraction, n: int) -> None:
    """The half-frame rule: output frame k shows the source frame nearest the plan's source time for k."""
    segs = random_plan(n, seed=n)
    tl = build_timeline(segs, rate=rate, first_unit=0, end_unit=10**7, sample_rate=48000)
    out = 0
    for p in tl.pieces:
        assert p.out == out
        out += p.length
    errors = plan_errors(segs, rate, shown_frames(tl))
    assert len(errors) == tl.total_units
    assert max(abs(e) for e in errors) <= Fraction(1, 2)
    # The total never drifts either.
    planned = sum(Fraction(s.end) - Fraction(s.start) for s in segs)
    assert abs(Fraction(tl.total_units) - planned * rate) <= Fraction(1, 2)


@pytest.mark.parametrize("rate", [Fraction(25), Fraction(30000, 1001), Fraction(30)])
def test_rounding_each_side_separately_is_a_frame_off(rate: Fraction) -> None:
    """Why one rounding: snapping a piece's source start and its output start separately shows whole pieces
    one frame off the plan; the timeline never does."""
    segs = random_plan(200, seed=3)
    off_by_one = 0
    kept = Fraction(0)
    for s in segs:
        separate = round(Fraction(s.start) * rate) - round(kept * rate)
        exact = (Fraction(s.start) - kept) * rate
        off_by_one += abs(separate - exact) > Fraction(1, 2)
        kept += Fraction(s.end) - Fraction(s.start)
    assert off_by_one > 20  # a sizeable share of pieces, the way the two roundings fell before
    tl = build_timeline(segs, rate=rate, first_unit=0, end_unit=10**7, sample_rate=48000)
    assert max(abs(e) for e in plan_errors(segs, rate, shown_frames(tl))) <= Fraction(1, 2)


def test_off_grid_origin_rounds_once() -> None:
    """A video that starts off the frame grid (a remux's 21 ms): frames count from the first one."""
    rate, origin = Fraction(30), Fraction(21, 1000)
    segs = random_plan(100, seed=11)
    tl = build_timeline(segs, rate=rate, first_unit=0, end_unit=10**7, sample_rate=48000, origin=origin)
    assert max(abs(e) for e in plan_errors(segs, rate, shown_frames(tl), origin)) <= Fraction(1, 2)


def test_per_segment_snapping_would_drift_but_cumulative_does_not() -> None:
    """The reason for cumulative placement: rounding each length alone adds up."""
    rate = Fraction(30)
    segs = [Segment(i * 1.0, i * 1.0 + 0.05) for i in range(1000)]  # 1.5 frames each
    naive_total = sum(round((Fraction(s.end) - Fraction(s.start)) * rate) for s in segs)
    tl = build_timeline(segs, rate=rate, first_unit=0, end_unit=10**6, sample_rate=48000)
    planned_frames = Fraction(1000 * 5, 100) * rate  # 1500 frames
    assert abs(naive_total - planned_frames) > 50  # the naive way is dozens of frames off
    assert abs(tl.total_units - planned_frames) <= Fraction(1, 2)


@pytest.mark.parametrize("rate", [Fraction(30), Fraction(30000, 1001)])
@pytest.mark.parametrize("sr", [48000, 44100])
def test_audio_and_video_lengths_agree_per_piece_and_in_total(rate: Fraction, sr: int) -> None:
    tl = build_timeline(random_plan(1000, seed=7), rate=rate, first_unit=0, end_unit=10**7, sample_rate=sr)
    for p in tl.pieces:
        exact = Fraction(p.length) / rate * sr
        assert abs(p.a_len - exact) <= 1
        # audio starts at the same absolute position as the video frame
        assert abs(p.a_src - Fraction(p.src) / rate * sr) <= Fraction(1, 2)
        assert abs(p.a_out - Fraction(p.out) / rate * sr) <= Fraction(1, 2)
    assert abs(tl.total_samples - Fraction(tl.total_units) / rate * sr) <= 1


def test_touching_segments_join_without_fade() -> None:
    segs = [Segment(1.0, 2.0), Segment(2.0, 3.0), Segment(4.0, 5.0)]
    tl = build_timeline(segs, rate=Fraction(30), first_unit=0, end_unit=300, sample_rate=48000)
    assert [(p.src, p.length) for p in tl.pieces] == [(30, 60), (120, 30)]
    first, second = tl.pieces
    assert first.fade_out and second.fade_in  # a real cut between them
    assert first.fade_in  # the head of the source was cut too
    assert second.fade_out  # and the tail


def test_segment_shorter_than_a_frame_keeps_its_time() -> None:
    segs = [Segment(1.0, 1.01), Segment(2.0, 3.0)]
    tl = build_timeline(segs, rate=Fraction(30), first_unit=0, end_unit=300, sample_rate=None)
    assert [(p.src, p.length, p.out) for p in tl.pieces] == [(60, 30, 0)]


def test_audio_only_grid_is_samples() -> None:
    tl = build_timeline([Segment(0.5, 1.25)], rate=Fraction(44100), first_unit=0, end_unit=441000, sample_rate=44100)
    (p,) = tl.pieces
    assert (p.src, p.length, p.a_src, p.a_len) == (22050, 33075, 22050, 33075)


def test_last_segment_clamped_to_source_end() -> None:
    tl = build_timeline([Segment(9.0, 10.0)], rate=Fraction(30), first_unit=0, end_unit=290, sample_rate=48000)
    (p,) = tl.pieces
    assert p.src + p.length == 290
    assert not p.fade_out  # ends exactly at the end of the source


@pytest.mark.parametrize("seed", range(5))
def test_no_source_frame_is_used_twice(seed: int) -> None:
    """Rounding a piece's end up must not make the next piece repeat a frame."""
    rate = Fraction(30000, 1001)
    tl = build_timeline(
        random_plan(500, seed, min_len=0.02, max_len=0.2), rate=rate, first_unit=0, end_unit=10**6, sample_rate=48000
    )
    for a, b in zip(tl.pieces, tl.pieces[1:], strict=False):
        assert b.src >= a.src + a.length
