"""The three steps of a chunked render, each runnable on a different worker (worker/pipeline/chunked.py)
or side by side on one (worker/render/chunked.py):

* :func:`render_chunk`: one chunk's frames into one video piece (the format's ``piece`` preset);
* :func:`render_audio`: the render's whole audio, once, into the ``audio_piece`` format;
* :func:`assemble`: the pieces and the audio joined into the output by stream copy, checked against the plan.

Chunks encode on the CPU preset on every worker, so that pieces from different hosts join into one stream.
Where the source qualifies for smart render (the strategy carries its GOP index), each chunk copies the GOPs
it keeps whole and encodes the rest as a smart render does (:func:`worker.smart.plan_chunk`,
worker/render/track.py), and the assembly writes the pieces' track afresh (worker/render/splice.py), so the
timing is uniform across the chunks' joins as across every copy's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

from worker import ffmpeg, smart
from worker.chunks import ChunkPlan, assembly_args, concat_list, piece_durations_us, piece_name
from worker.errors import EncodeError, ErrorCode, SourceError
from worker.gops import GopIndex
from worker.graph import audio_ffmpeg_args, build_graph
from worker.planner import Plan, smart_chunk
from worker.presets import Preset, load_preset
from worker.render import loudness
from worker.render.encode import encode_frames, piece_preset
from worker.render.packets import check_uniform, frames_and_first_key
from worker.render.result import verify_output
from worker.render.splice import Part, join_video
from worker.render.track import make_track

__all__ = [
    "assemble",
    "audio_file_name",
    "audio_piece_preset",
    "chunk_file_name",
    "piece_preset",
    "render_audio",
    "render_chunk",
    "verify_assembled",
]


def audio_piece_preset(preset: Preset) -> Preset:
    """The preset a chunked render's audio piece is written with."""
    if preset.audio_piece_format is None:
        raise EncodeError(f"{preset.format} names no audio piece format: it cannot be chunked")
    return load_preset(preset.audio_piece_format, "cpu")


def chunk_file_name(preset: Preset, index: int) -> str:
    """The file (and object) name of chunk ``index``'s piece of a ``preset`` render: ``chunk-00003.mp4``."""
    return piece_name(index, piece_preset(preset).extension)


def audio_file_name(preset: Preset) -> str:
    """The file (and object) name of a chunked ``preset`` render's audio: ``audio.m4a``."""
    return f"audio.{audio_piece_preset(preset).extension}"


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
    gops: GopIndex | None = None,
) -> Path:
    """Encode chunk ``index``'s frames into the video piece ``output`` (CPU preset; no audio).

    The encoder sees the chunk's pre-roll first (:data:`worker.chunks.PREROLL_S`), which is then dropped
    by a stream copy. The piece appears only when complete and checked: exactly the chunk's frames, the
    first one a keyframe (an IDR frame, so it joins by stream copy). With the source's GOP index (``gops``,
    a smart render's), the chunk's whole GOPs are copied instead and only the rest encoded, no pre-roll.
    """
    if gops is not None:
        out_path = Path(output)
        partial = ffmpeg.temp_output_path(out_path, "." + piece_preset(plan.preset).extension)
        work = out_path.with_name(f".{out_path.name}.batches")
        work.mkdir(exist_ok=True)
        try:
            splan = smart_chunk(plan, chunks, index, gops)
            make_track(
                plan,
                splan,
                gops,
                work,
                partial,
                ffmpeg_bin=ffmpeg_bin,
                on_progress=on_progress,
                cancel=cancel,
                deadline=deadline,
            )
            os.replace(partial, out_path)
        finally:
            partial.unlink(missing_ok=True)
            for leftover in work.iterdir():
                leftover.unlink()
            work.rmdir()
        return out_path
    return encode_frames(
        plan,
        chunks.chunks[index],
        output,
        ffmpeg_bin=ffmpeg_bin,
        on_progress=on_progress,
        cancel=cancel,
        deadline=deadline,
    )


def render_audio(
    plan: Plan,
    output: str | os.PathLike[str],
    *,
    ffmpeg_bin: str | None = None,
    on_progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
) -> Path:
    """Encode a video render's whole audio (the whole render's own audio graph and encoder) into its piece.

    Where a loudness target was asked for and the plan's gain is not measured yet, it is measured here, once:
    the audio is encoded once, so the whole output gets one gain.
    """
    preset = plan.preset
    piece = audio_piece_preset(preset)
    out_path = Path(output)
    plan = loudness.normalise(plan, out_path.parent, ffmpeg_bin=ffmpeg_bin, cancel=cancel, deadline=deadline)
    partial = ffmpeg.temp_output_path(out_path, "." + piece.extension)
    graph_file = out_path.with_name(f".{out_path.name}.graph.txt")
    graph = build_graph(plan.info, plan.timeline, preset, plan.encode, audio_only=True, gain=plan.loudness)
    graph_file.write_text(graph, encoding="utf-8")
    args = audio_ffmpeg_args(
        plan.info,
        preset,
        plan.encode,
        str(graph_file),
        str(partial),
        max_pixels=plan.limits.max_source_pixels,
        muxer=piece.muxer,
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
    frames, first_key = frames_and_first_key(path)
    try:
        with av.open(str(path)) as container:
            audio_tracks = len(container.streams.audio)
        v_dur, a_dur = _stream_duration(path, "video"), _stream_duration(path, "audio")
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


def _stream_duration(path: Path, kind: str) -> Fraction:
    """How long the first ``kind`` stream of ``path`` lasts: the header's figure where the container keeps one
    (mp4, mov), else from its packets, first start to last end (Matroska keeps none per stream)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
        tb = Fraction(stream.time_base or 0)
        if stream.duration:
            return Fraction(stream.duration) * tb
        starts, ends = [], []
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                starts.append(packet.pts)
                ends.append(packet.pts + (packet.duration or 0))
        return Fraction(max(ends) - min(starts)) * tb if starts else Fraction(0)


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
    gops: GopIndex | None = None,
) -> Path:
    """Join the chunks' pieces (in chunk order, all in one directory) and the audio into ``output``.

    A stream copy: nothing is decoded, so an hour of output assembles in seconds. The concat list is
    written beside the pieces and names only them (:func:`worker.chunks.concat_list`). The result is
    verified against the plan (:func:`verify_assembled`) before it is renamed into place.
    """
    paths = [Path(p) for p in pieces]
    if not paths or len({p.parent.resolve() for p in paths}) != 1:
        raise EncodeError("assembly needs the pieces in one directory")
    preset = plan.preset
    out_path = Path(output)
    list_file = paths[0].with_name(".pieces.ffconcat")
    if len(paths) != len(chunks.chunks):
        raise EncodeError(f"assembly needs {len(chunks.chunks)} pieces, got {len(paths)}")
    partial = ffmpeg.temp_output_path(out_path, "." + preset.extension)
    video = paths[0].with_name(f".video.{piece_preset(preset).extension}")
    if gops is None:
        list_file.write_text(concat_list([p.name for p in paths], piece_durations_us(chunks)), encoding="utf-8")
        muxing = assembly_args(
            str(list_file), str(audio), str(partial), muxer=preset.muxer, muxer_args=preset.muxer_args
        )
    else:
        # Pieces that copy the source's GOPs: their track written afresh, one frame duration a packet.
        muxing = smart.join_args(str(video), str(audio), str(partial), muxer=preset.muxer, muxer_args=preset.muxer_args)
    try:
        if gops is not None:
            track = [Part(str(p), 0, 0, c.frames) for p, c in zip(paths, chunks.chunks, strict=True)]
            join_video(
                track, video, rate=chunks.rate, muxer=piece_preset(preset).muxer, cancel=cancel, deadline=deadline
            )
        ffmpeg.run(muxing, ffmpeg=ffmpeg_bin, cancel=cancel, deadline=deadline)
        verify_assembled(partial, plan)
        if gops is not None:
            check_uniform(partial, chunks.rate)
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)
        list_file.unlink(missing_ok=True)
        video.unlink(missing_ok=True)
    return out_path
