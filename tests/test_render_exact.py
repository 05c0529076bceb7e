"""The renderer against generated media: every frame, every sample where the plan says.

Sources carry their frame index as a barcode and seeded noise as audio
(fixtures/generate.py), so each output frame is checked against the plan and
audio is located by cross-correlation against the pristine source signal.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction
from pathlib import Path

import mediacheck as mc
import numpy as np
import pytest

from fixtures import generate as gen
from worker.output import OutputSpec
from worker.plan import Segment
from worker.render import RenderResult, plan_render, render


def random_segments(n: int, duration: float, seed: int, *, keep=(0.05, 0.15), gap=(0.03, 0.08)) -> list[Segment]:
    """``n`` sorted segments of irregular length (not frame multiples) inside ``duration``."""
    rng = random.Random(seed)
    segs, t = [], rng.uniform(0.0, 0.2)
    for _ in range(n):
        start = t
        t += rng.uniform(*keep)
        segs.append(Segment(round(start, 4), round(t, 4)))
        t += rng.uniform(*gap)
    assert t < duration, "plan does not fit the source"
    return segs


def spread_segments(n: int, duration: float, seed: int) -> list[Segment]:
    """``n`` segments spread over the whole source, about 60 % kept, some touching."""
    rng = random.Random(seed)
    cuts = sorted(rng.uniform(0.1, duration - 0.1) for _ in range(2 * n))
    segs = [Segment(round(cuts[2 * i], 4), round(cuts[2 * i + 1], 4)) for i in range(n)]
    # make two of them touch: a join with no cut
    segs[3] = Segment(segs[3].start, segs[4].start)
    return segs


def check_frames(out: Path, segments: list[Segment], rate: Fraction, indices_of_source: list[int] | None = None):
    """Every output frame against the plan; returns the decoded (pts, index) list."""
    frames = mc.frame_indices(out)
    idx = [i for _, i in frames]
    assert None not in idx, "an output frame has an unreadable barcode (a blend or damage)"
    # Where the plan puts each output frame k: segment j starts at output frame
    # round(T_j * r), T_j the planned cumulative time, and maps frame k to source
    # time s_j + (k/r - T_j).
    bounds, t = [], Fraction(0)
    for s in segments:
        bounds.append((math.floor(t * rate + Fraction(1, 2)), t, s))
        t += Fraction(s.end) - Fraction(s.start)
    planned_total = t
    assert abs(len(idx) - planned_total * rate) <= 1, "output length differs from the plan by more than a frame"
    j = 0
    starts = []
    for k, got in enumerate(idx):
        while j + 1 < len(bounds) and bounds[j + 1][0] <= k:
            j += 1
        _, t0, seg = bounds[j]
        want = (Fraction(seg.start) - t0) * rate + k
        assert abs(got - want) <= 1, f"output frame {k}: source frame {got}, plan says {float(want):.2f}"
        if not starts or starts[-1][0] != j:
            starts.append((j, got))
    # each segment starts within one frame of its planned start
    for j, got in starts:
        assert abs(got - Fraction(segments[j].start) * rate) <= 1
    # no duplicated or missing frames inside a run of consecutive source frames
    for a, b in zip(idx, idx[1:], strict=False):
        assert b != a, "a duplicated frame"
    return frames


def do_render(src: Path, segs, fmt: str, tmp: Path, **spec) -> tuple[RenderResult, Path]:
    out = tmp / f"out.{fmt}"
    result = render(src, segs, OutputSpec(fmt, **spec), out)
    assert out.exists() and result.size_bytes == out.stat().st_size
    return result, out


def test_frame_exact_20_segments(media, tmp_path):
    segs = spread_segments(20, 200.0, seed=20)
    result, out = do_render(media["cfr30"], segs, "mp4", tmp_path)
    frames = check_frames(out, segs, Fraction(30))
    plan = plan_render(media["cfr30"], segs, OutputSpec("mp4"))
    want = [i for p in plan.timeline.pieces for i in range(p.src, p.src + p.length)]
    assert [i for _, i in frames] == want  # exactly the planned frames, in order
    assert result.encoder == "cpu" and result.pieces == 19  # two touching segments joined


def test_frame_exact_1000_segments(media, tmp_path):
    segs = random_segments(1000, 200.0, seed=1000)
    plan = plan_render(media["cfr30"], segs, OutputSpec("mp4"))
    result, out = do_render(media["cfr30"], segs, "mp4", tmp_path)
    frames = check_frames(out, segs, Fraction(30))
    want = [i for p in plan.timeline.pieces for i in range(p.src, p.src + p.length)]
    assert [i for _, i in frames] == want
    # and the audio is still in step after 1000 cuts: the last piece
    check_sync(out, plan, gen.source_audio("cfr30")[0], 48000, pieces=plan.timeline.pieces[-5:])


def test_frame_exact_2997(media, tmp_path):
    segs = spread_segments(20, 20.0, seed=2997)
    _, out = do_render(media["cfr2997"], segs, "mov", tmp_path)
    check_frames(out, segs, Fraction(30000, 1001))


def check_sync(out: Path, plan, ref: np.ndarray, ref_rate: int, *, pieces=None, stream=None, tol_s=0.001):
    """Audio windows in each piece are found in the source where the video says they belong."""
    audio, sr = mc.decode_audio(out, stream)
    mono = audio.mean(axis=0)
    rate = plan.timeline.rate
    pieces = pieces if pieces is not None else plan.timeline.pieces
    win = 2048 if sr >= 32000 else 1024
    worst = 0.0
    for p in pieces:
        if p.a_len < 3 * win:
            continue
        for frac in (0.3, 0.6):
            out_start = p.a_out + int(p.a_len * frac)  # output sample where the window starts
            out_t = Fraction(out_start, sr)
            # the plan: output time -> source time (the video frame grid of the same piece)
            src_t = Fraction(p.src) / rate + (out_t - Fraction(p.out) / rate)
            expected = int(round(src_t * ref_rate))
            probe = mono[out_start : out_start + win]
            pos, peak = mc.find_offset(ref, probe, expected, radius=int(0.05 * ref_rate))
            assert peak > 0.8, f"audio window at output {float(out_t):.3f}s not found in the source (peak {peak:.2f})"
            worst = max(worst, abs(pos - expected) / ref_rate)
    assert worst <= tol_s, f"A/V offset {worst * 1000:.3f} ms"
    return worst


@pytest.mark.parametrize("fmt", ["mp4", "mov", "m4a", "mp3"])
def test_av_sync_and_duration_every_format(media, tmp_path, fmt):
    segs = spread_segments(20, 200.0, seed=7)
    plan = plan_render(media["cfr30"], segs, OutputSpec(fmt))
    _, out = do_render(media["cfr30"], segs, fmt, tmp_path)
    ref = gen.source_audio("cfr30").mean(axis=0)
    check_sync(out, plan, ref, 48000)
    d = mc.stream_durations(out)
    frame = 1 / 30
    if fmt in ("mp4", "mov"):
        assert abs(d["video"] - plan.timeline.duration) <= frame + 1e-6
        # audio and video end within one audio frame (1024 samples) of each other
        assert abs(d["audio"] - d["video"]) <= 1024 / 48000 + 1e-6
    else:
        assert d.get("video") is None
        assert abs(d["audio"] - plan.timeline.duration) <= frame


@pytest.mark.parametrize(("fmt", "cut"), [("m4a", True), ("mp3", True), ("m4a", False)])
def test_no_click_at_joins(media, tmp_path, fmt, cut):
    """A cut sine has a jump where the phases meet; the fades must leave no jump above the sine's own."""
    segs = spread_segments(20, 10.0, seed=3)
    plan = plan_render(media["tone_wav"], segs, OutputSpec(fmt, audio_bitrate=320))
    _, out = do_render(media["tone_wav"], segs, fmt, tmp_path, audio_bitrate=320)
    src = gen.source_audio("tone_wav")[0]
    limit = mc.max_jump(src)
    audio, sr = mc.decode_audio(out)
    x = audio[0]
    joins = [p.a_out for p in plan.timeline.pieces[1:]]
    assert len(joins) >= 18
    worst = max(mc.max_jump(x[max(0, j - 200) : j + 200]) for j in joins)
    assert worst <= limit, f"jump {worst:.4f} at a join exceeds the source's largest jump {limit:.4f}"


def test_click_control_without_fades_is_detected(media, tmp_path, monkeypatch):
    """The click test can fail: with the fades disabled the same plan clicks."""
    import worker.plan

    monkeypatch.setattr(worker.plan, "FADE_S", 0.0)
    segs = spread_segments(20, 10.0, seed=3)
    plan = plan_render(media["tone_wav"], segs, OutputSpec("m4a", audio_bitrate=320))
    _, out = do_render(media["tone_wav"], segs, "m4a", tmp_path, audio_bitrate=320)
    x = mc.decode_audio(out)[0][0]
    limit = mc.max_jump(gen.source_audio("tone_wav")[0])
    worst = max(mc.max_jump(x[max(0, p.a_out - 200) : p.a_out + 200]) for p in plan.timeline.pieces[1:])
    assert worst > 2 * limit


def test_vfr_becomes_cfr_at_average_rate_mapped_by_timestamp(media, tmp_path):
    v = gen.VARIANTS["vfr"]
    segs = [Segment(1.0, 6.0), Segment(9.5, 15.25)]
    plan = plan_render(media["vfr"], segs, OutputSpec("mp4"))
    assert plan.info.video and plan.info.video.is_vfr
    rate = plan.timeline.rate
    assert abs(float(rate) - len(v.kept) / v.duration) < 0.5  # the average rate
    _, out = do_render(media["vfr"], segs, "mp4", tmp_path)
    frames = mc.frame_indices(out)
    pts = [t for t, _ in frames]
    steps = {round(b - a, 4) for a, b in zip(pts, pts[1:], strict=False)}
    assert len(steps) <= 2  # constant frame rate (time base rounding aside)
    kept = np.array(v.kept)
    # each output frame shows the source frame on screen at its planned time
    bounds = [(0.0, segs[0]), (5.0, segs[1])]
    for k, (_, idx) in enumerate(frames):
        t = k / float(rate)
        t0, seg = bounds[0] if t < 5.0 else bounds[1]
        src_t = seg.start + t - t0
        on_screen = kept[kept / 30 <= src_t + 1e-9].max()
        # The frame on screen at the planned time, or the one timestamped nearest
        # to it (fps maps timestamps to the nearest slot): never further than one
        # output frame from where the plan puts it.
        near = abs(v.frame_time(idx) - src_t) <= 1 / float(rate) + 1e-6
        assert idx == on_screen or near, (k, idx, int(on_screen), src_t)
    ref = gen.source_audio("vfr").mean(axis=0)
    check_sync(out, plan, ref, 48000)


def test_rotated_stays_portrait(media, tmp_path):
    result, out = do_render(media["rotated"], None, "mp4", tmp_path, resolution="720p")
    assert (result.width, result.height) == (180, 320)  # never upscaled, portrait kept
    import av

    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.width, s.codec_context.height) == (180, 320)
        frame = next(c.decode(s))
        idx, turns = mc.read_barcode_any_orientation(mc.luma(frame))
        assert idx == 0 and turns in (1, 3)


def test_odd_dimensions(media, tmp_path):
    segs = [Segment(0.5, 2.0), Segment(3.0, 4.5)]
    result, out = do_render(media["odd"], segs, "mp4", tmp_path)
    assert (result.width, result.height) == (320, 240)
    check_frames(out, segs, Fraction(30))


def test_no_audio_source_gets_silent_track_of_right_length(media, tmp_path):
    segs = [Segment(0.5, 2.0), Segment(3.0, 4.5)]
    _, out = do_render(media["noaudio"], segs, "mp4", tmp_path)
    d = mc.stream_durations(out)
    assert abs(d["video"] - 3.0) <= 1 / 30
    assert abs(d["audio"] - d["video"]) <= 1024 / 48000
    audio, _ = mc.decode_audio(out)
    assert np.abs(audio).max() < 1e-4  # silence


def test_mono_44k(media, tmp_path):
    segs = spread_segments(8, 10.0, seed=44)
    plan = plan_render(media["mono44k"], segs, OutputSpec("m4a"))
    _, out = do_render(media["mono44k"], segs, "m4a", tmp_path)
    audio, sr = mc.decode_audio(out)
    assert sr == 44100 and audio.shape[0] == 1
    check_sync(out, plan, gen.source_audio("mono44k")[0], 44100)


@pytest.mark.parametrize(("fmt", "channels"), [("mp4", 6), ("mp3", 2)])
def test_surround(media, tmp_path, fmt, channels):
    segs = [Segment(0.5, 2.0), Segment(2.5, 4.5)]
    plan = plan_render(media["surround51"], segs, OutputSpec(fmt))
    _, out = do_render(media["surround51"], segs, fmt, tmp_path)
    assert mc.decode_audio(out)[0].shape[0] == channels
    # every channel carries the same noise, so the downmix does too
    check_sync(out, plan, gen.source_audio("surround51")[0], 48000)


def test_default_audio_stream_is_used(media, tmp_path):
    segs = [Segment(0.5, 2.0), Segment(2.5, 4.5)]
    _, out = do_render(media["twoaudio"], segs, "m4a", tmp_path)
    x = mc.decode_audio(out)[0].mean(axis=0)
    default = gen.source_audio("twoaudio").mean(axis=0)  # the default (second) stream
    other = gen.source_audio("twoaudio", stream=0).mean(axis=0)
    probe = x[24000:26048]
    _, peak_default = mc.find_offset(default, probe, 24000 + 24000, 4800)
    _, peak_other = mc.find_offset(other, probe, 24000 + 24000, 4800)
    assert peak_default > 0.8 and peak_other < 0.3


@pytest.mark.parametrize(("src", "fmt"), [("audio_wav", "mp3"), ("audio_mp3", "m4a"), ("audio_wav", "m4a")])
def test_audio_only_sources(media, tmp_path, src, fmt):
    segs = spread_segments(10, 20.0, seed=5)
    plan = plan_render(media[src], segs, OutputSpec(fmt))
    assert plan.info.video is None and plan.timeline.rate == plan.info.audio.sample_rate
    _, out = do_render(media[src], segs, fmt, tmp_path)
    sr = plan.info.audio.sample_rate
    check_sync(out, plan, gen.source_audio(src).mean(axis=0), sr)
    d = mc.stream_durations(out)
    assert abs(d["audio"] - plan.timeline.duration) <= 1 / 30


def test_audio_only_output_never_decodes_video(media):
    from worker.presets import load_preset
    from worker.render import command_for

    plan = plan_render(media["cfr30"], None, OutputSpec("m4a"))
    preset = load_preset("m4a")
    args = command_for(plan, preset, "g.txt", "o.m4a")
    assert "-vn" in args[: args.index("-i")]  # video is dropped at the demuxer
    graph = plan.graph(preset)
    assert f"[0:{plan.info.video.index}]" not in graph and "fps=" not in graph


def test_memory_is_flat_in_the_number_of_segments(media, tmp_path):
    """ffmpeg's peak RSS for 1000 segments stays within a small factor of 10 segments."""
    import json
    import subprocess
    import sys

    peaks = {}
    for n in (10, 1000):
        segs = random_segments(n, 200.0, seed=n) if n == 1000 else spread_segments(n, 200.0, seed=n)
        plan = tmp_path / f"plan{n}.json"
        plan.write_text(json.dumps({"segments": [s.__dict__ for s in segs]}))
        script = (
            "import json,resource,sys\n"
            "from worker.render import render\nfrom worker.output import OutputSpec\n"
            "from worker.plan import parse_segments\n"
            "segs=parse_segments(json.load(open(sys.argv[2]))['segments'])\n"
            "render(sys.argv[1], segs, OutputSpec('mp4'), sys.argv[3])\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, str(media["cfr30"]), str(plan), str(tmp_path / f"o{n}.mp4")],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[n] = int(done.stdout.split()[-1])
    assert peaks[1000] < 3 * peaks[10], peaks


def test_nvenc_failure_falls_back_to_cpu_within_the_job(media, tmp_path):
    """Told NVENC works when it does not (a session that will not open), the job still completes on the CPU."""
    from worker.encoders import NvencStatus

    segs = [Segment(0.5, 2.0), Segment(3.0, 4.5)]
    out = tmp_path / "out.mp4"
    result = render(media["cfr2997"], segs, OutputSpec("mp4"), out, nvenc=NvencStatus(True, "assumed", 0.0))
    assert result.encoder == "cpu" and result.video_codec == "libx264"
    assert result.nvenc_fallback and "ffmpeg exited" in result.nvenc_fallback
    check_frames(out, segs, Fraction(30000, 1001))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # the failed NVENC attempt left nothing
