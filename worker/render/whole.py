"""The ``whole`` strategy: one ffmpeg reads the source once and encodes every kept frame.

NVENC first where it works (worker/encoders.py), the CPU preset after a mid-job failure; audio-only outputs
keep the source's artwork by stream copy (worker/cover.py). The file appears at its path only when ffmpeg
succeeded and the result was checked against the plan.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from worker import cover, ffmpeg, scratch
from worker.encoders import NvencStatus, encode_with_fallback, nvenc_status, variant_order
from worker.graph import ffmpeg_args, render_decoders
from worker.planner import Plan
from worker.presets import Preset, load_preset
from worker.render.result import RenderResult, result_of, verify_output
from worker.settings import Settings


def command_for(
    plan: Plan, preset: Preset, graph_file: str, output_file: str, cover_file: str | None = None
) -> list[str]:
    """The ffmpeg argument list of a whole render of ``plan`` with ``preset`` (``render-cli graph`` prints it)."""
    return ffmpeg_args(
        plan.info,
        preset,
        plan.encode,
        graph_file,
        output_file,
        max_pixels=plan.limits.max_source_pixels,
        cover_file=cover_file,
    )


def render_whole(
    plan: Plan,
    output: str | os.PathLike[str],
    *,
    settings: Settings,
    on_progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
    nvenc: NvencStatus | None = None,
    on_encoder: Callable[[str], None] | None = None,
) -> RenderResult:
    """Render ``plan`` into ``output`` with one ffmpeg (two, if NVENC fails part-way and the CPU takes over).

    ``on_encoder`` is told the encoder ("cpu", "nvenc") each time an encode with it starts: until then the
    job has not encoded anything.
    """
    started = time.monotonic()
    out_path = Path(output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg_bin = settings.ffmpeg_path or None
    has_video = plan.has_video
    if nvenc is None and has_video:
        nvenc = nvenc_status(settings.nvenc, ffmpeg_path=ffmpeg_bin, timeout_s=settings.nvenc_probe_timeout_s)
    order = variant_order(has_video, nvenc or NvencStatus(False, "not needed", 0.0))

    with scratch.temp_dir("render", settings.work_dir) as tmp:
        # Audio-only outputs keep the source's artwork (copied, not decoded: worker/cover.py).
        art = cover.Cover(None)
        if not has_video:
            art = cover.prepare(plan.info, Path(tmp), max_pixels=plan.limits.max_source_pixels)

        def attempt(variant: str) -> None:
            preset = load_preset(plan.spec.format, variant)
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
    preset = load_preset(plan.spec.format, variant)
    return result_of(plan, preset, out_path, started, fallback, (art.note,) if art.note else ())
