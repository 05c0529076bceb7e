"""The ``chunked`` strategy on one machine: each chunk and the audio in their own ffmpeg process, at once,
then joined by stream copy (``render-cli render --chunks N``). Through the queue the same three steps
(worker/render/parts.py) run as messages on any worker instead (worker/pipeline/chunked.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from worker import scratch
from worker.chunks import ChunkPlan
from worker.gops import GopIndex
from worker.planner import Plan, copied_frames
from worker.render import parts
from worker.render.result import RenderResult, result_of
from worker.render.together import side_by_side
from worker.settings import Settings


def render_chunked(
    plan: Plan,
    chunks: ChunkPlan,
    output: str | os.PathLike[str],
    *,
    settings: Settings,
    on_progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
    on_encoder: Callable[[str], None] | None = None,
    gops: GopIndex | None = None,
) -> RenderResult:
    """Render ``plan`` in ``chunks`` on this machine; with the source's GOP index (``gops``) each chunk copies
    the GOPs it keeps whole (worker/render/parts.py).

    Progress is the sum over the chunks, weighted by their frames. Cancel, the deadline or any failure
    stops every process; nothing is left behind.
    """
    started = time.monotonic()
    out_path = Path(output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg_bin = settings.ffmpeg_path or None
    done = [0.0] * len(chunks.chunks)
    lock = threading.Lock()
    if on_encoder is not None:
        on_encoder(plan.preset.encoder)  # chunks encode on the CPU preset (worker/render/parts.py)

    def progress(k: int) -> Callable[[float], None]:
        def report(ratio: float) -> None:
            with lock:
                done[k] = ratio * chunks.chunks[k].frames
                total = sum(done) / chunks.total
            if on_progress is not None:
                on_progress(min(total, 0.99))  # 1.0 once assembled

        return report

    with scratch.temp_dir("render-chunks", settings.work_dir) as tmp:
        names = [Path(tmp) / parts.chunk_file_name(plan.preset, c.index) for c in chunks.chunks]
        audio = Path(tmp) / parts.audio_file_name(plan.preset)

        def chunk(k: int) -> Callable[[threading.Event], object]:
            return lambda stop: parts.render_chunk(
                plan,
                chunks,
                k,
                names[k],
                ffmpeg_bin=ffmpeg_bin,
                on_progress=progress(k),
                cancel=stop,
                deadline=deadline,
                gops=gops,
            )

        def sound(stop: threading.Event) -> object:
            return parts.render_audio(plan, audio, ffmpeg_bin=ffmpeg_bin, cancel=stop, deadline=deadline)

        side_by_side([sound, *(chunk(c.index) for c in chunks.chunks)], workers=len(names) + 1, cancel=cancel)
        parts.assemble(
            plan, chunks, names, audio, out_path, ffmpeg_bin=ffmpeg_bin, cancel=cancel, deadline=deadline, gops=gops
        )
    if on_progress is not None:
        on_progress(1.0)
    return result_of(plan, plan.preset, out_path, started, None, copied=copied_frames(plan, chunks, gops))
