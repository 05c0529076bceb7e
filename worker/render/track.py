"""A smart render's video track: the copies and the encoded batches of a :class:`~worker.smart.SmartPlan`, made and
spliced into one video-only file (worker/render/splice.py). A whole smart render makes one such track for the
output (worker/render/smart.py); a chunked smart render makes one per chunk (worker/render/parts.py).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from worker.allowlists import input_options
from worker.gops import GopIndex
from worker.graph import matching_encoder_args
from worker.planner import Plan
from worker.render.encode import encode_frames, piece_preset
from worker.render.splice import Part, join_video
from worker.render.together import side_by_side
from worker.smart import Batch, Copy, SmartPlan

#: Batches encoded at once (each ffmpeg's x264 threads too; two keep both cores of a small worker busy).
PARALLEL = 2


def make_track(
    plan: Plan,
    smart: SmartPlan,
    index: GopIndex,
    work: Path,
    output: Path,
    *,
    ffmpeg_bin: str | None = None,
    on_progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
) -> None:
    """Encode ``smart``'s batches (in ``work``) and splice them with its copies into the video file ``output``.

    ``on_progress`` is told the share of the encoded frames done. Cancel, the deadline or a failed batch stops
    every encode; the batch files are the caller's to remove (they are in ``work``).
    """
    video = plan.info.video
    assert video is not None
    batches = smart.batches(PARALLEL)
    piece = piece_preset(plan.preset)
    names = {b.index: work / f"batch-{b.index:05d}.{piece.extension}" for b in batches}
    done = {b.index: 0.0 for b in batches}
    lock = threading.Lock()

    def progress(k: int, frames: int) -> Callable[[float], None]:
        def report(ratio: float) -> None:
            with lock:
                done[k] = ratio * frames
                total = sum(done.values()) / max(1, smart.encoded)
            if on_progress is not None:
                on_progress(min(total, 1.0))

        return report

    args = matching_encoder_args(index)

    def encode(b: Batch) -> Callable[[threading.Event], object]:
        return lambda stop: encode_frames(
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

    side_by_side([encode(b) for b in batches], workers=PARALLEL, cancel=cancel)
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
    join_video(track, output, rate=smart.rate, muxer=piece.muxer, cancel=cancel, deadline=deadline)
