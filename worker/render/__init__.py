"""Renderers: one module a strategy, each a function of a :class:`~worker.planner.Plan` and an output path
that returns a :class:`RenderResult`. No Redis, no S3: the queue layer (worker/pipeline/) wraps them with
storage, records and webhooks, and ``render-cli`` calls them directly on local files.

* :mod:`~worker.render.whole`: one ffmpeg, NVENC where it works;
* :mod:`~worker.render.chunked`: chunks side by side on this machine, joined by stream copy;
* :mod:`~worker.render.smart`: whole GOPs copied from the source, the frames around the cuts encoded, and
  :mod:`~worker.render.splice`, which writes one exactly timed track from both;
* :mod:`~worker.render.parts`: the chunked strategy's three steps, which the queue runs on any worker;
* :mod:`~worker.render.packets`: packet-level copy and checks (keyframes, pre-roll);
* :mod:`~worker.render.result`: the result, and the check that a file holds its plan.

:func:`render` is the entry point: it plans (unless given the plan), asks the planner for the strategy
(:func:`worker.planner.strategy_for`, the one place that decides it) and runs that strategy's module.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from worker import planner, scratch
from worker.encoders import NvencStatus
from worker.output import OutputSpec
from worker.plan import Segment
from worker.planner import Kind, Plan, Strategy
from worker.render import faces, loudness
from worker.render.chunked import render_chunked
from worker.render.result import RenderResult
from worker.render.smart import render_smart
from worker.render.whole import command_for, render_whole
from worker.settings import Settings


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
    strategy: Strategy | None = None,
    chunks: int | None = None,
    on_encoder: Callable[[str], None] | None = None,
) -> RenderResult:
    """Render ``source`` through ``segments`` into ``output``.

    ``plan``: the plan of these very arguments, when the caller made it already (the queue's first worker
    plans to decide the strategy), so the source is not probed twice. ``strategy``: the one the caller was
    given for it; without one, ``chunks`` > 1 asks for that many chunks side by side (``render-cli render
    --chunks N``) and anything else renders whole. ``on_encoder`` is told the encoder ("cpu", "nvenc") each
    time an encode with it starts.

    The file appears at ``output`` only when the render succeeded; a failed or cancelled render leaves
    nothing behind.
    """
    settings = settings or Settings()
    if plan is None:
        plan = planner.plan_render(source, segments, spec, limits=planner.Limits.from_settings(settings))
    if strategy is None:
        split = chunks is not None and chunks > 1
        strategy = planner.strategy_for(plan, settings, split=split, chunks=chunks if split else None)
    # Where the speaker is, for a crop to follow: planned once, for the whole output, before any encode.
    plan = faces.follow_speaker(plan, cancel=cancel, deadline=deadline)
    if plan.spec.loudness is not None and plan.loudness is None:
        # Measured once, before any encode, over all the kept audio: one gain for the whole output.
        with scratch.temp_dir("loudness", settings.work_dir) as work:
            plan = loudness.normalise(
                plan, Path(work), ffmpeg_bin=settings.ffmpeg_path or None, cancel=cancel, deadline=deadline
            )
    if strategy.kind is Kind.SMART and strategy.smart is not None and strategy.gops is not None:
        return render_smart(
            plan,
            strategy.smart,
            strategy.gops,
            output,
            settings=settings,
            on_progress=on_progress,
            cancel=cancel,
            deadline=deadline,
            on_encoder=on_encoder,
        )
    if strategy.kind is Kind.CHUNKED and strategy.chunks is not None:
        return render_chunked(
            plan,
            strategy.chunks,
            output,
            settings=settings,
            on_progress=on_progress,
            cancel=cancel,
            deadline=deadline,
            on_encoder=on_encoder,
            gops=strategy.gops,
        )
    if chunks is not None and chunks > 1:
        # Asked for chunks but planned whole (audio-only, or too short to split): the CPU, as chunks would.
        nvenc = NvencStatus(False, "chunked renders use the CPU presets", 0.0)
    return render_whole(
        plan,
        output,
        settings=settings,
        on_progress=on_progress,
        cancel=cancel,
        deadline=deadline,
        nvenc=nvenc,
        on_encoder=on_encoder,
    )


__all__ = ["RenderResult", "command_for", "render", "render_chunked", "render_smart", "render_whole"]
