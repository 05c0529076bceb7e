"""Encoding an output's frames into a video piece, the unit a chunked render's chunk and a smart render's batch
of encoded segments are both made of (worker/render/parts.py, worker/render/track.py)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from worker import ffmpeg
from worker.chunks import Chunk
from worker.errors import EncodeError, ErrorCode, SourceError
from worker.graph import build_chunk_graph, chunk_ffmpeg_args
from worker.planner import Plan
from worker.presets import Preset, load_preset
from worker.render.packets import drop_preroll, frames_and_first_key


def piece_preset(preset: Preset) -> Preset:
    """The preset a chunk's video piece is written with: ``preset``'s own codec, in its piece container."""
    if preset.piece_format is None:
        raise EncodeError(f"{preset.format} names no piece format: it cannot be chunked")
    return load_preset(preset.piece_format, "cpu")


def encode_frames(
    plan: Plan,
    chunk: Chunk,
    output: str | os.PathLike[str],
    *,
    ffmpeg_bin: str | None = None,
    on_progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
    encoder_args: Sequence[str] | None = None,
    keys: Sequence[int] = (),
) -> Path:
    """Encode ``chunk``'s frames into the video piece ``output``: :func:`render_chunk`'s work, for any chunk
    (a smart render's batch of encoded segments, worker/smart.py). ``encoder_args`` replaces the chunk encoder
    options and ``keys`` adds IDR frames (:func:`worker.graph.chunk_ffmpeg_args`)."""
    index = chunk.index
    rate = plan.timeline.rate
    preset = plan.preset
    piece = piece_preset(preset)
    out_path = Path(output)
    partial = ffmpeg.temp_output_path(out_path, "." + piece.extension)
    encoded = ffmpeg.temp_output_path(out_path, f".preroll.{piece.extension}") if chunk.preroll else partial
    graph_file = out_path.with_name(f".{out_path.name}.graph.txt")
    graph = build_chunk_graph(plan.info, plan.timeline, chunk, preset, plan.encode, plan.crop_path)
    graph_file.write_text(graph, encoding="utf-8")
    args = chunk_ffmpeg_args(
        plan.info,
        plan.timeline,
        chunk,
        preset,
        plan.encode,
        str(graph_file),
        str(encoded),
        max_pixels=plan.limits.max_source_pixels,
        muxer=piece.muxer,
        encoder_args=encoder_args,
        keys=keys,
    )
    try:
        ffmpeg.run(
            args,
            ffmpeg=ffmpeg_bin,
            expected_duration_s=float(chunk.encoded / rate),
            on_progress=on_progress,
            cancel=cancel,
            deadline=deadline,
            decoders=(plan.info.video.codec,) if plan.info.video is not None else (),
        )
        if chunk.preroll:
            drop_preroll(encoded, partial, chunk, rate, piece.muxer)
        frames, first_key = frames_and_first_key(partial)
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
