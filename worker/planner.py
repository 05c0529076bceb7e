"""The planner: a probed source and a job's cut → the :class:`Plan`, and how it is rendered (its strategy).

Pure apart from the probe: no Redis, no storage, no ffmpeg. The CLI, the queue's first worker and every
part of a chunked render plan through :func:`plan_render` and :func:`strategy_for`, so they agree frame for
frame and chunk for chunk (the plan is a function of the probe and the settings alone). Exports plan here
too (worker/exports/file.py): an editor timeline shows what a render of the same job shows.

A strategy is decided once, here: ``smart`` (the GOPs the cut keeps whole copied from the source, the
frames around the cuts encoded, worker/smart.py) where the source's video can go out unchanged and enough
of it would be copied; else ``whole`` (one ffmpeg), or ``chunked`` (the output's frames cut into chunks that
encode apart, worker/chunks.py; on the queue each chunk is a message, in render-cli each an ffmpeg process).
A new strategy is a new value here and a new module in ``worker/render/``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from fractions import Fraction

from worker import gops, smart
from worker.chunks import PREROLL_S, SEEK_GAP_S, ChunkPlan, plan_chunks
from worker.encoding import EncodeSettings, decide
from worker.errors import ErrorCode, InvalidJob, SourceError
from worker.gops import GopIndex
from worker.graph import build_graph
from worker.loudness import Gain, Measurement
from worker.output import OutputSpec
from worker.plan import Segment, Timeline, build_timeline, clamp_to_source
from worker.presets import Preset, load_preset
from worker.probe import SourceInfo, probe
from worker.reframe import Knot
from worker.settings import Settings, default_of


@dataclasses.dataclass(frozen=True)
class Limits:
    """Source limits (DESIGN: ``source_too_large`` past the configured limits)."""

    max_source_bytes: int = default_of("max_source_bytes")
    max_source_duration_s: float = default_of("max_source_duration_s")
    max_source_pixels: int = default_of("max_source_pixels")

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
    #: The loudness gain, once measured (worker/render/loudness.py), and the figures it was measured to give:
    #: part of the plan, so every part of a chunked render applies the same gain.
    loudness: Gain | None = None
    loudness_output: Measurement | None = None
    #: ``output.aspect``: the crop's path across the output (worker/reframe.py), once the speaker was found.
    crop_path: tuple[Knot, ...] | None = None

    @property
    def preset(self) -> Preset:
        """The format's CPU preset: what the plan was decided with (an NVENC attempt loads its own variant)."""
        return load_preset(self.spec.format, "cpu")

    @property
    def has_video(self) -> bool:
        return self.preset.has_video

    def graph(self, preset: Preset) -> str:
        return build_graph(self.info, self.timeline, preset, self.encode, gain=self.loudness, crop_path=self.crop_path)

    def loudness_report(self) -> dict[str, object] | None:
        """What the result and the record say of the loudness: the target, the mode, before and after."""
        return self.loudness.to_dict(self.loudness_output) if self.loudness is not None else None


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
    """Probe ``source`` (unless ``info`` is its probe already), check it against ``limits``, snap the cut."""
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


def _seek_gap(plan: Plan) -> int:
    """Frames of the source a decode walks through rather than seek over (see :func:`chunk_plan_for`)."""
    assert plan.info.video is not None
    rate = plan.timeline.rate
    keys = Fraction(plan.info.video.keyframe_interval_s or 0)
    return max(math.ceil(SEEK_GAP_S * rate), math.ceil(keys * rate))


def smart_plan_for(plan: Plan) -> tuple[smart.SmartPlan, GopIndex] | str:
    """The copies and encodes of a smart render of ``plan`` and the source's GOP index, or why it renders
    otherwise (the source does not qualify, its GOPs allow no copy, or too little would be copied)."""
    reason = smart.why_not(plan.info, plan.spec, plan.encode, plan.preset)
    if reason is not None:
        return reason
    index = gops.scan(plan.info, max_pixels=plan.limits.max_source_pixels)
    if index.problem is not None:
        return f"the source's video cannot be copied: {index.problem}"
    splice = smart.plan_smart(plan.timeline, index, seek_gap=_seek_gap(plan))
    if splice is None:
        return f"under {smart.MIN_COPIED_SHARE:.0%} of the frames would be copied"
    return splice, index


def smart_chunk(plan: Plan, chunks: ChunkPlan, index: int, gops: GopIndex) -> smart.SmartPlan:
    """The copies and encodes of chunk ``index`` of a chunked smart render (a strategy with ``gops``)."""
    return smart.plan_chunk(plan.timeline, chunks.chunks[index], gops, seek_gap=_seek_gap(plan))


def copied_frames(plan: Plan, chunks: ChunkPlan, gops: GopIndex | None) -> int:
    """The frames a chunked render copies from the source (0 unless its chunks copy, ``gops``)."""
    if gops is None:
        return 0
    return sum(smart_chunk(plan, chunks, c.index, gops).copied for c in chunks.chunks)


def chunk_plan_for(plan: Plan, settings: Settings | None = None, *, count: int | None = None) -> ChunkPlan:
    """The chunks of a video render: ``count`` of them, or as many as RENDER_CHUNK_S / RENDER_CHUNK_MIN_S give.

    A new seek (run) only pays where the cut skips more than a keyframe interval, since ffmpeg decodes
    from the keyframe before the seek point anyway; VFR sources decode a second before each run, so a
    run's first slot can repeat a neighbour dropped before it exactly as the whole render does. Every
    chunk but the first encodes :data:`~worker.chunks.PREROLL_S` of the chunk before it first.
    """
    settings = settings or Settings()
    video = plan.info.video
    if video is None or not plan.has_video:
        raise InvalidJob(f"only video renders are chunked; {plan.spec.format} is rendered whole")
    rate = plan.timeline.rate
    seek_gap = _seek_gap(plan)
    margin = math.ceil(rate) if video.is_vfr else 0
    return plan_chunks(
        plan.timeline,
        count=count,
        chunk_s=settings.chunk_s,
        min_s=settings.chunk_min_s,
        seek_gap=seek_gap,
        margin=margin,
        preroll=math.ceil(PREROLL_S * rate),
    )


class Kind(enum.StrEnum):
    WHOLE = "whole"  # one ffmpeg encodes every frame (worker/render/whole.py)
    CHUNKED = "chunked"  # chunks encode apart and join by stream copy (worker/render/chunked.py)
    SMART = "smart"  # whole GOPs copied, the frames around the cuts encoded (worker/render/smart.py)


@dataclasses.dataclass(frozen=True)
class Strategy:
    kind: Kind
    chunks: ChunkPlan | None = None  # the chunk plan of a chunked render
    smart: smart.SmartPlan | None = None  # the copies and encodes of a smart render
    #: The source's GOP index, for a smart render, and for a chunked one whose chunks copy (worker/smart.py).
    gops: GopIndex | None = None
    #: Why a video render is not smart (``render-cli graph`` says it); None for a smart or audio-only one.
    not_smart: str | None = None

    @property
    def count(self) -> int:
        return len(self.chunks.chunks) if self.chunks is not None else 1


WHOLE = Strategy(Kind.WHOLE)


def strategy_for(
    plan: Plan, settings: Settings | None = None, *, split: bool = True, chunks: int | None = None
) -> Strategy:
    """How ``plan`` is rendered; the one place that decides whether a render is chunked.

    ``split``: whether the caller can run chunks at all (a queue worker with a dispatcher, ``render-cli
    render --chunks N`` with N > 1). ``chunks``: the number asked for (``None``: RENDER_CHUNK_S and
    RENDER_CHUNK_MIN_S decide). An audio-only output, or a plan that comes out as one chunk, renders whole.

    Where the source's video can be copied (:func:`smart_plan_for`), a render that would be one piece is
    ``smart``, and a chunked one carries the GOP index: each of its chunks copies what it keeps whole.
    """
    if not plan.has_video or plan.info.video is None:
        return WHOLE
    found = smart_plan_for(plan)
    cplan = chunk_plan_for(plan, settings, count=chunks) if split else None
    if cplan is None or len(cplan.chunks) <= 1:
        if isinstance(found, str):
            return Strategy(Kind.WHOLE, not_smart=found)
        return Strategy(Kind.SMART, smart=found[0], gops=found[1])
    if isinstance(found, str):
        return Strategy(Kind.CHUNKED, cplan, not_smart=found)
    return Strategy(Kind.CHUNKED, cplan, gops=found[1])


__all__ = [
    "Grid",
    "Kind",
    "Limits",
    "Plan",
    "Strategy",
    "WHOLE",
    "chunk_plan_for",
    "copied_frames",
    "grid_of",
    "plan_render",
    "smart_chunk",
    "smart_plan_for",
    "strategy_for",
]
