"""The renderer against generated media: every frame, every sample where the plan says.

Sources carry their frame index as a barcode and seeded noise as audio
(fixtures/generate.py), so each output frame is checked against the plan and
audio is located by cross-correlation against the pristine source signal.
"""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path

import mediacheck as mc
import numpy as np
import oracle
import pytest

from fixtures import generate as gen
from worker.output import OutputSpec
from worker.plan import Segment
from worker.planner import plan_render
from worker.render import RenderResult, render


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


def expected_for(name: str, segs, fmt: str, src: Path | None = None) -> oracle.Expected:
    """The oracle's timeline (tests/oracle.py) for a render of fixture ``name``: never from worker/plan.py."""
    v = gen.VARIANTS[name]
    plan = None if segs is None else [(s.start, s.end) for s in segs]
    if fmt in ("mp4", "mov") and v.has_video:
        slots = v.frames if v.kept is None else round(v.duration * v.fps)
        return oracle.expected(plan, rate=v.fps, origin=Fraction(0), first=0, end=slots)
    # Audio-only outputs are cut on the audio's own sample grid, from its first decoded sample.
    assert src is not None and v.sample_rate is not None and v.samples is not None
    origin = Fraction(mc.audio_start_seconds(src)).limit_denominator(10**6)
    return oracle.expected(plan, rate=Fraction(v.sample_rate), origin=origin, first=0, end=v.samples)


def check_frames(out: Path, segments: list[Segment], rate: Fraction, frames: int = 10**9):
    """Every output frame against the oracle's plan; returns the decoded (pts, index) list.

    The promises: each output frame shows exactly the source frame the oracle puts in its slot, each piece
    starts on the output timeline within half a frame of the plan (``round(T_j * rate)``) and in the source
    within one frame of its planned start, and no source frame appears twice.
    """
    got = mc.frame_indices(out)
    idx = [i for _, i in got]
    assert None not in idx, "an output frame has an unreadable barcode (a blend or damage)"
    exp = oracle.expected([(s.start, s.end) for s in segments], rate=rate, origin=Fraction(0), first=0, end=frames)
    assert len(idx) == exp.total, f"{len(idx)} frames, the plan has {exp.total}"
    for k, (shown, want) in enumerate(zip(idx, exp.slots(), strict=True)):
        assert shown == want, f"output frame {k}: source frame {shown}, the plan says {want}"
    for span in exp.spans:
        assert abs(span.out - span.planned_out) <= Fraction(1, 2)  # half a frame on the output timeline
        assert abs(span.src - span.planned_src) <= 1  # each piece starts within one frame of the plan
    for k, shown in enumerate(idx):
        # The half-frame rule: every frame's content within half a frame of the plan's source time for it.
        assert abs(oracle.plan_error(exp, k, shown)) <= Fraction(1, 2), f"output frame {k} is a frame off the plan"
    assert len(set(idx)) == len(idx), "a duplicated frame"
    return got


def do_render(src: Path, segs, fmt: str, tmp: Path, **spec) -> tuple[RenderResult, Path]:
    out = tmp / f"out.{fmt}"
    result = render(src, segs, OutputSpec(fmt, **spec), out)
    assert out.exists() and result.size_bytes == out.stat().st_size
    return result, out


def test_frame_exact_20_segments(media, tmp_path):
    segs = spread_segments(20, 200.0, seed=20)
    result, out = do_render(media["cfr30"], segs, "mp4", tmp_path)
    check_frames(out, segs, Fraction(30), frames=6000)  # exactly the oracle's frames, in order
    assert result.encoder == "cpu" and result.pieces == 19  # two touching segments joined


def test_frame_exact_1000_segments(media, tmp_path):
    segs = random_segments(1000, 200.0, seed=1000)
    result, out = do_render(media["cfr30"], segs, "mp4", tmp_path)
    check_frames(out, segs, Fraction(30), frames=6000)
    # and the audio is in step in every one of the 1000 pieces, the last as much as the first
    exp = expected_for("cfr30", segs, "mp4")
    rep = check_sync(out, exp, gen.source_audio("cfr30")[0], 48000)
    assert rep.measured == len(exp.spans) == 1000 and rep.too_short == 0


def test_frame_exact_2997(media, tmp_path):
    segs = spread_segments(20, 20.0, seed=2997)
    _, out = do_render(media["cfr2997"], segs, "mov", tmp_path)
    check_frames(out, segs, Fraction(30000, 1001))


def check_sync(out: Path, exp: oracle.Expected, ref: np.ndarray, ref_rate: int, *, tol_s=0.001, stream=None):
    """Audio of every piece located in the source where the picture says it belongs (≤ ``tol_s``).

    Every piece long enough to measure is measured (windows shrink down to 10 ms for short pieces); the
    number measured and the number too short are asserted here and returned, never silently skipped.
    """
    assert stream is None
    rep = oracle.measure_sync(out, exp, ref, ref_rate)
    assert rep.measured + rep.too_short == len(exp.spans)
    assert rep.worst_s <= tol_s, f"A/V offset {rep.worst_s * 1000:.3f} ms"
    return rep


def declared_samples(out: Path) -> int:
    """Audio length in samples as the container declares it (mp4/m4a trim the AAC tail padding so; mp3's
    gapless header is applied by the decoder)."""
    import av

    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        if a.duration:
            return round(a.duration * a.time_base * a.codec_context.sample_rate)
    return mc.stream_durations(out)["audio_samples"]


@pytest.mark.parametrize("fmt", ["mp4", "mov", "m4a", "mp3"])
def test_av_sync_and_duration_every_format(media, tmp_path, fmt):
    segs = spread_segments(20, 200.0, seed=7)
    _, out = do_render(media["cfr30"], segs, fmt, tmp_path)
    exp = expected_for("cfr30", segs, fmt, media["cfr30"])
    ref = gen.source_audio("cfr30").mean(axis=0)
    rep = check_sync(out, exp, ref, 48000)
    assert rep.measured == len(exp.spans) and rep.too_short == 0
    d = mc.stream_durations(out)
    # the audio lasts as long as the plan to one sample per piece (and, for video outputs, as the video)
    want_samples = round(Fraction(exp.total) / exp.rate * 48000)
    assert abs(declared_samples(out) - want_samples) <= len(exp.spans)
    if fmt in ("mp4", "mov"):
        assert d["video_frames"] == exp.total
    else:
        assert d.get("video") is None


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


def test_vfr_becomes_cfr_at_nominal_rate_mapped_by_timestamp(media, tmp_path):
    """Frames dropped under load: output at 30 fps, each slot the frame on screen at the slot's middle."""
    v = gen.VARIANTS["vfr"]
    segs = [Segment(1.0, 6.0), Segment(9.5, 15.25)]
    plan = plan_render(media["vfr"], segs, OutputSpec("mp4"))
    assert plan.info.video and plan.info.video.is_vfr
    assert plan.timeline.rate == 30  # the nominal rate, not the average of what is left after drops
    _, out = do_render(media["vfr"], segs, "mp4", tmp_path)
    frames = mc.frame_indices(out)
    pts = [t for t, _ in frames]
    steps = {round(b - a, 4) for a, b in zip(pts, pts[1:], strict=False)}
    assert len(steps) <= 2  # constant frame rate (time base rounding aside)
    kept = np.array(v.kept)
    exp = expected_for("vfr", segs, "mp4")
    assert len(frames) == exp.total
    for k, ((_, idx), slot) in enumerate(zip(frames, exp.slots(), strict=True)):
        on_screen = kept[kept / 30 <= (slot + 0.5) / 30].max()  # the frame shown at the slot's middle
        assert idx == on_screen, (k, slot, idx, int(on_screen))
    # every source frame in the kept spans appears, exactly once in a run (drops repeat their neighbour)
    shown = {i for _, i in frames}
    inside = {int(i) for s in exp.spans for i in kept if s.src <= i < s.src + s.length}
    assert inside <= shown
    ref = gen.source_audio("vfr").mean(axis=0)
    rep = check_sync(out, exp, ref, 48000)
    assert rep.measured == 2


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
    _, out = do_render(media["mono44k"], segs, "m4a", tmp_path)
    audio, sr = mc.decode_audio(out)
    assert sr == 44100 and audio.shape[0] == 1
    exp = expected_for("mono44k", segs, "m4a", media["mono44k"])
    rep = check_sync(out, exp, gen.source_audio("mono44k")[0], 44100)
    # 8 pieces, one of them (a random cut) shorter than two 10 ms windows plus its fades
    assert (rep.measured, rep.too_short) == (7, 1)


@pytest.mark.parametrize(("fmt", "channels"), [("mp4", 6), ("mp3", 2)])
def test_surround(media, tmp_path, fmt, channels):
    segs = [Segment(0.5, 2.0), Segment(2.5, 4.5)]
    _, out = do_render(media["surround51"], segs, fmt, tmp_path)
    assert mc.decode_audio(out)[0].shape[0] == channels
    # every channel carries the same noise, so the downmix does too
    exp = expected_for("surround51", segs, fmt, media["surround51"])
    rep = check_sync(out, exp, gen.source_audio("surround51")[0], 48000)
    assert rep.measured == 2


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
    _, out = do_render(media[src], segs, fmt, tmp_path)
    sr = gen.VARIANTS[src].sample_rate
    exp = expected_for(src, segs, fmt, media[src])
    rep = check_sync(out, exp, gen.source_audio(src).mean(axis=0), sr)
    # 10 pieces, one of them (a random cut) too short for two 10 ms windows beside its fades
    assert (rep.measured, rep.too_short) == (9, 1)
    # one sample per piece: the plan's length, on the output's sample grid
    out_sr = mc.decode_audio(out)[1]
    want = round(Fraction(exp.total) / exp.rate * out_sr)
    assert abs(declared_samples(out) - want) <= len(exp.spans)


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
