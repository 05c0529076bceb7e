"""Every file a real app writes renders (issue 17): unused streams are ignored, cover art is kept, degenerate
pictures are the source's fault, the new containers render exactly, and exports agree with the render.

Sources are fixtures/apps.py's: barcode frames and seeded noise, so every output frame is checked against the
plan by the independent oracle (tests/oracle.py) and audio is located by cross-correlation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import mediacheck as mc
import numpy as np
import oracle
import pytest

from fixtures import apps
from fixtures import generate as gen
from worker.errors import ErrorCode, InvalidJob, RenderError
from worker.exports.file import export_file
from worker.output import OutputSpec
from worker.plan import Segment
from worker.probe import probe
from worker.render import render
from worker.settings import Settings

CPU = Settings(nvenc="off")
CUT = [Segment(0.31, 1.27), Segment(1.52, 2.013), Segment(2.4, 2.9)]


@pytest.fixture(scope="session")
def app_media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = gen.cache_dir() or tmp_path_factory.mktemp("apps")
    return {name: apps.make(name, out) for name in apps.APP_VARIANTS}


def _cover_bytes(path: Path) -> tuple[str, bytes] | None:
    """(codec, bytes) of a file's attached picture, read packet-wise (nothing decoded)."""
    with av.open(str(path)) as c:
        for s in c.streams.video:
            if s.disposition & av.stream.Disposition.attached_pic:
                for packet in c.demux(s):
                    if packet.size:
                        return s.codec_context.name, bytes(packet)
    return None


def _starts(path: Path) -> tuple[float, float]:
    """(first video frame, first audio sample) on the render timeline: seconds from the container's start."""
    with av.open(str(path)) as c:
        base = (c.start_time or 0) / 1e6
        starts = []
        for kind in ("video", "audio"):
            streams = [s for s in getattr(c.streams, kind) if not s.disposition & av.stream.Disposition.attached_pic]
            t = 0.0
            if streams:
                c.seek(0)
                for frame in c.decode(streams[0]):
                    t = float(frame.pts * frame.time_base) - base
                    break
            starts.append(t)
    return starts[0], starts[1]


def _check_frames(out: Path, segs: list[Segment] | None, v: gen.Variant, src: Path | None = None) -> None:
    """Every output frame shows the source frame the oracle's plan puts there, within half a frame of it."""
    assert v.fps is not None and v.frames is not None
    plan = None if segs is None else [(s.start, s.end) for s in segs]
    # The grid is anchored on the first frame (a TS or AVI's first frame is not at the container's start).
    origin = Fraction(_starts(src)[0]).limit_denominator(10**6) if src is not None else Fraction(0)
    exp = oracle.expected(plan, rate=v.fps, origin=origin, first=0, end=v.frames)
    if v.rotation:  # the picture was turned upright by the render: read the barcode in any orientation
        with av.open(str(out)) as c:
            got = [mc.read_barcode_any_orientation(mc.luma(f))[0] for f in c.decode(c.streams.video[0])]
    else:
        got = [i for _, i in mc.frame_indices(out)]
    assert len(got) == exp.total
    assert got == exp.slots()
    assert all(abs(oracle.plan_error(exp, k, shown)) <= Fraction(1, 2) for k, shown in enumerate(got))


# --- 1. streams the render does not use -------------------------------------------------------------------------

IGNORED = {
    "podcast_m4a_png": [("video", "png")],
    "podcast_mp3_jpeg": [("video", "mjpeg")],
    "video_cover": [("subtitle", "mov_text"), ("video", "png")],
    "phone_mov": [("subtitle", "mov_text"), ("data", None)],
    "mkv_subs": [("subtitle", "srt"), ("subtitle", "webvtt"), ("attachment", None)],
}


@pytest.mark.parametrize("name", sorted(IGNORED))
def test_probe_lists_the_ignored_streams_and_why(app_media, name):
    out = subprocess.run(
        [sys.executable, "-m", "worker.cli", "probe", str(app_media[name])], capture_output=True, text=True, check=True
    )
    doc = json.loads(out.stdout)
    got = sorted((s["type"], s["codec"] if s["type"] not in ("data", "attachment") else None) for s in doc["ignored"])
    assert got == sorted(IGNORED[name])
    assert all(s["reason"] for s in doc["ignored"])
    # The chosen streams are the ones the render decodes: never an ignored one.
    used = {doc[k]["index"] for k in ("video", "audio") if doc[k]}
    assert not used & {s["index"] for s in doc["ignored"]}


@pytest.mark.parametrize("name", ["video_cover", "phone_mov", "mkv_subs"])
@pytest.mark.parametrize("fmt", ["mp4", "mov", "m4a", "mp3"])
def test_unused_streams_never_refuse_a_file(app_media, tmp_path, name, fmt):
    v = apps.APP_VARIANTS[name]
    out = tmp_path / f"out.{fmt}"
    result = render(app_media[name], CUT, OutputSpec(fmt), out, settings=CPU)
    assert out.stat().st_size == result.size_bytes > 0
    if fmt in ("mp4", "mov"):
        if v.rotation:
            assert (result.width, result.height) == (v.height, v.width)  # a portrait phone clip stays portrait
        _check_frames(out, CUT, v, app_media[name])
    with av.open(str(out)) as c:  # nothing of the ignored streams is carried into a video or audio output
        assert not list(c.streams.subtitles) and not list(c.streams.data)


def test_ignored_decoders_never_run(app_media, tmp_path, monkeypatch):
    """ffmpeg is allowed exactly the chosen streams' decoders: the cover's and the subtitles' are refused."""
    import worker.ffmpeg

    seen: list[list[str]] = []
    real_run = worker.ffmpeg.run

    def spy(args, **kw):
        seen.append(list(args))
        return real_run(args, **kw)

    monkeypatch.setattr(worker.ffmpeg, "run", spy)
    render(app_media["video_cover"], None, OutputSpec("mp4", smart=False), tmp_path / "o.mp4", settings=CPU)
    (argv,) = seen
    assert argv[argv.index("-codec_whitelist") + 1] == "h264,aac"
    # A smart render's ffmpeg runs (its audio, its encoded frames, the join) are held to the same decoders.
    seen.clear()
    render(app_media["video_cover"], None, OutputSpec("mp4"), tmp_path / "s.mp4", settings=CPU)
    allowed = [set(a[a.index("-codec_whitelist") + 1].split(",")) for a in seen if "-codec_whitelist" in a]
    assert len(seen) >= 2 and allowed and all(names <= {"h264", "aac"} for names in allowed), seen


# --- 2. cover art --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["podcast_m4a_png", "podcast_m4a_jpeg", "podcast_mp3_png", "podcast_mp3_jpeg"])
@pytest.mark.parametrize("fmt", ["m4a", "mp3"])
def test_cover_art_is_copied_byte_for_byte(app_media, tmp_path, name, fmt):
    src = app_media[name]
    out = tmp_path / f"out.{fmt}"
    result = render(src, CUT, OutputSpec(fmt), out, settings=CPU)
    assert result.notes == ()
    assert _cover_bytes(out) == _cover_bytes(src)  # same codec (JPEG stays JPEG, PNG stays PNG), same bytes
    # The audio is still the cut, to the sample: located in the source noise where the plan puts it.
    v = apps.APP_VARIANTS[name]
    assert v.sample_rate is not None
    exp = oracle.expected(
        [(s.start, s.end) for s in CUT],
        rate=Fraction(v.sample_rate),
        origin=Fraction(_starts(src)[1]).limit_denominator(10**6),
        first=0,
        end=v.samples or 0,
    )
    ref = gen.source_audio(v)[0]
    report = oracle.measure_sync(out, exp, ref, v.sample_rate, ref_start=float(exp.origin))
    assert report.measured == len(exp.spans) and report.worst_s <= 0.001


def test_cover_art_an_output_cannot_carry_is_dropped_with_a_note(app_media, tmp_path):
    out = tmp_path / "out.m4a"
    result = render(app_media["podcast_m4a_bmp"], None, OutputSpec("m4a"), out, settings=CPU)
    assert _cover_bytes(out) is None
    assert len(result.notes) == 1 and "bmp" in result.notes[0]


def test_video_outputs_carry_no_cover(app_media, tmp_path):
    out = tmp_path / "out.mp4"
    render(app_media["video_cover"], None, OutputSpec("mp4"), out, settings=CPU)
    assert _cover_bytes(out) is None
    with av.open(str(out)) as c:
        assert len(c.streams.video) == 1


# --- 3. degenerate pictures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mp4", "mov"])
def test_a_one_pixel_picture_is_the_sources_fault(app_media, tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    with pytest.raises(RenderError) as info:
        render(app_media["one_pixel"], None, OutputSpec(fmt), out, settings=CPU)
    assert info.value.code is ErrorCode.SOURCE_UNREADABLE and "1x1" in info.value.message
    assert not list(tmp_path.iterdir())
    cli = subprocess.run(
        [sys.executable, "-m", "worker.cli", "render", str(app_media["one_pixel"]), "--format", fmt, "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 3 and "source_unreadable" in cli.stderr and "1x1" in cli.stderr
    assert "Traceback" not in cli.stderr and not out.exists()


def test_tiny_and_odd_screen_recordings_render_exactly(app_media, tmp_path):
    for name in ("screen_tiny", "screen_odd"):
        out = tmp_path / f"{name}.mp4"
        result = render(app_media[name], [Segment(0.2, 0.9), Segment(1.1, 1.8)], OutputSpec("mp4"), out, settings=CPU)
        v = apps.APP_VARIANTS[name]
        assert v.width is not None and v.height is not None
        assert (result.width, result.height) == (v.width - v.width % 2, v.height - v.height % 2)
        if name == "screen_odd":  # the tiny one is too small for a readable barcode; its frames are counted
            _check_frames(out, [Segment(0.2, 0.9), Segment(1.1, 1.8)], v, app_media[name])
        else:
            with av.open(str(out)) as c:
                assert c.streams.video[0].frames == round(1.4 * 60)


# --- 6. containers and codecs real apps write ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["avchd_mts", "recorder_ts", "screen_avi", "resolve_dnxhr"])
def test_new_video_containers_render_exactly_and_in_sync(app_media, tmp_path, name):
    v = apps.APP_VARIANTS[name]
    out = tmp_path / "out.mp4"
    render(app_media[name], CUT, OutputSpec("mp4"), out, settings=CPU)
    _check_frames(out, CUT, v, app_media[name])
    assert v.fps is not None and v.sample_rate is not None
    v_start, a_start = _starts(app_media[name])
    origin = Fraction(v_start).limit_denominator(10**6)
    exp = oracle.expected([(s.start, s.end) for s in CUT], rate=v.fps, origin=origin, first=0, end=v.frames or 0)
    # Source sample 0 plays at a_start, plus what the source's own codec delays it by (AC-3's 256 samples of
    # priming stay in a TS, where no container field trims them): measured on the source, as a player hears it.
    ref = gen.source_audio(v)[0]
    decoded = mc.decode_audio(app_media[name])[0].mean(axis=0)
    at = v.sample_rate // 10
    pos, peak = mc.find_offset(ref, decoded[at : at + 2048], at, v.sample_rate // 20)
    assert peak > 0.8
    report = oracle.measure_sync(out, exp, ref, v.sample_rate, ref_start=a_start + (at - pos) / v.sample_rate)
    assert report.measured == len(exp.spans) and report.worst_s <= 0.001, report


@pytest.mark.parametrize("name", ["garageband_aiff", "logic_caf", "voice_3gp"])
@pytest.mark.parametrize("fmt", ["m4a", "mp3"])
def test_new_audio_containers_render_to_the_sample(app_media, tmp_path, name, fmt):
    v = apps.APP_VARIANTS[name]
    src = app_media[name]
    out = tmp_path / f"out.{fmt}"
    render(src, CUT, OutputSpec(fmt), out, settings=CPU)
    assert v.sample_rate is not None
    origin = Fraction(_starts(src)[1]).limit_denominator(10**6)
    exp = oracle.expected([(s.start, s.end) for s in CUT], rate=Fraction(v.sample_rate), origin=origin, first=0,
                          end=v.samples or 0)  # fmt: skip
    if name == "voice_3gp":
        # AMR-NB is a speech codec: it does not keep noise well enough to correlate; the length is the plan's
        # (the declared one: decoders here do not trim an m4a's end padding).
        with av.open(str(out)) as c:
            a = c.streams.audio[0]
            assert a.duration is not None and a.time_base is not None
            assert abs(float(a.duration * a.time_base) - float(exp.total / exp.rate)) < 0.001
        return
    report = oracle.measure_sync(out, exp, gen.source_audio(v)[0], v.sample_rate, ref_start=float(origin))
    assert report.measured == len(exp.spans) and report.worst_s <= 0.001, report


HOSTILE_SUFFIXES = [".ts", ".mts", ".avi", ".aiff", ".caf", ".amr", ".3gp"]


@pytest.mark.parametrize("suffix", HOSTILE_SUFFIXES)
def test_a_crafted_file_of_a_new_container_never_reads_another_file(tmp_path, suffix):
    """A playlist or concat script named like a file of the new containers: its target is never opened."""
    from test_bad_input import fifo_watch

    secret = tmp_path / "secret.ts"
    with fifo_watch(secret) as state:
        hls = gen.make_playlist(tmp_path, secret, filename=f"playlist{suffix}")
        concat = tmp_path / f"concat{suffix}"
        concat.write_text(f"ffconcat version 1.0\nfile '{secret.name}'\n")
        for crafted in (hls, concat):
            with pytest.raises(RenderError) as info:
                render(crafted, None, OutputSpec("mp4"), tmp_path / "o.mp4", settings=CPU)
            assert info.value.code is ErrorCode.SOURCE_UNREADABLE
        time.sleep(0.1)
    assert not state["opened"]
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("muxer", ["mpegts", "avi"])
def test_growing_frames_in_a_new_container_fail_source_too_large(media, tmp_path, muxer):
    """The decode bound holds in the new containers: 16x16 frames, then 16000x16000 ones, in TS and AVI."""
    src = tmp_path / f"grow.{'ts' if muxer == 'mpegts' else 'avi'}"
    gen._run_ffmpeg(
        ["-i", str(media["grow_frames"]), "-c", "copy", "-bsf:v", "h264_mp4toannexb", "-f", muxer, str(src)]
    )
    with pytest.raises(RenderError) as info:
        render(src, None, OutputSpec("mp4"), tmp_path / "o.mp4", settings=CPU)
    assert info.value.code is ErrorCode.SOURCE_TOO_LARGE
    assert not (tmp_path / "o.mp4").exists()


# --- 4. the half-frame rule at every common rate --------------------------------------------------------------------

RATES = [Fraction(24000, 1001), Fraction(25), Fraction(30000, 1001), Fraction(30), Fraction(50),
         Fraction(60000, 1001), Fraction(60)]  # fmt: skip


@pytest.fixture(scope="module")
def rate_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[Fraction, tuple[gen.Variant, Path]]:
    d = tmp_path_factory.mktemp("rates")
    out = {}
    for rate in RATES:
        v = gen._av(f"r{rate.numerator}", fps=rate, seconds=6, width=160, height=90, audio_seeds=(rate.numerator,))
        path = d / v.filename
        gen._encode_av(v, path, d)
        out[rate] = (v, path)
    return out


@pytest.mark.parametrize("rate", RATES, ids=lambda r: f"{float(r):.3f}")
def test_every_output_frame_is_within_half_a_frame_of_the_plan(rate_sources, tmp_path, rate):
    v, src = rate_sources[rate]
    rng = np.random.default_rng(int(rate * 1000))
    cuts = np.sort(rng.uniform(0.1, 5.8, 24)).round(4)
    segs = [Segment(float(cuts[i]), float(cuts[i + 1])) for i in range(0, 24, 2)]
    out = tmp_path / "out.mp4"
    render(src, segs, OutputSpec("mp4"), out, settings=CPU)
    _check_frames(out, segs, v)


# --- 5. exports agree with the render and with the media ------------------------------------------------------------


@pytest.mark.parametrize("name", ["video_cover", "phone_mov", "mkv_subs", "podcast_m4a_png", "avchd_mts"])
def test_exports_of_app_files_agree_with_the_render(app_media, tmp_path, name):
    out = tmp_path / "cut.otio"
    result = export_file(str(app_media[name]), CUT, "otio", str(out))
    rendered = render(app_media[name], CUT, OutputSpec("m4a"), tmp_path / "o.m4a", settings=CPU)
    assert result.pieces == rendered.pieces


def test_an_edl_at_a_rate_cmx_cannot_carry_is_refused(tmp_path):
    v = gen._av("r20", fps=Fraction(20), seconds=2, width=160, height=90, audio_seeds=(20,))
    src = tmp_path / v.filename
    gen._encode_av(v, src, tmp_path)
    out = tmp_path / "cut.edl"
    with pytest.raises(InvalidJob) as info:
        export_file(str(src), None, "edl", str(out))
    assert "20 fps" in info.value.message and "xmeml" in info.value.message and "fcpxml" in info.value.message
    assert not out.exists() and not list(tmp_path.glob(".cut.edl*"))
    assert export_file(str(src), None, "xmeml", str(tmp_path / "cut.xml")).pieces == 1


def test_an_audio_only_edl_ends_inside_the_media_and_within_half_a_frame(app_media, tmp_path):
    src = app_media["podcast_m4a_png"]
    info = probe(src)
    assert info.audio is not None
    end = info.audio.start + info.audio.duration
    rng = np.random.default_rng(5)
    cuts = np.sort(rng.uniform(0.05, end - 0.05, 24)).round(5)
    segs = [Segment(float(cuts[i]), float(cuts[i + 1])) for i in range(0, 22, 2)]
    segs.append(Segment(float(cuts[22]), end + 0.5))  # runs past the end: clamped to it
    out = tmp_path / "cut.edl"
    export_file(str(src), segs, "edl", str(out))

    def frames(tc: str) -> int:
        h, m, s, f = (int(x) for x in tc.replace(";", ":").split(":"))
        return ((h * 60 + m) * 60 + s) * 30 + f

    # One event per piece and channel group; the pieces in record order.
    events = sorted({(frames(e[6]), frames(e[4]), frames(e[5])) for e in
                     (line.split() for line in out.read_text().splitlines() if line[:3].isdigit())})  # fmt: skip
    assert len(events) == len(segs)
    kept = Fraction(0)
    for seg, (rec_in, src_in, src_out) in zip(segs, events, strict=True):
        assert src_out <= end * 30  # never past the media's end
        # The source frame at the event's record in point is within half a frame of the plan's.
        planned = (Fraction(seg.start) - kept) * 30 + rec_in
        assert abs(src_in - planned) <= Fraction(1, 2), (seg, rec_in, src_in, float(planned))
        kept += Fraction(min(seg.end, end)) - Fraction(seg.start)
