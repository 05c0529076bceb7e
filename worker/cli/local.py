"""``render-cli`` on local files: render, probe, graph, export and presets, the worker's pipeline without the
queue. A render's SIGINT or SIGTERM cancels it (its partial output removed) instead of killing the process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from worker import presets as presets_mod
from worker.cli.base import as_int, fail, load_plan, main, output_options, output_spec, version_option
from worker.errors import InvalidJob, RenderError
from worker.output import EXPORT_FORMATS
from worker.settings import Settings


class _Progress:
    """A bar on a terminal, plain lines (every 10 %) otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.tty = sys.stderr.isatty()
        self.enabled = enabled
        self.last = -1
        self.bar: Any = None
        self.lock = threading.Lock()

    def __enter__(self) -> _Progress:
        if self.enabled and self.tty:
            self.bar = click.progressbar(length=1000, label="rendering", file=sys.stderr)
            self.bar.__enter__()
        return self

    def __call__(self, ratio: float) -> None:
        if not self.enabled:
            return
        with self.lock:
            if self.bar is not None:
                self.bar.update(int(ratio * 1000) - self.bar.pos)
                return
            step = int(ratio * 10)
            if step > self.last:
                self.last = step
                click.echo(f"progress {step * 10}%", err=True)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived during a render, which was cancelled and cleaned up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[tuple[threading.Event, list[int]]]:
    """SIGINT and SIGTERM cancel the render through its cancel event instead of killing the process.

    The default SIGTERM ends Python at once, leaving ffmpeg's ``.partial`` output and the render's scratch
    directory behind; cancelling lets :func:`worker.render.render` stop ffmpeg and remove both. Yields the
    event and a list that receives the signal's number. Only the main thread may install handlers, so
    elsewhere (a test's thread) nothing is installed.
    """
    cancel = threading.Event()
    got: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        got.append(signum)
        cancel.set()

    if threading.current_thread() is not threading.main_thread():
        yield cancel, got
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield cancel, got
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def check_output_path(source: Path, output: Path, force: bool) -> None:
    """Refuse to write over the source, ever, and over an existing file unless ``force``."""
    same = source.resolve() == output.resolve()
    if not same and output.exists() and source.exists():
        with contextlib.suppress(OSError):
            same = os.path.samefile(source, output)  # a hard link or another name for the source
    if same:
        raise InvalidJob(f"the output {output} is the source itself; choose another output path")
    if output.exists() and not force:
        raise InvalidJob(f"the output {output} exists; pass --force to replace it")
    if output.is_dir():
        raise InvalidJob(f"the output {output} is a directory")


@main.command()
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@output_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists (never the source).")
@click.option("--nvenc", type=click.Choice(["auto", "off"]), default=None, help="Override RENDER_NVENC.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option(
    "--chunks",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Cut the output into N chunks rendered by N ffmpeg processes at once, then joined by stream copy "
    "(mp4/mov; 1 renders whole).",
)
@version_option
def render(
    source: Path,
    cut: Path | None,
    fmt: str,
    resolution: str | None,
    video_bitrate: str | None,
    audio_bitrate: str | None,
    loudness: str | None,
    aspect: str | None,
    smart: bool,
    output: Path,
    force: bool,
    nvenc: str | None,
    quiet: bool,
    chunks: int,
) -> None:
    """Render SOURCE through a cut plan into OUTPUT; prints the result as JSON.

    SIGINT (Ctrl-C) and SIGTERM stop the render and remove its partial output; the exit status is then
    128 + the signal's number (130 for Ctrl-C).
    """
    from worker import ffmpeg
    from worker.errors import Cancelled
    from worker.render import render as do_render

    settings = Settings.from_env()
    if nvenc:
        settings = settings.replace(nvenc=nvenc)
    try:
        check_output_path(source, output, force)
        ffmpeg.check_binary(settings.ffmpeg_path or None)  # an old one would fail the encode, less clearly
        segments = load_plan(cut, settings.max_segments)
        spec = output_spec(fmt, resolution, as_int(video_bitrate), as_int(audio_bitrate), loudness, aspect, smart)
        with cancel_on_signals() as (cancel, got), _Progress(not quiet) as progress:
            try:
                # The planner decides whether the render really splits (worker/planner.py, strategy_for).
                result = do_render(
                    source,
                    segments,
                    spec,
                    output,
                    settings=settings,
                    on_progress=progress,
                    cancel=cancel,
                    chunks=chunks if chunks > 1 else None,
                )
            except Cancelled:
                if got:
                    raise Interrupted(got[0]) from None
                raise
            # A signal that came after ffmpeg had finished found nothing left to stop: the output is whole.
    except Interrupted as stop:
        click.echo(f"stopped by {stop}: the render was cancelled and its partial output removed", err=True)
        raise click.exceptions.Exit(128 + stop.signum) from None
    except RenderError as err:
        fail(err)
    click.echo(json.dumps(result.to_dict(), indent=2))
    if not quiet:
        click.echo(f"wrote {result.path} ({result.duration_s:.3f} s, {result.encoder} encoder)", err=True)


@main.command()
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@version_option
def probe(source: Path) -> None:
    """Print what the probe sees in SOURCE, as JSON."""
    from worker.probe import probe as do_probe

    try:
        info = do_probe(source)
    except RenderError as err:
        fail(err)
    click.echo(json.dumps(info.to_dict(), indent=2))


@main.command()
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@output_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("out.render"))
@click.option("--variant", type=click.Choice(presets_mod.VARIANTS), default="cpu")
@version_option
def graph(
    source: Path,
    cut: Path | None,
    fmt: str,
    resolution: str | None,
    video_bitrate: str | None,
    audio_bitrate: str | None,
    loudness: str | None,
    aspect: str | None,
    smart: bool,
    output: Path,
    variant: str,
) -> None:
    """Print the exact ffmpeg command and filter graph, without running them."""
    from worker import ffmpeg
    from worker.planner import Limits, plan_render, strategy_for
    from worker.render import command_for

    settings = Settings.from_env()
    try:
        segments = load_plan(cut, settings.max_segments)
        spec = output_spec(fmt, resolution, as_int(video_bitrate), as_int(audio_bitrate), loudness, aspect, smart)
        plan = plan_render(source, segments, spec, limits=Limits.from_settings(settings))
        strategy = strategy_for(plan, settings, split=False)
    except RenderError as err:
        fail(err)
    if strategy.smart is not None:
        s = strategy.smart
        click.echo(
            f"# smart render: {s.copied} frames copied from the source, {s.encoded} encoded in "
            f"{len(s.encodes)} segments with this command's settings (and the source's profile and level)"
        )
    elif strategy.not_smart is not None:
        click.echo(f"# every frame is encoded (not smart: {strategy.not_smart})")
    preset = presets_mod.load_preset(fmt, variant)
    graph_file = "graph.txt"
    argv = [ffmpeg.resolve_ffmpeg(settings.ffmpeg_path or None)]
    argv += command_for(plan, preset, graph_file, str(output))
    click.echo("# ffmpeg command (graph.txt holds the filter graph below)")
    click.echo(shlex.join(argv))
    click.echo("# filter graph (graph.txt)")
    click.echo(plan.graph(preset), nl=False)


@main.command(name="export")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cut", "cut", type=click.Path(dir_okay=False, path_type=Path), help="Cut plan JSON.")
@click.option("--format", "fmt", required=True, type=click.Choice(EXPORT_FORMATS))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists (never the source).")
@click.option("--quiet", is_flag=True, help="No summary line on stderr.")
@version_option
def export_cmd(source: Path, cut: Path | None, fmt: str, output: Path, force: bool, quiet: bool) -> None:
    """Write the cut of SOURCE as an editor timeline into OUTPUT; prints the result as JSON.

    xmeml (FCP 7 XML: Premiere Pro, Resolve), fcpxml (Final Cut Pro), edl (CMX 3600) or otio
    (OpenTimelineIO). The clips are the frames a render of the same plan keeps; no ffmpeg runs.
    """
    from worker.exports.file import export_file

    settings = Settings.from_env(warn_unknown=False)  # the group checked (and warned about) them already
    try:
        check_output_path(source, output, force)
        segments = load_plan(cut, settings.max_segments)
        result = export_file(str(source), segments, fmt, str(output), settings=settings)
    except RenderError as err:
        fail(err)
    click.echo(json.dumps(result.to_dict(), indent=2))
    if not quiet:
        click.echo(f"wrote {result.path} ({result.pieces} clips, {result.duration_s:.3f} s)", err=True)


@main.command(name="presets")
@version_option
def presets_cmd() -> None:
    """List the encoding presets and the option tiers, as JSON."""
    import dataclasses

    try:
        data = {
            "presets": [dataclasses.asdict(p) for p in presets_mod.all_presets()],
            "tiers": dataclasses.asdict(presets_mod.load_tiers()),
            "directory": str(presets_mod.presets_dir()),
        }
    except RenderError as err:
        fail(err)
    click.echo(json.dumps(data, indent=2, default=str))
