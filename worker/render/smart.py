"""The ``smart`` strategy: the GOPs a cut keeps whole are copied from the source, the frames around each cut are
encoded, and one exact track is written from both (worker/smart.py plans it; worker/render/splice.py joins).

Steps, all on this machine:

1. the audio, once, whole (the chunked strategy's audio step: the same graph, gain and encoder), beside
2. the encoded segments, in a few batches (:meth:`worker.smart.SmartPlan.batches`), each one ffmpeg that
   encodes its segments' frames in a row as a chunk with no pre-roll (the chunked strategy's encode step),
   an IDR frame forced at each segment's start, with x264 options that match the copied stream
   (:func:`worker.graph.matching_encoder_args`);
3. the video track spliced from the copies and the segments (:func:`worker.render.splice.join_video`);
4. the track and the audio joined by stream copy into the output (``+faststart`` for mp4, as every render),
   then checked: every planned frame, durations, one audio track, a keyframe first, and decode times that
   step uniformly across every seam (:func:`worker.render.packets.check_uniform`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from worker import ffmpeg, scratch
from worker.errors import Cancelled
from worker.gops import GopIndex
from worker.graph import matching_encoder_args
from worker.planner import Plan
from worker.probe import input_options
from worker.render import parts
from worker.render.packets import check_uniform
from worker.render.result import RenderResult, result_of
from worker.render.splice import Part, join_video
from worker.settings import Settings
from worker.smart import Copy, SmartPlan, join_args

#: Encodes at once (each ffmpeg's x264 threads too; the segments are short, so two keep both cores busy).
PARALLEL = 2


def render_smart(
    plan: Plan,
    smart: SmartPlan,
    index: GopIndex,
    output: str | os.PathLike[str],
    *,
    settings: Settings,
    on_progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
    on_encoder: Callable[[str], None] | None = None,
) -> RenderResult:
    """Render ``plan`` by copying and encoding as ``smart`` says; nothing is left behind on failure."""
    started = time.monotonic()
    out_path = Path(output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg_bin = settings.ffmpeg_path or None
    video = plan.info.video
    assert video is not None
    if on_encoder is not None:
        on_encoder(plan.preset.encoder)  # encoded segments use the CPU preset (their x264 matches the copies)
    stop = threading.Event()
    batches = smart.batches(PARALLEL)
    done = {b.index: 0.0 for b in batches}
    lock = threading.Lock()

    def progress(k: int, frames: int) -> Callable[[float], None]:
        def report(ratio: float) -> None:
            with lock:
                done[k] = ratio * frames
                total = sum(done.values()) / max(1, smart.encoded)
            if on_progress is not None:
                on_progress(min(0.9 * total, 0.9))  # the splice and the join are the last tenth

        return report

    args = matching_encoder_args(index)
    with scratch.temp_dir("render-smart", settings.work_dir) as tmp:
        work = Path(tmp)
        names = {b.index: work / parts.chunk_file_name(plan.preset, b.index) for b in batches}
        audio = work / parts.audio_file_name(plan.preset)
        with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            futures = [
                pool.submit(parts.render_audio, plan, audio, ffmpeg_bin=ffmpeg_bin, cancel=stop, deadline=deadline),
                *(
                    pool.submit(
                        parts.encode_frames,
                        plan,
                        b.chunk,
                        names[b.index],
                        ffmpeg_bin=ffmpeg_bin,
                        on_progress=progress(b.index, b.chunk.frames),
                        cancel=stop,
                        deadline=deadline,
                        encoder_args=args,
                        keys=b.keys,
                    )
                    for b in batches
                ),
            ]
            pending = set(futures)
            while pending:
                finished, pending = concurrent.futures.wait(pending, timeout=0.1, return_when="FIRST_EXCEPTION")
                if (cancel is not None and cancel.is_set()) or any(f.exception() is not None for f in finished):
                    stop.set()
                    for f in pending:
                        f.cancel()
        if cancel is not None and cancel.is_set():
            raise Cancelled("the render was cancelled")
        errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
        if errors:
            raise next((e for e in errors if not isinstance(e, Cancelled)), errors[0])  # type: ignore[misc]
        source_options = input_options(plan.limits.max_source_pixels, ())
        # Where each encoded segment is: its batch's file, from the frame its IDR frame was forced at.
        encoded = {m.index: (names[b.index], at) for b in batches for m, at in zip(b.members, b.keys, strict=True)}
        track = []
        for seg in smart.segments:
            if isinstance(seg, Copy):
                src = Part(plan.info.path, video.index, seg.src, seg.src + seg.frames, origin=Fraction(video.start))
                track.append(dataclasses.replace(src, prefix=index.parameter_sets, options=source_options))
            else:
                name, at = encoded[seg.index]
                track.append(Part(str(name), 0, at, at + seg.frames))
        piece = parts.piece_preset(plan.preset)
        joined = work / f"video.{piece.extension}"
        join_video(track, joined, rate=smart.rate, muxer=piece.muxer, cancel=cancel, deadline=deadline)
        preset = plan.preset
        partial = ffmpeg.temp_output_path(out_path, "." + preset.extension)
        try:
            ffmpeg.run(
                join_args(str(joined), str(audio), str(partial), muxer=preset.muxer, muxer_args=preset.muxer_args),
                ffmpeg=ffmpeg_bin,
                cancel=cancel,
                deadline=deadline,
            )
            parts.verify_assembled(partial, plan)
            check_uniform(partial, smart.rate)
            os.replace(partial, out_path)
        finally:
            partial.unlink(missing_ok=True)
    if on_progress is not None:
        on_progress(1.0)
    return result_of(plan, plan.preset, out_path, started, None, copied=smart.copied)
