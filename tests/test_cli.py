"""render-cli: driven with click's CliRunner, and once as a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import mediacheck as mc
import pytest
from click.testing import CliRunner

from worker.cli import load_plan, main
from worker.errors import InvalidJob
from worker.plan import plan_byte_limit


def write_plan(tmp_path: Path, segments: list[dict]) -> Path:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"segments": segments}))
    return plan


def test_render_with_cut(media, tmp_path):
    plan = write_plan(tmp_path, [{"start": 0.5, "end": 1.5}, {"start": 3.0, "end": 4.0}])
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(
        main, ["render", str(media["cfr2997"]), "--cut", str(plan), "--format", "mp4", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["path"] == str(out) and data["encoder"] == "cpu" and data["pieces"] == 2
    assert "progress" in result.stderr  # plain progress lines when not on a terminal
    idx = [i for _, i in mc.frame_indices(out)]
    assert idx[0] == 15 and idx[-1] == 119 and len(idx) == 60


def test_probe_prints_json(media):
    result = CliRunner().invoke(main, ["probe", str(media["rotated"])])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["video"]["rotation"] in (90, 270)
    assert (data["video"]["display_width"], data["video"]["display_height"]) == (180, 320)
    assert data["audio"]["sample_rate"] == 48000


def test_graph_prints_command_and_graph_without_running(media, tmp_path):
    plan = write_plan(tmp_path, [{"start": 0.5, "end": 1.5}, {"start": 3.0, "end": 4.0}])
    out = tmp_path / "never.mp4"
    result = CliRunner().invoke(
        main, ["graph", str(media["cfr2997"]), "--cut", str(plan), "--format", "mp4", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "-/filter_complex graph.txt" in result.stdout
    # Two pieces joined (however the graph splits video and audio), cut on the frame grid.
    assert "concat=n=2:" in result.stdout and "segment=frames=15|45|90|120" in result.stdout
    assert not out.exists()


def test_presets_lists_every_format():
    result = CliRunner().invoke(main, ["presets"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert {(p["format"], p["variant"]) for p in data["presets"]} >= {("mp4", "cpu"), ("mp3", "nvenc")}


def test_errors_carry_code_and_exit_status(media, tmp_path):
    runner = CliRunner()
    bad_plan = write_plan(tmp_path, [{"start": 2, "end": 1}])
    r = runner.invoke(main, ["render", str(media["cfr2997"]), "--cut", str(bad_plan), "--format", "mp4", "-o", "x"])
    assert r.exit_code == 2 and "[invalid_job]" in r.stderr and "segments[0]" in r.stderr
    r = runner.invoke(main, ["render", str(media["corrupt"]), "--format", "mp4", "-o", str(tmp_path / "o.mp4")])
    assert r.exit_code == 3 and "[source_unreadable]" in r.stderr
    r = runner.invoke(main, ["render", str(media["audio_wav"]), "--format", "mov", "-o", str(tmp_path / "o.mov")])
    assert r.exit_code == 3 and "[source_no_video]" in r.stderr
    r = runner.invoke(main, ["render", str(media["cfr2997"]), "--format", "webm", "-o", "x"])
    assert r.exit_code == 2  # click's own usage error
    assert not (tmp_path / "o.mp4").exists()


def test_render_cli_subprocess(media, tmp_path):
    exe = shutil.which("render-cli", path=str(Path(sys.executable).parent))
    assert exe, "render-cli is not installed next to this Python"
    out = tmp_path / "out.mp3"
    plan = write_plan(tmp_path, [{"start": 1.0, "end": 3.0}, {"start": 5.0, "end": 6.5}])
    done = subprocess.run(
        [exe, "render", str(media["audio_wav"]), "--cut", str(plan), "--format", "mp3", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["format"] == "mp3"
    d = mc.stream_durations(out)
    assert abs(d["audio"] - 3.5) < 1 / 30
    bad = subprocess.run(
        [exe, "render", str(media["zero"]), "--format", "mp3", "-o", str(tmp_path / "bad.mp3")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 3 and "source_unreadable" in bad.stderr


def test_a_deeply_nested_plan_is_refused_cleanly(tmp_path):
    plan = tmp_path / "deep.json"
    plan.write_text("[" * 200_000 + "]" * 200_000)
    r = CliRunner().invoke(main, ["graph", str(tmp_path / "any.mp4"), "--cut", str(plan), "--format", "mp4"])
    assert r.exit_code == 2 and "[invalid_job]" in r.stderr and "nested more than" in r.stderr
    assert isinstance(r.exception, SystemExit)  # a refusal, not a RecursionError traceback


def test_an_oversized_plan_is_refused_without_being_loaded(tmp_path):
    # 80 MB on paper (a sparse file): reading it whole would allocate 80 MB and parse it.
    plan = tmp_path / "huge.json"
    with plan.open("wb") as f:
        f.write(b'{"segments": [')
        f.truncate(80 * 1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidJob) as info:
            load_plan(plan, max_segments=10_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "larger than" in info.value.message
    assert peak < 3 * plan_byte_limit(10_000), f"peak {peak} bytes: the plan was loaded"
    r = CliRunner().invoke(main, ["graph", str(tmp_path / "any.mp4"), "--cut", str(plan), "--format", "mp4"])
    assert r.exit_code == 2 and "larger than" in r.stderr


def test_a_plan_at_the_segment_limit_still_fits(tmp_path):
    segments = [{"start": i + 0.123456789012345, "end": i + 0.5234567890123456} for i in range(10_000)]
    plan = tmp_path / "full.json"
    plan.write_text(json.dumps({"segments": segments}, indent=4))
    loaded = load_plan(plan, max_segments=10_000)
    assert loaded is not None and len(loaded) == 10_000


def test_enqueue_applies_the_workers_intake_before_touching_redis(tmp_path):
    exe = shutil.which("render-cli", path=str(Path(sys.executable).parent))
    assert exe
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDER_")}
    # Nothing listens on port 1: reaching Redis would fail differently (exit 1, "cannot reach Redis").
    env.update({"RENDER_REDIS_URL": "redis://127.0.0.1:1/0", "RENDER_SOURCE_BUCKETS": "uploads"})
    cases = [
        (["s3://media/a.mp4"], "bucket 'media' is not one"),
        (["s3://uploads/../media/a.mp4"], "'..' path segments"),
        (["s3://uploads/a.mp4", "--asset-id", "ast_1\n"], "asset_id must be an id"),
        (["s3://uploads/a.mp4", "--webhook-url", "http://127.0.0.1:9/h", "--webhook-secret", "whsec_x"], "webhook"),
    ]
    for args, needle in cases:
        done = subprocess.run(
            [exe, "enqueue", *args, "--format", "mp4"], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2 and "[invalid_job]" in done.stderr and needle in done.stderr, done.stderr
        assert done.stdout == ""


# -- safety: never over the source, never over a file unless asked -------------------------------------------------


def test_render_refuses_to_overwrite_its_source(media, tmp_path):
    source = tmp_path / "talk.mp4"
    shutil.copy(media["cfr2997"], source)
    before = source.read_bytes()
    runner = CliRunner()
    for output in (source, tmp_path / "." / "talk.mp4"):  # the same path, and another spelling of it
        r = runner.invoke(main, ["render", str(source), "--format", "m4a", "-o", str(output), "--force"])
        assert r.exit_code == 2 and "[invalid_job]" in r.stderr and "is the source itself" in r.stderr, r.stderr
    link = tmp_path / "alias.mp4"
    os.link(source, link)  # another name for the same file: --force must not make it fair game
    r = runner.invoke(main, ["render", str(source), "--format", "m4a", "-o", str(link), "--force"])
    assert r.exit_code == 2 and "is the source itself" in r.stderr
    assert source.read_bytes() == before


def test_render_replaces_an_existing_output_only_with_force(media, tmp_path):
    out = tmp_path / "out.m4a"
    out.write_bytes(b"precious")
    args = ["render", str(media["audio_wav"]), "--format", "m4a", "--quiet", "-o", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "exists; pass --force" in r.stderr
    assert out.read_bytes() == b"precious"
    r = CliRunner().invoke(main, [*args, "--force"])
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes() != b"precious" and json.loads(r.stdout)["size_bytes"] == out.stat().st_size


# -- signals ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_render_cleans_up_and_exits_128_plus_its_number(media, tmp_path, sig, status):
    exe = shutil.which("render-cli", path=str(Path(sys.executable).parent))
    assert exe
    work = tmp_path / "work"
    work.mkdir()
    out_dir = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDER_")}
    env.update({"RENDER_WORK_DIR": str(work), "RENDER_NVENC": "off"})
    # The whole of cfr30 to mp4, every frame encoded: many seconds on these cores, so the signal lands mid-render.
    proc = subprocess.Popen(
        [exe, "render", str(media["cfr30"]), "--format", "mp4", "--no-smart", "-o", str(out_dir / "talk.mp4")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # plain progress lines: the first one means ffmpeg is encoding
            if line.startswith("progress"):
                break
        assert list(work.iterdir()), "the render's scratch directory should exist mid-render"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err
    assert "Traceback" not in err and "cancelled" in err
    assert list(work.iterdir()) == []  # scratch directory removed
    assert list(out_dir.iterdir()) == []  # no .partial file, no output


def test_ctrl_c_in_any_command_exits_130(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("worker.presets.all_presets", interrupted)
    r = CliRunner().invoke(main, ["presets"])
    assert r.exit_code == 130


# -- help and version everywhere ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], *[[name] for name in sorted(main.commands)]])
def test_every_command_has_short_help_and_version(command):
    from importlib.metadata import version

    runner = CliRunner()
    for flag in ("-h", "--help"):
        r = runner.invoke(main, [*command, flag])
        assert r.exit_code == 0 and "Usage:" in r.stdout, (command, flag, r.output)
    r = runner.invoke(main, [*command, "--version"])
    assert r.exit_code == 0 and version("render-worker") in r.stdout, (command, r.output)


def test_render_worker_has_short_help_and_version():
    from importlib.metadata import version

    from worker.cli import worker_main

    runner = CliRunner()
    for flag in ("-h", "--help"):
        r = runner.invoke(worker_main, [flag])
        assert r.exit_code == 0 and "Usage:" in r.stdout
    r = runner.invoke(worker_main, ["--version"])
    assert r.exit_code == 0 and version("render-worker") in r.stdout


# -- the webhook secret off the command line ---------------------------------------------------------------------


def _enqueue_with_secret(tmp_path, extra_env, *args):
    """render-cli enqueue with a public webhook and no Redis: intake passes, then the record store is
    unreachable (exit 5, storage_failed); without a secret, intake refuses the webhook (exit 2)."""
    exe = shutil.which("render-cli", path=str(Path(sys.executable).parent))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDER_") and k != "WEBHOOK_SECRET"}
    env.update({"RENDER_REDIS_URL": "redis://127.0.0.1:1/0", **extra_env})
    argv = [exe, "enqueue", "s3://uploads/a.mp4", "--format", "mp4", "--webhook-url", "https://93.184.215.14/h", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_the_webhook_secret_can_come_from_the_environment_or_a_file(tmp_path):
    from farm import SECRET

    missing = _enqueue_with_secret(tmp_path, {})
    assert missing.returncode == 2 and "[invalid_job]" in missing.stderr and "webhook" in missing.stderr
    from_env = _enqueue_with_secret(tmp_path, {"WEBHOOK_SECRET": SECRET})
    assert from_env.returncode == 5 and "record store unavailable" in from_env.stderr, from_env.stderr
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    from_file = _enqueue_with_secret(tmp_path, {}, "--webhook-secret-file", str(secret_file))
    assert from_file.returncode == 5 and "record store unavailable" in from_file.stderr, from_file.stderr
    both = _enqueue_with_secret(tmp_path, {"WEBHOOK_SECRET": SECRET}, "--webhook-secret-file", str(secret_file))
    assert both.returncode == 2 and "once" in both.stderr


def test_render_refuses_an_ffmpeg_too_old_for_its_graphs(media, tmp_path, monkeypatch):
    from test_startup import old_ffmpeg

    monkeypatch.setenv("RENDER_FFMPEG_PATH", old_ffmpeg(tmp_path))
    out = tmp_path / "out.m4a"
    r = CliRunner().invoke(main, ["render", str(media["audio_wav"]), "--format", "m4a", "-o", str(out)])
    assert r.exit_code == 1 and "7.0 or newer" in r.stderr and "RENDER_FFMPEG_PATH" in r.stderr, r.stderr
    assert not out.exists()
