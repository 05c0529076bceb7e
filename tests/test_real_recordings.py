"""Sources made the way real recorders make them (issue 8), rendered against the promises.

Each source class (browser WebM streamed without duration or cues, VFR with jitter and with drops, an mkv
remux whose video starts off zero, audio starting late through an edit list, audio outlasting the video,
HDR) is rendered to mp4 and, where it has audio, m4a and mp3. Every output frame's barcode is compared with
the slot the oracle (tests/oracle.py, written from the promise, not from worker/plan.py) puts there, and the
audio of every piece long enough to measure is located in the pristine source noise by cross-correlation.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import mediacheck as mc
import numpy as np
import oracle
import pytest
from click.testing import CliRunner

from fixtures import generate as gen
from worker.cli import main
from worker.output import OutputSpec
from worker.plan import Segment, build_timeline
from worker.render import render

SYNC_TOL_S = 0.001  # CFR: A/V sync promise
# The webm fixture's timestamps are whole milliseconds (Matroska's default time base): the first audio
# packet's -6.5 ms pre-skip is written as -7 ms, so the source itself places its audio up to 0.5 ms off.
MS_TIMEBASE_S = 0.0005


def _facts(path: Path, name: str) -> dict:
    """What the source holds, measured by decoding it (never by worker.probe) plus the generator's knowledge."""
    v = gen.VARIANTS[name]
    frames = mc.frame_indices(path)
    pts = [t for t, _ in frames]
    idx = [i for _, i in frames]
    assert None not in idx
    audio, sr = mc.decode_audio(path)
    a_first = Fraction(mc.audio_start_seconds(path)).limit_denominator(1_000_000)
    # Holes in the audio (packets a recorder dropped), from the decoded frames' timestamps: the stream's extent
    # is its samples plus its holes, and the promise there is silence.
    gaps = mc.audio_gaps(path)
    missing = sum((Fraction(g1 - g0).limit_denominator(1_000_000) for g0, g1 in gaps), Fraction(0))
    return {
        "v": v,
        "pts": np.array(pts),
        "idx": idx,
        "v_start": Fraction(pts[0]).limit_denominator(90000),
        "a_first": a_first,
        "a_end": a_first + Fraction(audio.shape[1], sr) + missing,
        "gaps": gaps,
        "sr": sr,
        # The noise's sample 0 plays at the offset the generator gave the audio.
        "ref_start": float(v.extra.get("audio_offset", 0.0)),
        "ref": gen.source_audio(v).mean(axis=0),
    }


def _video_expected(f: dict, segs: list[Segment] | None) -> oracle.Expected:
    v = f["v"]
    rate = v.fps
    origin = f["v_start"]
    n_slots = v.frames if v.kept is None else round(v.duration * rate)
    # The extent covers the audio too, in whole frames: black before the first frame, the last frame after.
    first = min(0, -math.floor((origin - f["a_first"]) * rate))
    end = max(n_slots, math.floor((f["a_end"] - origin) * rate))
    plan = None if segs is None else [(s.start, s.end) for s in segs]
    return oracle.expected(plan, rate=rate, origin=origin, first=first, end=end)


def _audio_expected(f: dict, segs: list[Segment] | None) -> oracle.Expected:
    sr = f["sr"]
    n = round((f["a_end"] - f["a_first"]) * sr)
    plan = None if segs is None else [(s.start, s.end) for s in segs]
    return oracle.expected(plan, rate=Fraction(sr), origin=f["a_first"], first=0, end=n)


def _shown_frame(f: dict, slot: int, rate: Fraction) -> int | None:
    """The source frame on screen at the middle of ``slot`` (None before the first frame: black)."""
    t = float(f["v_start"] + (Fraction(slot) + Fraction(1, 2)) / rate)
    on = np.flatnonzero(f["pts"] <= t + 1e-9)
    return None if len(on) == 0 else f["idx"][on[-1]]


def _check_video(out: Path, f: dict, exp: oracle.Expected) -> dict:
    """Every output frame against the oracle; returns counts of what was seen."""
    got = mc.frame_indices(out)
    assert len(got) == exp.total, f"{len(got)} frames, the plan has {exp.total}"
    steps = np.diff([t for t, _ in got])
    assert np.allclose(steps, 1 / float(exp.rate), atol=2e-4), "output is not CFR at the nominal rate"
    black = 0
    for k, ((_, shown), slot) in enumerate(zip(got, exp.slots(), strict=True)):
        want = _shown_frame(f, slot, exp.rate)
        if want is None:
            black += 1
            assert shown is None, f"output frame {k}: {shown}, the source has no picture yet (black)"
            continue
        assert shown == want, f"output frame {k} (slot {slot}): source frame {shown}, the plan says {want}"
        # The half-frame rule, on the slot grid: the slot shown is the one nearest the plan's time for k.
        assert abs(oracle.plan_error(exp, k, slot)) <= Fraction(1, 2), f"output frame {k} is a slot off the plan"
    # Half a frame: where each piece starts on the output timeline.
    for s in exp.spans[1:]:
        assert abs(s.out - s.planned_out) <= Fraction(1, 2)
    return {"frames": len(got), "black": black}


def _sync(out: Path, f: dict, exp: oracle.Expected, tol: float) -> oracle.SyncReport:
    rep = oracle.measure_sync(out, exp, f["ref"], f["sr"], ref_start=f["ref_start"], gaps=f["gaps"])
    assert rep.measured + rep.too_short == len(exp.spans)
    assert rep.worst_s <= tol, f"A/V offset {rep.worst_s * 1000:.3f} ms"
    return rep


def _lengths(out: Path, exp: oracle.Expected, sr: int, has_video: bool, slack: int = 0) -> None:
    """Audio length: one sample per piece of the plan's (for video outputs, of the video's length)."""
    want = round(Fraction(exp.total) / exp.rate * sr)
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        declared = a.duration * a.time_base * sr if a.duration else None
    # mp4/m4a: the length the container declares (the AAC encoder pads its last frame to 1024 samples and the
    # last packet's duration trims it; PyAV's decoder does not apply that trim). mp3: the decoded samples
    # (the LAME header's gapless info is applied by the decoder).
    got = round(declared) if declared is not None else mc.stream_durations(out)["audio_samples"]
    assert abs(got - want) <= len(exp.spans) + slack, f"{got} audio samples, the plan has {want}"
    if has_video:
        assert mc.stream_durations(out)["video_frames"] == exp.total


SEGMENTS = [Segment(0.0, 1.234), Segment(1.5, 2.1), Segment(2.4, 3.95), Segment(4.3, 5.55)]
# (fixture, segments) pairs: cuts that reach into the awkward parts of each recording.
CASES = {
    "webm_stream": SEGMENTS,
    "webm_vp9": [Segment(0.0, 1.234), Segment(1.5, 2.1), Segment(2.4, 3.95)],
    # a piece across the 2.0-2.4 s hole (one window in it, one after it) and pieces after it
    "audio_gap": [Segment(0.5, 1.5), Segment(1.8, 3.2), Segment(3.5, 4.4), Segment(4.9, 5.9)],
    "offset_mkv": SEGMENTS,
    "late_audio": SEGMENTS,
    # past the end of the video, and off the frame grid (an audio-only render cuts on samples)
    "audio_tail": [Segment(0.4123, 1.6071), Segment(2.0177, 3.5123), Segment(3.8089, 6.4311)],
    "vfr_jitter": [Segment(0.2, 2.0), Segment(2.5, 5.0), Segment(5.3, 7.9)],
    "vfr": [Segment(1.0, 6.0), Segment(9.5, 15.25), Segment(16.0, 19.5)],
    # HDR: frames exact through the tone mapping (test_hdr_is_tone_mapped_to_sdr_bt709 checks the picture)
    "hlg": [Segment(0.1, 0.9), Segment(1.2, 1.95)],
    "pq": [Segment(0.05, 0.75), Segment(1.0, 1.8)],
}


@pytest.mark.parametrize("fmt", ["mp4", "m4a", "mp3"])
@pytest.mark.parametrize("name", list(CASES))
def test_real_recording_renders_exactly(media, tmp_path, name, fmt):
    src = media[name]
    segs = CASES[name]
    f = _facts(src, name)
    out = tmp_path / f"out.{fmt}"
    render(src, segs, OutputSpec(fmt), out)
    vfr = name.startswith("vfr")
    tol = SYNC_TOL_S + (MS_TIMEBASE_S if name.startswith("webm") else 0.0)
    if fmt == "mp4":
        exp = _video_expected(f, segs)
        seen = _check_video(out, f, exp)
        if name == "vfr_jitter":
            # Jitter only: every real frame in the kept spans appears exactly once.
            idx = [i for _, i in mc.frame_indices(out)]
            assert len(idx) == len(set(idx)), "a jittered frame was shown twice"
            assert sum(s.length for s in exp.spans) == len(idx)
        if vfr:
            _check_vfr_bound(out, f, exp)
        assert seen["black"] == 0
    else:
        exp = _audio_expected(f, segs)
    rep = _sync(out, f, exp, tol)
    assert rep.measured == len(exp.spans) and rep.too_short == 0
    if name == "audio_gap":
        assert rep.silent == 1 and rep.gap_edges == 0  # the window in the hole was checked silent
    _lengths(out, exp, f["sr"], fmt == "mp4")


def _check_vfr_bound(out: Path, f: dict, exp: oracle.Expected) -> None:
    """The VFR bound: a source frame is shown within half a frame interval of its own timestamp.

    Measured at each real frame's first appearance (a slot the source has no frame for repeats the previous
    one, by design). The audio is separately held to 1 ms of the grid, so A/V stays within half a frame + 1 ms.
    """
    rate = exp.rate
    shown = [i for _, i in mc.frame_indices(out)]
    pts_of = dict(zip(f["idx"], f["pts"].tolist(), strict=True))
    worst = 0.0
    seen: set[int] = set()
    for k, i in enumerate(shown):
        if i in seen:
            continue
        seen.add(i)
        slot_t = float(exp.source_time(Fraction(k) / rate))
        worst = max(worst, abs(pts_of[i] - slot_t))
    assert worst <= 0.5 / float(rate) + 1e-6, f"a frame shown {worst * 1000:.2f} ms from its timestamp"


def test_late_audio_is_silent_before_it_starts_and_in_sync_after(media, tmp_path):
    """Audio that starts 0.3 s after the video: a plan from 0 gets 0.3 s of silence, then the audio in place."""
    src = media["late_audio"]
    f = _facts(src, "late_audio")
    segs = [Segment(0.0, 2.0), Segment(2.5, 4.0)]
    out = tmp_path / "out.mp4"
    render(src, segs, OutputSpec("mp4"), out)
    exp = _video_expected(f, segs)
    _check_video(out, f, exp)
    audio, sr = mc.decode_audio(out)
    lead = round(0.3 * sr)
    assert np.abs(audio[:, : lead - 1100]).max() < 1e-3, "sound before the source's audio starts"
    rep = _sync(out, f, exp, SYNC_TOL_S)
    assert rep.measured == 2


@pytest.mark.parametrize("fmt", ["mp4", "m4a", "mp3"])
def test_audio_gap_is_filled_with_silence_and_sync_holds_after_it(media, tmp_path, fmt):
    """Audio packets missing from 2.0 to 2.4 s: the hole comes out silent, and everything after it in sync.

    Counting samples instead of following the timestamps closes the hole, and every sample after it then
    plays 0.4 s early. One piece over nearly all of it, measured in 20 windows: before, inside and after the
    hole. (It stops at 5.9 s so the extent is the plan's, not the last AAC frame's padding, which PyAV decodes.)
    """
    src = media["audio_gap"]
    f = _facts(src, "audio_gap")
    out = tmp_path / f"out.{fmt}"
    segs = [Segment(0.0, 5.9)]
    render(src, segs, OutputSpec(fmt), out)
    exp = _video_expected(f, segs) if fmt == "mp4" else _audio_expected(f, segs)
    rep = oracle.measure_sync(out, exp, f["ref"], f["sr"], windows_per_piece=20, gaps=f["gaps"])
    # windows every 5.9 s / 21: 1.97 s is at the hole's edge, 2.25 s inside it, the other 18 on noise
    assert (rep.silent, rep.gap_edges, len(rep.offsets_s)) == (1, 1, 18)
    assert rep.worst_s <= SYNC_TOL_S, f"A/V offset {rep.worst_s * 1000:.3f} ms"
    # The whole hole, less the codecs' blur at its edges, is digital silence in the output.
    ((g0, g1),) = f["gaps"]
    audio, sr = mc.decode_audio(out)
    t0 = float(exp.origin) if fmt != "mp4" else float(f["v_start"])
    a, b = round((g0 - t0 + float(oracle.GAP_EDGE_S)) * sr), round((g1 - t0 - float(oracle.GAP_EDGE_S)) * sr)
    assert np.abs(audio[:, a:b]).max() < 1e-3, "sound where the source has none"
    _lengths(out, exp, f["sr"], fmt == "mp4")


@pytest.mark.parametrize("name", ["webm_stream", "webm_vp9"])
def test_whole_render_of_streamed_webm_is_whole(media, tmp_path, name):
    """No duration, no cues: still rendered to its last frame and sample (the issue saw 1 frame, 12 ms)."""
    src = media[name]
    f = _facts(src, name)
    v = f["v"]
    for fmt in ("mp4", "m4a"):
        out = tmp_path / f"whole.{fmt}"
        render(src, None, OutputSpec(fmt), out)
        if fmt == "mp4":
            exp = _video_expected(f, None)
            _check_video(out, f, exp)
            assert exp.total == v.frames
        else:
            exp = _audio_expected(f, None)
            assert abs(exp.total - v.duration * 48000) <= 48  # the Opus stream's own end, to its 1 ms timestamps
        # The Opus stream ends 1 ms late by its (millisecond) timestamps, 48 samples after its last sample.
        _lengths(out, exp, f["sr"], fmt == "mp4", slack=48)
        _sync(out, f, exp, SYNC_TOL_S + MS_TIMEBASE_S)


def test_audio_tail_whole_render_holds_the_last_frame(media, tmp_path):
    """A plan may keep audio past the video's end; the picture holds the last frame there."""
    src = media["audio_tail"]
    f = _facts(src, "audio_tail")
    out = tmp_path / "whole.mp4"
    render(src, None, OutputSpec("mp4"), out)
    exp = _video_expected(f, None)
    _check_video(out, f, exp)
    assert exp.total == round(6.5 * 30)
    idx = [i for _, i in mc.frame_indices(out)]
    assert idx[119:] == [119] * (len(idx) - 119)
    _sync(out, f, exp, SYNC_TOL_S)


# --------------------------------------------------------------------------------------------------------------
# a thousand cuts and more
# --------------------------------------------------------------------------------------------------------------


def _many_segments(n: int, duration: float, seed: int) -> list[Segment]:
    rng = random.Random(seed)
    segs, t = [], 0.1
    for _ in range(n):
        start = t
        t += rng.uniform(0.05, 0.07)
        segs.append(Segment(round(start, 5), round(t, 5)))
        t += rng.uniform(0.025, 0.04)
    assert t < duration
    return segs


def test_sync_does_not_drift_over_two_thousand_pieces_at_2997(media, tmp_path):
    """One real render with 2,000 pieces at 29.97: every piece measured, every frame where the oracle says.

    The joined concat this replaced drifted about 2.5 µs per piece (5 ms here, 25 ms at 10,000).
    """
    src = media["long2997"]
    f = _facts(src, "long2997")
    segs = _many_segments(2000, 200.0, seed=2997)
    out = tmp_path / "out.mp4"
    render(src, segs, OutputSpec("mp4"), out)
    exp = _video_expected(f, segs)
    _check_video(out, f, exp)
    rep = oracle.measure_sync(out, exp, f["ref"], f["sr"], windows_per_piece=1)
    assert rep.measured == len(exp.spans) >= 1900 and rep.too_short == 0
    # The last hundred pieces are as much in sync as the first hundred: no drift.
    first, last = np.mean(rep.offsets_s[:100]), np.mean(rep.offsets_s[-100:])
    assert abs(last - first) < 0.0002, f"drift {1e3 * (last - first):.3f} ms over {len(exp.spans)} pieces"
    assert rep.worst_s <= SYNC_TOL_S, f"A/V offset {rep.worst_s * 1000:.3f} ms"
    _lengths(out, exp, f["sr"], True)


RATES = [Fraction(24000, 1001), Fraction(25), Fraction(30000, 1001), Fraction(30), Fraction(50),
         Fraction(60000, 1001), Fraction(60)]  # fmt: skip


@pytest.mark.parametrize("rate", RATES, ids=[f"{float(r):.3f}" for r in RATES])
def test_plan_arithmetic_holds_sync_at_10000_pieces(rate):
    """At the segment limit, every piece's audio starts where its picture does, to half a sample.

    Checked against the oracle: the picture's pieces must be the oracle's, the audio of each piece must start,
    in the output, at the output instant of its first frame and, in the source, at the source instant of that
    frame, each to half a sample, with no error carried from piece to piece.
    """
    sr = 48000
    segs = _many_segments(10_000, 10**6, seed=int(rate * 1000))
    origin, a_origin = Fraction(21, 1000), Fraction(0)  # a stream that starts off zero, too
    tl = build_timeline(
        segs, rate=rate, first_unit=0, end_unit=10**8, sample_rate=sr, origin=origin, audio_origin=a_origin
    )
    exp = oracle.expected([(s.start, s.end) for s in segs], rate=rate, origin=origin, first=0, end=10**8)
    # The same source slot in every output slot (the plan joins pieces that touch; the oracle need not).
    assert [p.src + i for p in tl.pieces for i in range(p.length)] == exp.slots()
    a_out = 0
    worst = Fraction(0)
    for p in tl.pieces:
        assert p.a_out == a_out  # the audio pieces are contiguous: the next starts where this one ends
        worst = max(worst, abs(Fraction(a_out) - Fraction(p.out) * sr / rate))
        worst = max(worst, abs(Fraction(p.a_src) - (origin - a_origin + Fraction(p.src) / rate) * sr))
        a_out += p.a_len
    assert worst <= Fraction(1, 2)
    assert abs(Fraction(a_out) - Fraction(tl.total_units) * sr / rate) <= Fraction(1, 2)


# --------------------------------------------------------------------------------------------------------------
# HDR and colour
# --------------------------------------------------------------------------------------------------------------


def _first_frame_luma(path: Path) -> tuple[np.ndarray, av.VideoFrame]:
    with av.open(str(path)) as c:
        frame = next(c.decode(c.streams.video[0]))
        return mc.luma(frame).astype(np.float64), frame


def _reference_sdr(src: Path, tmp: Path) -> np.ndarray:
    """The first frame tone-mapped by a chain the test writes itself: linear light, BT.709 primaries, Hable."""
    ref = tmp / "ref.mp4"
    chain = (
        "zscale=transfer=linear:npl=100,format=gbrpf32le,zscale=primaries=709,tonemap=hable:desat=0,"
        "zscale=transfer=709:matrix=709:range=limited,format=yuv420p"
    )
    subprocess.run(
        [gen.ffmpeg_exe(), "-v", "error", "-y", "-i", str(src), "-frames:v", "1", "-vf", chain, "-c:v", "libx264",
         "-qp", "0", str(ref)],
        check=True,
    )  # fmt: skip
    return _first_frame_luma(ref)[0]


@pytest.mark.parametrize("name", ["hlg", "pq"])
def test_hdr_is_tone_mapped_to_sdr_bt709(media, tmp_path, name):
    src = media[name]
    f = _facts(src, name)
    segs = [Segment(0.0, 0.8), Segment(1.1, 1.9)]
    out = tmp_path / "out.mp4"
    render(src, segs, OutputSpec("mp4"), out)
    _check_video(out, f, _video_expected(f, segs))  # the barcodes survive tone mapping
    y, frame = _first_frame_luma(out)
    assert frame.format.name == "yuv420p"
    with av.open(str(out)) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.color_primaries, cc.color_trc, cc.colorspace) == (1, 1, 1), "output must be tagged BT.709"
    ref = _reference_sdr(src, tmp_path)
    untouched = _first_frame_luma(src)[0]  # the HDR code values shown as if SDR: what players got before

    def blocks(x: np.ndarray) -> np.ndarray:
        """8x8 block means of the picture below the barcode band: the tone curve, without coding noise."""
        p = x[24:176, :320]
        return p.reshape(19, 8, 40, 8).mean(axis=(1, 3))

    err = np.abs(blocks(y) - blocks(ref)).mean()
    naive = np.abs(blocks(untouched) - blocks(ref)).mean()
    assert err < 1.5, f"picture differs from the tone-mapped reference by {err:.1f} levels"
    assert naive > 5, f"the check cannot tell a tone-mapped picture from an untouched one ({naive:.1f})"


def test_sdr_bt601_keeps_its_tags_when_scaled(media, tmp_path):
    src = media["bt601"]
    out = tmp_path / "out.mp4"
    result = render(src, None, OutputSpec("mp4", resolution="720p"), out)
    assert (result.width, result.height) == (1280, 720)
    with av.open(str(out)) as c:
        frame = next(c.decode(c.streams.video[0]))
    with av.open(str(src)) as c:
        source = next(c.decode(c.streams.video[0]))
    # The source's tags, the smpte170m (BT.601) matrix among them: scaling keeps the YUV values BT.601 ones,
    # and the output says so, so a player converts them with the right matrix.
    tags = (source.colorspace, source.color_primaries, source.color_trc)
    assert tags[0] == 6 and (frame.colorspace, frame.color_primaries, frame.color_trc) == tags
    assert mc.read_barcode(mc.luma(frame)) == 0
    # and the colours are those of the source: chroma of the picture below the band, on average
    for plane in (1, 2):
        want = np.frombuffer(memoryview(source.planes[plane]), np.uint8).astype(float).mean()
        got = np.frombuffer(memoryview(frame.planes[plane]), np.uint8).astype(float).mean()
        assert abs(got - want) < 1.5, (plane, got, want)


# --------------------------------------------------------------------------------------------------------------
# what the probe reports, through the CLI
# --------------------------------------------------------------------------------------------------------------


def test_probe_cli_reports_real_duration_starts_and_nominal_rate(media):
    def probe(name: str) -> dict:
        res = CliRunner().invoke(main, ["probe", str(media[name])])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    for name in ("webm_stream", "webm_vp9"):
        webm = probe(name)  # no duration in the header
        seconds = gen.VARIANTS[name].duration
        assert webm["duration"] == pytest.approx(seconds, abs=0.002)
        assert webm["video"]["duration"] == pytest.approx(seconds, abs=1e-3) and webm["video"]["rate"] == "30/1"
    gap = probe("audio_gap")  # the hole is inside the stream: its extent is the whole 6 s
    assert gap["audio"]["start"] == 0.0 and gap["audio"]["end"] == pytest.approx(6.0, abs=1e-3)
    offset = probe("offset_mkv")
    assert offset["video"]["start"] == pytest.approx(0.021, abs=1e-6) and offset["audio"]["start"] == 0.0
    late = probe("late_audio")
    assert late["audio"]["start"] == pytest.approx(0.3 - 1024 / 48000, abs=1e-6)  # its first decoded sample
    assert late["duration"] == pytest.approx(6.3, abs=1e-3)
    tail = probe("audio_tail")
    assert tail["video"]["end"] == pytest.approx(4.0, abs=1e-3) and tail["audio"]["end"] == pytest.approx(6.5)
    for name in ("vfr", "vfr_jitter"):
        d = probe(name)
        assert d["video"]["is_vfr"] and d["video"]["rate"] == "30/1", d["video"]
    assert probe("long2997")["video"]["rate"] == "30000/1001"
    assert probe("pq")["video"]["hdr"] and not probe("cfr30")["video"]["hdr"]


@pytest.mark.parametrize("name", ["webm_stream", "webm_vp9"])
def test_streamed_webm_fixture_has_no_duration_and_no_cues(media, name):
    path = media[name]
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == gen.VARIANTS[name].video_codec
        assert c.duration is None
        assert all(s.duration is None for s in c.streams)
        first_audio = next(p for p in c.demux(c.streams.audio[0]) if p.pts is not None)
        assert first_audio.pts < 0  # Opus pre-skip
    data = path.read_bytes()
    assert b"\x1c\x53\xbb\x6b" not in data, "the file has a Cues element"
    # The Segment's size is "unknown" (all ones): what a live writer that cannot seek back leaves.
    assert b"\x18\x53\x80\x67\x01\xff\xff\xff\xff\xff\xff\xff" in data, "the Segment has a known size"


def test_real_recording_fixtures_are_what_they_claim(media):
    """Each fixture has the oddity it stands for, measured by decoding (so a passing render test means something)."""
    jitter = mc.frame_indices(media["vfr_jitter"])
    off = [t - i / 30 for t, i in jitter]
    assert [i for _, i in jitter] == list(range(240))  # every frame, in order
    assert 0.008 < max(abs(o) for o in off) <= 0.0096  # jittered by up to 9 ms (+ 1 ms ticks), < half a frame
    assert mc.frame_indices(media["offset_mkv"])[0][0] == pytest.approx(0.021, abs=1e-6)
    assert mc.audio_start_seconds(media["offset_mkv"]) == 0.0
    assert mc.audio_start_seconds(media["late_audio"]) == pytest.approx(0.3 - 1024 / 48000, abs=1e-6)
    # audio_gap: one hole, the AAC frames (1024 samples) whose timestamps fall in 2.0-2.4 s, and nothing else
    ((g0, g1),) = mc.audio_gaps(media["audio_gap"])
    assert (g0, g1) == (pytest.approx(94 * 1024 / 48000), pytest.approx(113 * 1024 / 48000))
    assert mc.audio_gaps(media["cfr30"]) == [] and mc.audio_gaps(media["webm_stream"]) == []
    assert [i for _, i in mc.frame_indices(media["audio_gap"])] == list(range(180))  # the picture is whole
    tail = mc.stream_durations(media["audio_tail"])
    assert tail["video"] == pytest.approx(4.0) and tail["audio"] >= 6.5
    with av.open(str(media["hlg"])) as c:
        frame = next(c.decode(c.streams.video[0]))
        assert frame.format.name == "yuv420p10le" and (frame.color_trc, frame.color_primaries) == (18, 9)
    with av.open(str(media["pq"])) as c:
        assert next(c.decode(c.streams.video[0])).color_trc == 16
