"""The ``smart`` strategy: the GOPs a cut keeps whole are copied from the source, the frames around each cut are
encoded, and one exact track is written from both (worker/smart.py plans it; worker/render/track.py makes it).

Steps, all on this machine:

1. the audio, once, whole (the chunked strategy's audio step: the same graph, gain and encoder), beside
2. the video track (:func:`worker.render.track.make_track`): the encoded segments in a few batches, each one
   ffmpeg that encodes its segments' frames in a row, an IDR frame forced at each segment's start, with x264
   options that match the copied stream (:func:`worker.graph.matching_encoder_args`), then spliced with the
   copies (:func:`worker.render.splice.join_video`);
3. the track and the audio joined by stream copy into the output (``+faststart`` for mp4, as every render),
   then checked: every planned frame, durations, one audio track, a keyframe first, and decode times that
   step uniformly across every seam (:func:`worker.render.packets.check_uniform`).

A chunked render copies too (worker/render/parts.py): each chunk makes its own track of its frames.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from worker import ffmpeg, scratch
from worker.gops import GopIndex
from worker.planner import Plan
from worker.render import parts
from worker.render.packets import check_uniform
from worker.render.result import RenderResult, result_of
from worker.render.together import side_by_side
from worker.render.track import make_track
from worker.settings import Settings
from worker.smart import SmartPlan, join_args


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
    if on_encoder is not None:
        on_encoder(plan.preset.encoder)  # encoded segments use the CPU preset (their x264 matches the copies)

    def progress(ratio: float) -> None:
        if on_progress is not None:
            on_progress(min(0.9 * ratio, 0.9))  # the splice and the join are the last tenth

    with scratch.temp_dir("render-smart", settings.work_dir) as tmp:
        work = Path(tmp)
        audio = work / parts.audio_file_name(plan.preset)
        video = work / f"video.{parts.piece_preset(plan.preset).extension}"

        def sound(stop: threading.Event) -> object:
            return parts.render_audio(plan, audio, ffmpeg_bin=ffmpeg_bin, cancel=stop, deadline=deadline)

        def picture(stop: threading.Event) -> object:
            make_track(
                plan,
                smart,
                index,
                work,
                video,
                ffmpeg_bin=ffmpeg_bin,
                on_progress=progress,
                cancel=stop,
                deadline=deadline,
            )
            return None

        side_by_side([sound, picture], workers=2, cancel=cancel)
        preset = plan.preset
        partial = ffmpeg.temp_output_path(out_path, "." + preset.extension)
        try:
            ffmpeg.run(
                join_args(str(video), str(audio), str(partial), muxer=preset.muxer, muxer_args=preset.muxer_args),
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
