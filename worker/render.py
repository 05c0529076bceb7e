"""One local render: probe → plan → graph → ffmpeg. No Redis, no S3.

This is the whole core of the worker; the queue layer wraps it with storage,
records and webhooks, and ``render-cli`` calls it directly on local files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from worker import ffmpeg
from worker.encoders import NvencStatus, encode_with_fallback, nvenc_status, variant_order
from worker.errors import ErrorCode, InvalidJob, SourceError
from worker.graph import EncodeSettings, build_graph, decide, ffmpeg_args
from worker.output import OutputSpec
from worker.plan import Segment, Timeline, build_timeline, clamp_to_source
from worker.presets import Preset, load_preset
from worker.probe import SourceInfo, probe
from worker.settings import Settings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Source limits (DESIGN: ``source_too_large`` past the configured limits)."""

    max_source_bytes: int = Settings.max_source_bytes
    max_source_duration_s: float = Settings.max_source_duration_s
    max_source_pixels: int = Settings.max_source_pixels

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        return cls(s.max_source_bytes, s.max_source_duration_s, s.max_source_pixels)

    def check(self, info: SourceInfo) -> None:
        too_large = ErrorCode.SOURCE_TOO_LARGE
        if info.size_bytes > self.max_source_bytes:
            raise SourceError(
                f"source is {info.size_bytes} bytes, over the limit of {self.max_source_bytes}", code=too_large
            )
        if info.duration > self.max_source_duration_s:
            raise SourceError(
                f"source is {info.duration:.1f} s long, over the limit of {self.max_source_duration_s:g} s",
                code=too_large,
            )
        if info.video and info.video.width * info.video.height > self.max_source_pixels:
            raise SourceError(
                f"source frames are {info.video.width}x{info.video.height}, over the limit of "
                f"{self.max_source_pixels} pixels",
                code=too_large,
            )


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything decided before ffmpeg runs; ``render-cli graph`` prints this."""

    info: SourceInfo
    spec: OutputSpec
    timeline: Timeline
    encode: EncodeSettings
    # The limits the source was checked against; ffmpeg holds every frame to them too.
    limits: Limits = dataclasses.field(default_factory=Limits)

    def graph(self, preset: Preset) -> str:
        return build_graph(self.info, self.timeline, preset, self.encode)


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Grid:
    """The grid segments snap to: unit ``u`` is the render-timeline instant ``origin + u / rate``."""

    rate: Fraction
    first: int  # first unit of the source's extent (negative: audio before the first frame)
    end: int  # one past the last unit
    origin: Fraction  # the first video frame (video outputs) or the first audio sample (audio-only)
    audio_origin: Fraction  # the first audio sample

    @property
    def end_time(self) -> float:
        return float(self.origin + Fraction(self.end) / self.rate)


def grid_of(info: SourceInfo, video_output: bool = True) -> Grid:
    """The grid a render of ``info`` snaps to, and the extent of the source on it.

    A video output is cut on the frames (anchored on the first frame, so a stream
    that starts off zero is cut on its own frames) and spans every stream: audio
    before the first frame or after the last counts, in whole frames, and the
    graph fills the picture there (black before, the last frame after). An
    audio-only output is cut on the audio's own sample grid and extent: it never
    depends on where the video starts or ends.
    """
    audio = info.audio
    a_origin = Fraction(audio.start) if audio is not None else Fraction(0)
    if video_output and info.video is not None:
        video = info.video
        rate = video.rate
        origin = Fraction(video.start)
        first, end = 0, max(1, round(Fraction(video.duration) * rate))
        if audio is not None:
            # Whole frames only: a sub-frame lead or tail of audio is not worth a black or repeated frame.
            first = min(first, -math.floor((origin - a_origin) * rate))
            end = max(end, math.floor((Fraction(audio.start + audio.duration) - origin) * rate))
        return Grid(rate, first, end, origin, a_origin)
    assert audio is not None
    sr = audio.sample_rate
    return Grid(Fraction(sr), 0, max(1, round(Fraction(audio.duration) * sr)), a_origin, a_origin)


def plan_render(
    source: str | os.PathLike[str],
    segments: list[Segment] | None,
    spec: OutputSpec,
    *,
    limits: Limits | None = None,
    info: SourceInfo | None = None,
) -> Plan:
    limits = limits or Limits()
    info = info or probe(source, max_pixels=limits.max_source_pixels)
    limits.check(info)
    preset = load_preset(spec.format, "cpu")
    enc = decide(info, spec, preset)
    grid = grid_of(info, preset.has_video)
    if segments is not None:
        segments = clamp_to_source(segments, grid.end_time)
        # The output starts at the earliest instant the source has: time a plan
        # keeps before that (an audio-only render of audio that starts late)
        # is not there to keep, and must not push the rest off the plan.
        begin = float(grid.origin + Fraction(grid.first) / grid.rate)
        segments = [Segment(max(s.start, begin), s.end) for s in segments if s.end > begin]
        if not segments:
            raise InvalidJob(f"every segment ends before the source starts ({begin:.3f} s)")
    sample_rate = info.audio.sample_rate if info.audio is not None else None
    timeline = build_timeline(
        segments,
        rate=grid.rate,
        first_unit=grid.first,
        end_unit=grid.end,
        sample_rate=sample_rate,
        origin=grid.origin,
        audio_origin=grid.audio_origin,
    )
    return Plan(info=info, spec=spec, timeline=timeline, encode=enc, limits=limits)


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
                got = container.streams.video[0].frames
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


def command_for(plan: Plan, preset: Preset, graph_file: str, output_file: str) -> list[str]:
    return ffmpeg_args(
        plan.info, preset, plan.encode, graph_file, output_file, max_pixels=plan.limits.max_source_pixels
    )


def render(
    source: str | os.PathLike[str],
    segments: list[Segment] | None,
    spec: OutputSpec,
    output: str | os.PathLike[str],
    *,
    settings: Settings | None = None,
    on_progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
    nvenc: NvencStatus | None = None,
) -> RenderResult:
    """Render ``source`` through ``segments`` into ``output``.

    The file appears at ``output`` only when ffmpeg succeeded; a failed or
    cancelled render leaves nothing behind.
    """
    settings = settings or Settings()
    started = time.monotonic()
    plan = plan_render(source, segments, spec, limits=Limits.from_settings(settings))
    out_path = Path(output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg_bin = settings.ffmpeg_path or None
    preset_cpu = load_preset(spec.format, "cpu")
    if nvenc is None and preset_cpu.has_video:
        nvenc = nvenc_status(settings.nvenc, ffmpeg_path=ffmpeg_bin, timeout_s=settings.nvenc_probe_timeout_s)
    order = variant_order(preset_cpu.has_video, nvenc or NvencStatus(False, "not needed", 0.0))

    with tempfile.TemporaryDirectory(prefix="render-", dir=settings.work_dir or None) as tmp:

        def attempt(variant: str) -> None:
            preset = load_preset(spec.format, variant)
            graph_file = Path(tmp) / f"graph-{variant}.txt"
            graph_file.write_text(plan.graph(preset), encoding="utf-8")
            partial = ffmpeg.temp_output_path(out_path, "." + preset.extension)
            try:
                ffmpeg.run(
                    command_for(plan, preset, str(graph_file), str(partial)),
                    ffmpeg=ffmpeg_bin,
                    expected_duration_s=plan.timeline.duration,
                    on_progress=on_progress,
                    cancel=cancel,
                    deadline=deadline,
                )
                verify_output(partial, plan, preset.has_video)
                os.replace(partial, out_path)
            finally:
                partial.unlink(missing_ok=True)  # a failed or cancelled run leaves nothing

        variant, fallback = encode_with_fallback(order, attempt)
    preset = load_preset(spec.format, variant)

    return RenderResult(
        path=str(out_path),
        format=spec.format,
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
    )


__all__ = ["Grid", "Limits", "Plan", "RenderResult", "plan_render", "render", "command_for", "grid_of", "ErrorCode"]
