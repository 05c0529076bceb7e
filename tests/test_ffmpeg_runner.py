"""The ffmpeg runner: progress, cancellation within a second, errors with stderr."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from worker import ffmpeg
from worker.encoders import NvencStatus, nvenc_status, reset_cache, variant_order
from worker.errors import Cancelled, EncodeError, ErrorCode, RenderTimeout

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


def test_cancel_kills_ffmpeg_within_a_second() -> None:
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        ffmpeg.run(LONG_ENCODE, expected_duration_s=60, cancel=cancel)
    assert time.monotonic() - started < 1.5  # 0.5 s before the cancel + under a second to stop


def test_deadline_raises_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(RenderTimeout) as info:
        ffmpeg.run(LONG_ENCODE, deadline=time.monotonic() + 0.5)
    assert info.value.code is ErrorCode.TIMEOUT
    assert time.monotonic() - started < 1.5


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
