"""Decoding is bounded by the limits for every frame, and a tenant's odd source fails with a source code.

The crafted sources come from fixtures/generate.py (kind "hostile"). Renders go
through :func:`worker.render.render`, the function the queue worker calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import pytest

from fixtures import generate as gen
from worker.errors import ErrorCode, RenderError
from worker.output import OutputSpec
from worker.planner import plan_render
from worker.presets import load_preset
from worker.probe import probe
from worker.render import command_for, render
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
# The bound the issue sets for a render of the growing-frames source, ffmpeg included.
RSS_BOUND_MB = 600
CPU = Settings(nvenc="off")  # the default limits; no NVENC probe, so only the render's own ffmpeg runs

_MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from worker.errors import RenderError
    from worker.output import OutputSpec
    from worker.render import render
    from worker.settings import Settings

    source, output, max_pixels = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    result = {"code": None, "message": None}
    try:
        render(source, None, OutputSpec("mp4"), output, settings=Settings(nvenc="off", max_source_pixels=max_pixels))
    except RenderError as exc:
        result = {"code": exc.code.value, "message": exc.message}
    # VmHWM, not RUSAGE_SELF: Python starts children with vfork, and Linux carries
    # the high-water mark of the mm an exec replaced into ru_maxrss, so RUSAGE_SELF
    # here would report the (large) test runner's peak rather than this render's.
    hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    result["self_mb"] = hwm_kb / 1024
    # ffmpeg is this process's child and has been waited for: its peak is here
    # (by the same vfork effect it may include this process's RSS at the time
    # ffmpeg started, so it errs high, which is the safe side for a bound).
    result["children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result["output_exists"] = output.exists() or any(output.parent.glob("." + output.name + "*"))
    print(json.dumps(result))
    """
)


def measured_render(source: Path, out_dir: Path, max_pixels: int) -> dict:
    """Render ``source`` in a fresh interpreter; its outcome and the peak RSS of it and of ffmpeg.

    A fresh process, so the peak is this render's alone. The worker process and
    its ffmpeg child each report their own peak; their sum bounds the peak of the
    two together from above.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(source), str(out_dir / "out.mp4"), str(max_pixels)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# --- frames that grow mid-stream -------------------------------------------------------------------------------


def test_growing_frames_pass_the_probe(media):
    """The header and the first frame are 16x16: no check on the probe alone can see what follows."""
    v = gen.VARIANTS["grow_frames"]
    info = probe(media["grow_frames"])
    assert info.video is not None and (info.video.width, info.video.height) == (v.width, v.height)
    big_w, big_h = v.extra["big_size"]
    assert big_w * big_h > Settings().max_source_pixels


def test_growing_frames_fail_source_too_large_with_bounded_memory(media, tmp_path):
    limit = Settings().max_source_pixels
    got = measured_render(media["grow_frames"], tmp_path / "out", limit)
    assert got["code"] == ErrorCode.SOURCE_TOO_LARGE.value, got
    big_w, big_h = gen.VARIANTS["grow_frames"].extra["big_size"]
    assert f"{big_w}x{big_h}" in got["message"] and str(limit) in got["message"]
    assert not got["output_exists"]
    assert not list((tmp_path / "out").iterdir())  # no partial output either
    peak = got["self_mb"] + got["children_mb"]
    assert peak < RSS_BOUND_MB, got


def test_growing_frames_really_cost_memory_when_allowed(media, tmp_path):
    """Control: with a limit above the big frames, the same render does decode them, past the bound.

    Without this, a fixture whose big frames had stopped being big would make
    the test above pass for the wrong reason.
    """
    big_w, big_h = gen.VARIANTS["grow_frames"].extra["big_size"]
    got = measured_render(media["grow_frames"], tmp_path / "out", big_w * big_h)
    assert got["code"] is None, got
    assert got["children_mb"] > RSS_BOUND_MB, got


def test_pixel_limit_reaches_ffmpeg(media):
    """The configured limit, not a default, is what ffmpeg is given for the input."""
    limits_settings = Settings(max_source_pixels=320 * 180)
    from worker.planner import Limits

    plan = plan_render(media["cfr30"], None, OutputSpec("mp4"), limits=Limits.from_settings(limits_settings))
    args = command_for(plan, load_preset("mp4"), "g.txt", "o.mp4")
    before_input = args[: args.index("-i")]
    assert before_input[before_input.index("-max_pixels") + 1] == "57600"


def test_probe_refuses_declared_frames_over_the_limit(media):
    v = gen.VARIANTS["cfr30"]
    assert v.width is not None and v.height is not None
    pixels = v.width * v.height
    assert probe(media["cfr30"], max_pixels=pixels).video is not None
    with pytest.raises(RenderError) as info:
        probe(media["cfr30"], max_pixels=pixels - 1)
    assert info.value.code is ErrorCode.SOURCE_TOO_LARGE
    with pytest.raises(RenderError) as info:
        render(media["cfr30"], None, OutputSpec("mp4"), Path("/nonexistent/never.mp4"),
               settings=Settings(nvenc="off", max_source_pixels=pixels - 1))  # fmt: skip
    assert info.value.code is ErrorCode.SOURCE_TOO_LARGE


def test_probe_has_a_wall_clock_budget(media):
    with pytest.raises(RenderError) as info:
        probe(media["cfr30"], budget_s=0.0)
    assert info.value.code is ErrorCode.SOURCE_UNREADABLE and "too long" in info.value.message


# --- decoders off the allowlist --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ffv1_twins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same 2 s clip twice: FFV1 (a decoder no talking-head source needs) and H.264, both in MKV."""
    d = tmp_path_factory.mktemp("ffv1")
    out = []
    for k, codec in enumerate(("ffv1", "libx264")):
        path = d / f"clip{k}.mkv"  # names that don't give the codec away to a message check
        gen._run_ffmpeg(["-f", "lavfi", "-i", "testsrc=s=64x64:r=10:d=2", "-f", "lavfi", "-i", "sine=r=48000:d=2",
                         "-c:v", codec, "-pix_fmt", "yuv420p", "-c:a", "flac", str(path)])  # fmt: skip
        out.append(path)
    return out[0], out[1]


def test_probe_refuses_a_decoder_off_the_allowlist(ffv1_twins, tmp_path):
    ffv1, _ = ffv1_twins
    with av.open(str(ffv1)) as c:  # control: the file is fine, PyAV decodes it without the allowlist
        assert next(c.decode(video=0)).width == 64
    with pytest.raises(RenderError) as info:
        render(ffv1, None, OutputSpec("mp4"), tmp_path / "o.mp4", settings=CPU)
    assert info.value.code is ErrorCode.SOURCE_UNREADABLE and "ffv1 decoder" in info.value.message
    assert not (tmp_path / "o.mp4").exists()


def test_ffmpeg_refuses_a_decoder_off_the_allowlist(ffv1_twins, tmp_path, monkeypatch):
    """ffmpeg holds the decoder allowlist itself, even where the probe was fooled.

    The probe is made to describe the FFV1 file as its H.264 twin (as it would
    a file that shows PyAV one thing and ffmpeg another); everything after it is
    the worker's real path: render() -> graph.ffmpeg_args -> ffmpeg.run.
    """
    import dataclasses

    import worker.planner

    ffv1, h264 = ffv1_twins
    real_probe = worker.planner.probe

    def fooled(path, **kwargs):
        return dataclasses.replace(real_probe(h264, **kwargs), path=str(path))

    monkeypatch.setattr(worker.planner, "probe", fooled)
    assert render(h264, None, OutputSpec("mp4"), tmp_path / "twin.mp4", settings=CPU).size_bytes > 0  # control
    with pytest.raises(RenderError) as info:
        render(ffv1, None, OutputSpec("mp4"), tmp_path / "o.mp4", settings=CPU)
    assert info.value.code is ErrorCode.SOURCE_UNREADABLE and "ffv1 decoder" in info.value.message
    assert not (tmp_path / "o.mp4").exists()


# --- audio and bitrates a tenant chose -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["m4a", "mp3"])
def test_too_many_audio_channels_is_the_sources_fault(media, tmp_path, fmt):
    with pytest.raises(RenderError) as info:
        render(media["many_channels"], None, OutputSpec(fmt), tmp_path / f"o.{fmt}", settings=CPU)
    assert info.value.code is ErrorCode.SOURCE_UNREADABLE
    assert "64 channels" in info.value.message
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["m4a", "mp3"])
def test_absurd_sample_rate_is_the_sources_fault(media, tmp_path, fmt):
    with pytest.raises(RenderError) as info:
        render(media["absurd_rate"], None, OutputSpec(fmt), tmp_path / f"o.{fmt}", settings=CPU)
    assert info.value.code is ErrorCode.SOURCE_UNREADABLE
    assert str(2**31 - 1) in info.value.message
    assert not list(tmp_path.iterdir())


def test_tiny_source_bitrates_are_clamped_and_render(media, tmp_path):
    """A still picture at 1 fps measures ~200 bit/s; Auto must not ask x264 for that ("bitrate not specified")."""
    src = probe(media["tiny_bitrate"])
    assert src.video is not None and src.video.bit_rate is not None and src.video.bit_rate < 1000
    assert src.audio is not None and src.audio.bit_rate is not None and src.audio.bit_rate < 16_000
    plan = plan_render(media["tiny_bitrate"], None, OutputSpec("mp4"))
    args = command_for(plan, load_preset("mp4"), "g.txt", "o.mp4")
    assert int(args[args.index("-b:v") + 1]) >= 200_000
    assert int(args[args.index("-b:a") + 1]) >= 32_000
    out = tmp_path / "o.mp4"
    result = render(media["tiny_bitrate"], None, OutputSpec("mp4"), out, settings=CPU)
    with av.open(str(out)) as c:
        assert c.streams.video[0].frames == gen.VARIANTS["tiny_bitrate"].frames
        assert c.streams.audio[0].codec_context.name == "aac"
    assert result.duration_s == pytest.approx(60.0, abs=0.01)
