"""The ffmpeg runner: progress, cancellation, errors with stderr; the start-up version check."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from worker import ffmpeg
from worker.encoders import NvencStatus, nvenc_status, reset_cache, variant_order
from worker.errors import Cancelled, ConfigError, EncodeError, ErrorCode, RenderTimeout

LONG_ENCODE = ["-hide_banner", "-nostdin", "-loglevel", "error", "-nostats", "-progress", "pipe:1"]
LONG_ENCODE += ["-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30:duration=60", "-f", "null", "-"]


def test_progress_is_reported_as_a_ratio() -> None:
    seen: list[float] = []
    args = ["-hide_banner", "-nostdin", "-loglevel", "error", "-nostats", "-progress", "pipe:1"]
    args += ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=30:duration=3", "-c:v", "libx264", "-f", "null", "-"]
    ffmpeg.run(args, expected_duration_s=3.0, on_progress=seen.append)
    assert seen and seen[-1] == 1.0
    assert all(0.0 <= x <= 1.0 for x in seen)
    assert seen == sorted(seen)


def _no_ffmpeg_left() -> bool:
    from farm import ffmpeg_children

    return ffmpeg_children(os.getpid()) == []


def test_cancel_kills_ffmpeg() -> None:
    # LONG_ENCODE reads its input in real time (-re) for 60 s: returning at all means ffmpeg was stopped.
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(Cancelled):
        ffmpeg.run(LONG_ENCODE, expected_duration_s=60, cancel=cancel)
    assert _no_ffmpeg_left()


def test_deadline_raises_timeout() -> None:
    with pytest.raises(RenderTimeout) as info:
        ffmpeg.run(LONG_ENCODE, deadline=time.monotonic() + 0.5)
    assert info.value.code is ErrorCode.TIMEOUT
    assert _no_ffmpeg_left()


def test_failure_carries_stderr_tail_and_code() -> None:
    with pytest.raises(EncodeError) as info:
        ffmpeg.run(["-hide_banner", "-f", "lavfi", "-i", "nosuchfilter", "-f", "null", "-"])
    assert info.value.code is ErrorCode.ENCODE_FAILED
    assert "ffmpeg exited with status" in info.value.message
    assert info.value.detail and "nosuchfilter" in info.value.detail


def test_nvenc_probe_is_a_real_encode_and_cached() -> None:
    """On a machine without a working NVENC the probe says no and says why."""
    reset_cache()
    first = nvenc_status("auto", timeout_s=20)
    second = nvenc_status("auto", timeout_s=20)
    assert first is second  # cached for the process
    # The bundled ffmpeg lists h264_nvenc everywhere, so a listing proves nothing.
    listing = subprocess.run([ffmpeg.resolve_ffmpeg(), "-hide_banner", "-encoders"], capture_output=True, text=True)
    assert "h264_nvenc" in listing.stdout
    if not os.path.exists("/dev/nvidia0"):
        assert not first.available  # no GPU here: the real encode must fail
    if not first.available:
        assert first.reason
        assert variant_order(True, first) == ["cpu"]
    else:  # a machine with a working NVENC
        assert variant_order(True, first) == ["nvenc", "cpu"]
    assert nvenc_status("off").available is False
    assert variant_order(False, NvencStatus(True, "", 0)) == ["cpu"]


def _fake_ffmpeg(tmp_path: Any, version_line: str) -> str:
    fake = tmp_path / "ffmpeg"
    fake.write_text(f"#!/bin/sh\necho {shlex.quote(version_line)}\n")
    fake.chmod(0o755)
    return str(fake)


def test_the_bundled_ffmpeg_passes_the_start_up_check() -> None:
    assert ffmpeg.check_binary().startswith("ffmpeg version")


@pytest.mark.parametrize(
    "line", ["ffmpeg version 5.1.6-0+deb12u1 Copyright (c) 2000-2024", "ffmpeg version 4.4.2-0ubuntu0.22.04.1"]
)
def test_an_ffmpeg_older_than_7_is_refused_naming_its_version(tmp_path: Any, line: str) -> None:
    with pytest.raises(ConfigError) as info:
        ffmpeg.check_binary(_fake_ffmpeg(tmp_path, line))
    message = info.value.message
    assert "RENDER_FFMPEG_PATH" in message and line.split()[2][:3] in message and "7.0 or newer" in message


def test_a_missing_ffmpeg_is_refused(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="does not run"):
        ffmpeg.check_binary(str(tmp_path / "no-ffmpeg"))


def test_ffmpeg_runs_with_a_minimal_environment(media, tmp_path, monkeypatch) -> None:
    """ffmpeg parses tenant media: its environment has no credential, no Redis password, no RENDER_* setting.

    Read from /proc/<pid>/environ of the ffmpeg a real render starts (cfr30 is 200 s: it is still running).
    """
    from farm import ffmpeg_children

    from worker.output import OutputSpec
    from worker.render import render
    from worker.settings import CHILD_ENV_NAMES, CHILD_ENV_PREFIXES, Settings

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-key-value")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("RENDER_REDIS_URL", "redis://:redis-password@127.0.0.1:6379/0")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "all")
    cancel = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            render(media["cfr30"], None, OutputSpec("mp4"), tmp_path / "o.mp4", settings=Settings(nvenc="off"),
                   cancel=cancel)  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - the cancel ends it; anything else fails below
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    try:
        environ = None
        for _ in range(400):
            children = ffmpeg_children(os.getpid())
            if children:
                proc = Path(f"/proc/{children[0]}")
                with contextlib.suppress(OSError):
                    # Only once ffmpeg has really been exec'd: between fork and exec the child is still a copy
                    # of this process, environment included.
                    if b"-/filter_complex" in (proc / "cmdline").read_bytes():
                        environ = (proc / "environ").read_bytes()
                if environ:
                    break
            time.sleep(0.025)
    finally:
        cancel.set()
        t.join(30)
    assert environ, "no running ffmpeg was seen"
    names = {item.split(b"=", 1)[0].decode() for item in environ.split(b"\0") if item}
    assert b"s3cr3t-key-value" not in environ and b"redis-password" not in environ and b"AKIAEXAMPLE" not in environ
    assert not {n for n in names if n.startswith(("AWS_", "RENDER_"))}
    assert names <= set(CHILD_ENV_NAMES) | {n for n in names if n.startswith(CHILD_ENV_PREFIXES)}
    assert {"PATH", "LC_ALL", "NVIDIA_VISIBLE_DEVICES"} <= names
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)
