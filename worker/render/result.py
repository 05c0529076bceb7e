"""What a render reports (:class:`RenderResult`), and the check that the file holds what was planned."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from worker.errors import ErrorCode, SourceError
from worker.planner import Plan
from worker.presets import Preset


@dataclasses.dataclass(frozen=True)
class RenderResult:
    path: str
    format: str
    encoder: str  # "cpu" or "nvenc": the variant that produced the file
    video_codec: str | None
    audio_codec: str
    duration_s: float
    source_duration_s: float
    size_bytes: int
    width: int | None
    height: int | None
    pieces: int
    wall_s: float
    nvenc_fallback: str | None  # why NVENC was abandoned mid-job, if it was
    # What the render left out of the source, and why (cover art in a codec the output cannot carry).
    notes: tuple[str, ...] = ()
    #: Loudness normalisation: target, mode (linear, limited, unchanged), gain, the kept audio before and after.
    loudness: dict[str, Any] | None = None
    #: Video frames copied from the source packet for packet (smart render), and frames encoded: they add up to
    #: the output's frames (both 0 for an audio-only output).
    copied_frames: int = 0
    encoded_frames: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def frames_report(copied: int, encoded: int) -> dict[str, int] | None:
    """The record's ``frames``: how many of the output's video frames were copied and encoded (None: no video)."""
    return {"copied": copied, "encoded": encoded} if copied or encoded else None


def result_of(
    plan: Plan,
    preset: Preset,
    out_path: Path,
    started: float,
    fallback: str | None,
    notes: tuple[str, ...] = (),
    *,
    copied: int = 0,
) -> RenderResult:
    """What a finished render (any strategy) reports about the file now at ``out_path``; ``copied``: the video
    frames a smart render copied."""
    frames = plan.timeline.total_units if preset.has_video else 0
    return RenderResult(
        path=str(out_path),
        format=plan.spec.format,
        encoder=preset.encoder,
        video_codec=preset.video_codec,
        audio_codec=preset.audio_codec,
        duration_s=plan.timeline.duration,
        source_duration_s=plan.info.duration,
        size_bytes=out_path.stat().st_size,
        width=plan.encode.width,
        height=plan.encode.height,
        pieces=len(plan.timeline.pieces),
        wall_s=time.monotonic() - started,
        nvenc_fallback=fallback,
        notes=notes,
        loudness=plan.loudness_report(),
        copied_frames=copied,
        encoded_frames=frames - copied,
    )


def verify_output(path: Path, plan: Plan, has_video: bool) -> None:
    """Check the file really holds the planned media; a short one means the source ended early.

    ffmpeg exits 0 on a source whose data stops before its index says it does
    (a truncated upload with the index at the front), so without this check a
    half-length render would be reported as complete.
    """
    import av

    try:
        with av.open(str(path)) as container:
            if has_video:
                stream = container.streams.video[0]
                # The header's count where the container keeps one (mp4, mov); counted packet by packet where it
                # keeps none (Matroska).
                got = stream.frames or sum(1 for p in container.demux(stream) if p.size)
                want = plan.timeline.total_units
                short = got + 1 < want
                what = f"{got} of {want} frames"
            else:
                audio = container.streams.audio[0]
                if audio.duration is not None and audio.time_base is not None:
                    dur = float(audio.duration * audio.time_base)
                else:
                    dur = (container.duration or 0) / 1e6
                short = dur + 0.1 < plan.timeline.duration
                what = f"{dur:.2f} s of {plan.timeline.duration:.2f} s"
    except (av.error.FFmpegError, IndexError) as exc:
        raise SourceError(f"the render produced an unreadable file ({exc})", code=ErrorCode.ENCODE_FAILED) from exc
    if short:
        raise SourceError(
            f"the source ended early: the output has {what} (truncated or damaged source)",
            code=ErrorCode.SOURCE_UNREADABLE,
        )
