"""One local render: probe → plan → graph → ffmpeg. No Redis, no S3.

This is the whole core of the worker; the queue layer wraps it with storage,
records and webhooks, and ``render-cli`` calls it directly on local files.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from worker import cover, ffmpeg, scratch
from worker.chunks import (
    PREROLL_S,
    SEEK_GAP_S,
    Chunk,
    ChunkPlan,
    assembly_args,
    concat_list,
    piece_durations_us,
    piece_name,
    plan_chunks,
)
from worker.encoders import NvencStatus, encode_with_fallback, nvenc_status, variant_order
from worker.errors import Cancelled, EncodeError, ErrorCode, InvalidJob, SourceError
from worker.graph import (
    EncodeSettings,
    audio_ffmpeg_args,
    build_chunk_graph,
    build_graph,
    chunk_ffmpeg_args,
    decide,
    ffmpeg_args,
    render_decoders,
)
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
    # What the render left out of the source, and why (cover art in a codec the output cannot carry).
    notes: tuple[str, ...] = ()

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


def command_for(
    plan: Plan, preset: Preset, graph_file: str, output_file: str, cover_file: str | None = None
) -> list[str]:
    return ffmpeg_args(
        plan.info,
        preset,
        plan.encode,
        graph_file,
        output_file,
        max_pixels=plan.limits.max_source_pixels,
        cover_file=cover_file,
    )


def _result(
    plan: Plan, preset: Preset, out_path: Path, started: float, fallback: str | None, notes: tuple[str, ...] = ()
) -> RenderResult:
    """What a finished render (whole or chunked) reports about the file now at ``out_path``."""
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
    plan: Plan | None = None,
    on_encoder: Callable[[str], None] | None = None,
) -> RenderResult:
    """Render ``source`` through ``segments`` into ``output``.

    ``on_encoder`` is told the encoder ("cpu", "nvenc") each time an encode with it starts (a fallback from
    NVENC to the CPU calls it again): until then the job has not encoded anything.

    The file appears at ``output`` only when ffmpeg succeeded; a failed or
    cancelled render leaves nothing behind. ``plan``: the plan of these very
    arguments, when the caller made it already (the queue's first worker plans
    to count chunks), so the source is not probed twice.
    """
    settings = settings or Settings()
    started = time.monotonic()
    if plan is None:
        plan = plan_render(source, segments, spec, limits=Limits.from_settings(settings))
    out_path = Path(output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg_bin = settings.ffmpeg_path or None
    preset_cpu = load_preset(spec.format, "cpu")
    if nvenc is None and preset_cpu.has_video:
        nvenc = nvenc_status(settings.nvenc, ffmpeg_path=ffmpeg_bin, timeout_s=settings.nvenc_probe_timeout_s)
    order = variant_order(preset_cpu.has_video, nvenc or NvencStatus(False, "not needed", 0.0))

    with scratch.temp_dir("render", settings.work_dir) as tmp:
        # Audio-only outputs keep the source's artwork (copied, not decoded: worker/cover.py).
        art = cover.Cover(None)
        if not preset_cpu.has_video:
            art = cover.prepare(plan.info, Path(tmp), max_pixels=plan.limits.max_source_pixels)

        def attempt(variant: str) -> None:
            preset = load_preset(spec.format, variant)
            graph_file = Path(tmp) / f"graph-{variant}.txt"
            graph_file.write_text(plan.graph(preset), encoding="utf-8")
            partial = ffmpeg.temp_output_path(out_path, "." + preset.extension)
            cover_file = str(art.path) if art.path is not None else None
            if on_encoder is not None:
                on_encoder(preset.encoder)
            try:
                ffmpeg.run(
                    command_for(plan, preset, str(graph_file), str(partial), cover_file),
                    ffmpeg=ffmpeg_bin,
                    expected_duration_s=plan.timeline.duration,
                    on_progress=on_progress,
                    cancel=cancel,
                    deadline=deadline,
                    decoders=render_decoders(plan.info, preset),
                )
                verify_output(partial, plan, preset.has_video)
                os.replace(partial, out_path)
            finally:
                partial.unlink(missing_ok=True)  # a failed or cancelled run leaves nothing

        variant, fallback = encode_with_fallback(order, attempt)
    preset = load_preset(spec.format, variant)

    return _result(plan, preset, out_path, started, fallback, (art.note,) if art.note else ())


# --- Chunked renders (worker/chunks.py) ---------------------------------------------------------------------
#
# Three steps the queue layer can run on different workers: render_chunk (one chunk's frames into one
# piece), render_audio (the whole audio, once) and assemble (the pieces and the audio, by stream copy).
# render_chunked runs them locally, each chunk in its own ffmpeg process (render-cli render --chunks N).


def chunk_plan_for(plan: Plan, settings: Settings | None = None, *, count: int | None = None) -> ChunkPlan:
    """The chunks of a video render: ``count`` of them, or as many as RENDER_CHUNK_S / RENDER_CHUNK_MIN_S give.

    A new seek (run) only pays where the cut skips more than a keyframe interval, since ffmpeg decodes
    from the keyframe before the seek point anyway; VFR sources decode a second before each run, so a
    run's first slot can repeat a neighbour dropped before it exactly as the whole render does. Every
    chunk but the first encodes :data:`~worker.chunks.PREROLL_S` of the chunk before it first.
    """
    settings = settings or Settings()
    video = plan.info.video
    if video is None or not load_preset(plan.spec.format, "cpu").has_video:
        raise InvalidJob(f"only video renders are chunked; {plan.spec.format} is rendered whole")
    rate = plan.timeline.rate
    seek_gap = max(math.ceil(SEEK_GAP_S * rate), math.ceil(Fraction(video.keyframe_interval_s or 0) * rate))
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


def _frames_and_first_key(path: Path) -> tuple[int, bool]:
    """(video frames, whether the first video packet is a keyframe) of an encoded piece."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            first_key = False
            frames = 0
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's flush packet
                if frames == 0:
                    first_key = bool(packet.is_keyframe)
                frames += 1
            return frames, first_key
    except (av.error.FFmpegError, IndexError) as exc:
        raise SourceError(f"a chunk produced an unreadable file ({exc})", code=ErrorCode.ENCODE_FAILED) from exc


def _drop_preroll(encoded: Path, piece: Path, chunk: Chunk, rate: Fraction) -> None:
    """Copy ``encoded`` to ``piece`` from the IDR frame that ends the pre-roll, timestamps moved to start at 0.

    A stream copy, packet by packet. The closed GOP makes this exact: every pre-roll frame is decoded before
    that IDR frame, and nothing after it refers to anything before it.
    """
    import av

    with av.open(str(encoded)) as src, av.open(str(piece), "w", format="mp4") as dst:
        ist = src.streams.video[0]
        ost = dst.add_stream_from_template(ist)
        assert ist.time_base is not None
        cut = Fraction(chunk.preroll) / rate / ist.time_base
        if cut.denominator != 1:
            raise EncodeError(f"chunk {chunk.index}: frame {chunk.preroll} is not on the {ist.time_base} tick grid")
        started = False
        for packet in src.demux(ist):
            if packet.size == 0 or packet.pts is None or packet.dts is None:
                continue  # the demuxer's flush packet
            if not started:
                if not (packet.is_keyframe and packet.pts == cut):
                    continue
                started = True
            packet.pts -= int(cut)
            packet.dts -= int(cut)
            packet.stream = ost
            dst.mux(packet)
    if not started:
        raise EncodeError(f"chunk {chunk.index} has no keyframe after its pre-roll; it cannot be joined")


def render_chunk(
    plan: Plan,
    chunks: ChunkPlan,
    index: int,
    output: str | os.PathLike[str],
    *,
    ffmpeg_bin: str | None = None,
    on_progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
) -> Path:
    """Encode chunk ``index``'s frames into the mp4 piece ``output`` (CPU preset; no audio).

    The encoder sees the chunk's pre-roll first (:data:`worker.chunks.PREROLL_S`), which is then dropped
    by a stream copy. The piece appears only when complete and checked: exactly the chunk's frames, the
    first one a keyframe (an IDR frame, so it joins by stream copy).
    """
    chunk = chunks.chunks[index]
    preset = load_preset(plan.spec.format, "cpu")
    out_path = Path(output)
    partial = ffmpeg.temp_output_path(out_path, ".mp4")
    encoded = ffmpeg.temp_output_path(out_path, ".preroll.mp4") if chunk.preroll else partial
    graph_file = out_path.with_name(f".{out_path.name}.graph.txt")
    graph_file.write_text(build_chunk_graph(plan.info, plan.timeline, chunk, preset, plan.encode), encoding="utf-8")
    args = chunk_ffmpeg_args(
        plan.info,
        plan.timeline,
        chunk,
        preset,
        plan.encode,
        str(graph_file),
        str(encoded),
        max_pixels=plan.limits.max_source_pixels,
    )
    try:
        ffmpeg.run(
            args,
            ffmpeg=ffmpeg_bin,
            expected_duration_s=chunks.seconds(chunk.encoded),
            on_progress=on_progress,
            cancel=cancel,
            deadline=deadline,
            decoders=(plan.info.video.codec,) if plan.info.video is not None else (),
        )
        if chunk.preroll:
            _drop_preroll(encoded, partial, chunk, chunks.rate)
        frames, first_key = _frames_and_first_key(partial)
        if frames != chunk.frames:
            raise SourceError(
                f"chunk {index} has {frames} of {chunk.frames} frames (truncated or damaged source)",
                code=ErrorCode.SOURCE_UNREADABLE if frames < chunk.frames else ErrorCode.ENCODE_FAILED,
            )
        if not first_key:
            raise EncodeError(f"chunk {index} does not start with a keyframe; it cannot be joined by stream copy")
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)
        encoded.unlink(missing_ok=True)
        graph_file.unlink(missing_ok=True)
    return out_path


def render_audio(
    plan: Plan,
    output: str | os.PathLike[str],
    *,
    ffmpeg_bin: str | None = None,
    on_progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
) -> Path:
    """Encode a video render's whole audio (the whole render's own audio graph and encoder) into an m4a."""
    preset = load_preset(plan.spec.format, "cpu")
    out_path = Path(output)
    partial = ffmpeg.temp_output_path(out_path, ".m4a")
    graph_file = out_path.with_name(f".{out_path.name}.graph.txt")
    graph = build_graph(plan.info, plan.timeline, preset, plan.encode, audio_only=True)
    graph_file.write_text(graph, encoding="utf-8")
    args = audio_ffmpeg_args(
        plan.info, preset, plan.encode, str(graph_file), str(partial), max_pixels=plan.limits.max_source_pixels
    )
    try:
        ffmpeg.run(
            args,
            ffmpeg=ffmpeg_bin,
            expected_duration_s=plan.timeline.duration,
            on_progress=on_progress,
            cancel=cancel,
            deadline=deadline,
            decoders=(plan.info.audio.codec,) if plan.info.audio is not None else (),
        )
        verify_output(partial, plan, has_video=False)
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)
        graph_file.unlink(missing_ok=True)
    return out_path


def verify_assembled(path: Path, plan: Plan) -> None:
    """The joined file holds exactly the planned frames, and its picture and sound last the planned time.

    Frames are counted packet by packet (not from the header), and the video's duration must be within
    half a frame of the plan, the audio's within one frame of it (AAC's declared length, its priming and
    padding trimmed by the container).
    """
    import av

    want = plan.timeline.total_units
    planned = Fraction(want) / plan.timeline.rate
    frames, first_key = _frames_and_first_key(path)
    try:
        with av.open(str(path)) as container:
            v = container.streams.video[0]
            a = container.streams.audio[0]
            v_dur = Fraction(v.duration or 0) * Fraction(v.time_base or 0)
            a_dur = Fraction(a.duration or 0) * Fraction(a.time_base or 0)
            audio_tracks = len(container.streams.audio)
    except (av.error.FFmpegError, IndexError) as exc:
        raise SourceError(f"assembly produced an unreadable file ({exc})", code=ErrorCode.ENCODE_FAILED) from exc
    frame = 1 / plan.timeline.rate
    problems = []
    if frames != want:
        problems.append(f"{frames} of {want} frames")
    if abs(v_dur - planned) > frame / 2:
        problems.append(f"video lasts {float(v_dur):.3f} s, the plan {float(planned):.3f} s")
    if abs(a_dur - planned) > frame:
        problems.append(f"audio lasts {float(a_dur):.3f} s, the plan {float(planned):.3f} s")
    if audio_tracks != 1 or not first_key:
        problems.append(f"{audio_tracks} audio tracks, first frame key: {first_key}")
    if problems:
        raise EncodeError("the assembled render does not match its plan: " + "; ".join(problems))


def assemble(
    plan: Plan,
    chunks: ChunkPlan,
    pieces: Sequence[str | os.PathLike[str]],
    audio: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    ffmpeg_bin: str | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
) -> Path:
    """Join the chunks' pieces (in chunk order, all in one directory) and the audio into ``output``.

    A stream copy: nothing is decoded, so an hour of output assembles in seconds. The concat list is
    written beside the pieces and names only them (:func:`worker.chunks.concat_list`). The result is
    verified against the plan (:func:`verify_assembled`) before it is renamed into place.
    """
    paths = [Path(p) for p in pieces]
    if not paths or len({p.parent.resolve() for p in paths}) != 1:
        raise EncodeError("assembly needs the pieces in one directory")
    preset = load_preset(plan.spec.format, "cpu")
    out_path = Path(output)
    list_file = paths[0].with_name(".pieces.ffconcat")
    if len(paths) != len(chunks.chunks):
        raise EncodeError(f"assembly needs {len(chunks.chunks)} pieces, got {len(paths)}")
    list_file.write_text(concat_list([p.name for p in paths], piece_durations_us(chunks)), encoding="utf-8")
    partial = ffmpeg.temp_output_path(out_path, "." + preset.extension)
    args = assembly_args(str(list_file), str(audio), str(partial), muxer=preset.muxer, muxer_args=preset.muxer_args)
    try:
        ffmpeg.run(args, ffmpeg=ffmpeg_bin, cancel=cancel, deadline=deadline)
        verify_assembled(partial, plan)
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)
        list_file.unlink(missing_ok=True)
    return out_path


def render_chunked(
    source: str | os.PathLike[str],
    segments: list[Segment] | None,
    spec: OutputSpec,
    output: str | os.PathLike[str],
    *,
    chunks: int | None = None,
    settings: Settings | None = None,
    on_progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
) -> RenderResult:
    """Render in chunks on this machine: each chunk and the audio in their own ffmpeg process, at once.

    ``chunks`` is the number of chunks (``None``: RENDER_CHUNK_S / RENDER_CHUNK_MIN_S decide). An audio-only
    format, or a plan that comes out as one chunk, renders whole (:func:`render`). Progress is the sum over
    the chunks, weighted by their frames. Cancel, the deadline or any failure stops every process; nothing
    is left behind.
    """
    settings = settings or Settings()
    started = time.monotonic()
    plan = plan_render(source, segments, spec, limits=Limits.from_settings(settings))
    preset = load_preset(spec.format, "cpu")
    cplan = chunk_plan_for(plan, settings, count=chunks) if preset.has_video else None
    if cplan is None or len(cplan.chunks) == 1:
        return render(
            source,
            segments,
            spec,
            output,
            settings=settings,
            on_progress=on_progress,
            cancel=cancel,
            deadline=deadline,
            nvenc=NvencStatus(False, "chunked renders use the CPU presets", 0.0),
        )
    out_path = Path(output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg_bin = settings.ffmpeg_path or None
    stop = threading.Event()  # set on cancel or the first failure: every other ffmpeg is killed
    done = [0.0] * len(cplan.chunks)
    lock = threading.Lock()

    def progress(k: int) -> Callable[[float], None]:
        def report(ratio: float) -> None:
            with lock:
                done[k] = ratio * cplan.chunks[k].frames
                total = sum(done) / cplan.total
            if on_progress is not None:
                on_progress(min(total, 0.99))  # 1.0 once assembled

        return report

    with scratch.temp_dir("render-chunks", settings.work_dir) as tmp:
        names = [Path(tmp) / piece_name(c.index) for c in cplan.chunks]
        audio = Path(tmp) / "audio.m4a"
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(names) + 1) as pool:
            futures = [
                pool.submit(render_audio, plan, audio, ffmpeg_bin=ffmpeg_bin, cancel=stop, deadline=deadline),
                *(
                    pool.submit(
                        render_chunk,
                        plan,
                        cplan,
                        c.index,
                        names[c.index],
                        ffmpeg_bin=ffmpeg_bin,
                        on_progress=progress(c.index),
                        cancel=stop,
                        deadline=deadline,
                    )
                    for c in cplan.chunks
                ),
            ]
            pending = set(futures)
            while pending:
                finished, pending = concurrent.futures.wait(pending, timeout=0.1, return_when="FIRST_EXCEPTION")
                if cancel is not None and cancel.is_set():
                    stop.set()
                if any(f.exception() is not None for f in finished):
                    stop.set()
        if cancel is not None and cancel.is_set():
            raise Cancelled("the render was cancelled")
        # The first real failure, not the Cancelled of the processes stopped because of it.
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise next((e for e in errors if not isinstance(e, Cancelled)), errors[0])  # type: ignore[misc]
        assemble(plan, cplan, names, audio, out_path, ffmpeg_bin=ffmpeg_bin, cancel=cancel, deadline=deadline)
    if on_progress is not None:
        on_progress(1.0)
    return _result(plan, preset, out_path, started, None)


__all__ = [
    "Grid",
    "Limits",
    "Plan",
    "RenderResult",
    "plan_render",
    "render",
    "command_for",
    "grid_of",
    "ErrorCode",
    "chunk_plan_for",
    "render_chunk",
    "render_audio",
    "assemble",
    "render_chunked",
]
