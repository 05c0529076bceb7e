"""NVENC detection and encoder selection.

An encoder listed by ``ffmpeg -encoders`` proves nothing: the bundled ffmpeg
lists ``h264_nvenc`` on every machine, including ones with no NVIDIA driver or
with a GPU that has no NVENC engine (the H100/H200 class). So the probe does a
real one-frame encode under a timeout, once per process, and caches the answer.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from worker import ffmpeg
from worker.errors import EncodeError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NvencStatus:
    available: bool
    reason: str
    seconds: float


_lock = threading.Lock()
_cached: dict[str, NvencStatus] = {}


def probe_nvenc(*, ffmpeg_path: str | None = None, timeout_s: float = 15.0) -> NvencStatus:
    """Encode one small frame with h264_nvenc; True only if that really worked."""
    args = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        "color=c=gray:s=256x256:r=30:d=0.1",
        "-frames:v",
        "1",
        "-c:v",
        "h264_nvenc",
        "-f",
        "null",
        "-",
    ]
    started = time.monotonic()
    code, err = ffmpeg.run_quick(args, ffmpeg=ffmpeg_path, timeout_s=timeout_s)
    took = time.monotonic() - started
    if code == 0:
        return NvencStatus(True, "one-frame h264_nvenc encode succeeded", took)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    # The first line names the cause ("Cannot load libcuda.so.1", "No capable
    # devices found"); the rest is ffmpeg unwinding.
    reason = lines[0] if lines else f"exit status {code}"
    return NvencStatus(False, reason, took)


def nvenc_status(mode: str = "auto", *, ffmpeg_path: str | None = None, timeout_s: float = 15.0) -> NvencStatus:
    """Cached NVENC availability for this process. ``mode`` is the RENDER_NVENC setting."""
    if mode == "off":
        return NvencStatus(False, "disabled by RENDER_NVENC=off", 0.0)
    key = ffmpeg_path or ""
    with _lock:
        if key not in _cached:
            status = probe_nvenc(ffmpeg_path=ffmpeg_path, timeout_s=timeout_s)
            log.info("NVENC probe: available=%s (%s, %.2f s)", status.available, status.reason, status.seconds)
            _cached[key] = status
        return _cached[key]


def reset_cache() -> None:
    with _lock:
        _cached.clear()


def encode_with_fallback(order: list[str], attempt: Callable[[str], None]) -> tuple[str, str | None]:
    """Run ``attempt(variant)`` for each variant in ``order`` until one succeeds.

    An NVENC failure (a session that will not open, an encode that dies
    mid-job) falls through to the CPU preset within the same job; a CPU failure
    is final. Returns the variant that produced the file and, if NVENC was
    abandoned, why.
    """
    fallback: str | None = None
    for i, variant in enumerate(order):
        try:
            attempt(variant)
        except EncodeError as exc:
            if variant == "nvenc" and i + 1 < len(order):
                fallback = exc.message
                log.warning("NVENC failed, falling back to the CPU preset: %s", exc.message)
                continue
            raise
        return variant, fallback
    raise EncodeError("no encoder variant to try")


def variant_order(has_video: bool, status: NvencStatus) -> list[str]:
    """Preset variants to try, in order: NVENC first when it really works, CPU always last."""
    if has_video and status.available:
        return ["nvenc", "cpu"]
    return ["cpu"]
