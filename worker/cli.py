"""``render-cli``: the worker's pipeline on local files, plus queue helpers.

Errors leave as :class:`CliError` carrying the error code and an exit status,
so scripts can tell bad input (2) from bad media (3) from encoder trouble (4).
``sys.exit`` is only ever reached through click, here.
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
from typing import Any, NoReturn

import click

from worker import presets as presets_mod
from worker.errors import ErrorCode, InvalidJob, RenderError, excerpt
from worker.loudness import TARGETS
from worker.output import ASPECTS, EXPORT_FORMATS, OutputSpec
from worker.plan import Segment, parse_plan, plan_byte_limit
from worker.settings import Settings

EXIT_CODES: dict[ErrorCode, int] = {
    ErrorCode.INVALID_JOB: 2,
    ErrorCode.SOURCE_NOT_FOUND: 3,
    ErrorCode.SOURCE_UNREADABLE: 3,
    ErrorCode.SOURCE_NO_VIDEO: 3,
    ErrorCode.SOURCE_NO_AUDIO: 3,
    ErrorCode.SOURCE_TOO_LARGE: 3,
    ErrorCode.ENCODE_FAILED: 4,
    ErrorCode.STORAGE_FAILED: 5,
    ErrorCode.TIMEOUT: 6,
    ErrorCode.DISK_FULL: 7,
    ErrorCode.INTERNAL_ERROR: 1,
}


class CliError(click.ClickException):
    """A RenderError on its way out: message with the code, and a matching exit status."""

    def __init__(self, err: RenderError) -> None:
        super().__init__(f"[{err.code.value}] {err.message}")
        self.exit_code = EXIT_CODES.get(err.code, 1)  # type: ignore[misc]
        self.error = err

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def fail(err: RenderError) -> NoReturn:
    raise CliError(err)


def load_plan(path: Path | None, max_segments: int) -> list[Segment] | None:
    """Read a cut plan file: ``{"segments": [...]}`` (or the bare list).

    At most one byte past the size limit is read (a plan may be a pipe or a
    huge file), so an oversized plan is refused without being loaded; the
    rest of the checks are :func:`worker.plan.parse_plan`'s.
    """
    if path is None:
        return None
    limit = plan_byte_limit(max_segments)
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise InvalidJob(f"cannot read cut plan {path}: {exc.strerror or type(exc).__name__}") from exc
    return parse_plan(data, max_segments=max_segments, source=f"cut plan {path}")


def output_spec(
    fmt: str,
    resolution: str | None,
    vb: int | None,
    ab: int | None,
    loudness: str | None = None,
    aspect: str | None = None,
    smart: bool = True,
) -> OutputSpec:
    raw = {"format": fmt, "resolution": resolution, "video_bitrate": vb, "audio_bitrate": ab}
    return OutputSpec.from_dict({**raw, "loudness": loudness, "aspect": aspect, "smart": smart})


def output_options(func: Any) -> Any:
    tiers = presets_mod.load_tiers()
    opts = [
        click.option("--cut", "cut", type=click.Path(dir_okay=False, path_type=Path), help="Cut plan JSON."),
        click.option("--format", "fmt", required=True, type=click.Choice(presets_mod.FORMATS)),
        click.option("--resolution", type=click.Choice(list(tiers.resolutions)), default=None),
        click.option(
            "--video-bitrate",
            type=click.Choice([str(x) for x in tiers.video_allowed_mbps]),
            default=None,
            help="Mbps (default: Auto)",
        ),
        click.option(
            "--audio-bitrate",
            type=click.Choice([str(x) for x in tiers.audio_allowed_kbps]),
            default=None,
            help="kbps (default: Auto)",
        ),
        click.option(
            "--loudness",
            type=click.Choice(list(TARGETS)),
            default=None,
            help="Normalise the kept audio: podcast -16 LUFS, streaming -14, broadcast -23 (EBU R128); "
            "true peak at most -1 dBTP (default: the source's level).",
        ),
        click.option(
            "--aspect",
            type=click.Choice(list(ASPECTS)),
            default=None,
            help="Crop the picture to this aspect (mp4, mov), centred; --resolution then sets the shorter edge, "
            "scaling up if it must (default: the source's picture).",
        ),
        click.option(
            "--smart/--no-smart",
            default=True,
            show_default=True,
            help="Copy the source's whole GOPs where its video can go out unchanged, encoding only around the "
            "cuts; --no-smart re-encodes every frame.",
        ),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def _int(v: str | None) -> int | None:
    return int(v) if v is not None else None


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


#: ``-h`` as well as ``--help``, on every command (subcommands inherit a group's context settings).
CONTEXT = {"help_option_names": ["-h", "--help"]}
#: Exit status after SIGINT (Ctrl-C), as shells report a process killed by it.
EXIT_SIGINT = 128 + signal.SIGINT
#: Where ``--webhook-secret`` is also read from: not a RENDER_* name, since settings.py is the only reader of those.
WEBHOOK_SECRET_ENV = "WEBHOOK_SECRET"


def version_option(func: Any) -> Any:
    return click.version_option(package_name="render-worker")(func)


class Group(click.Group):
    """Ctrl-C anywhere in a command exits 130, not click's 1 ("Aborted!")."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(EXIT_SIGINT) from None


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


@click.group(cls=Group, context_settings=CONTEXT)
@version_option
def main() -> None:
    """Render cut plans with the worker's pipeline, on local files or through the queue."""
    # Every command starts by validating every RENDER_* setting, so a bad value
    # stops it here with the variable named, not later with a traceback.
    try:
        Settings.from_env()
    except RenderError as err:
        fail(err)


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
        spec = output_spec(fmt, resolution, _int(video_bitrate), _int(audio_bitrate), loudness, aspect, smart)
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
        spec = output_spec(fmt, resolution, _int(video_bitrate), _int(audio_bitrate), loudness, aspect, smart)
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


# --- queue commands ------------------------------------------------------------


def new_render_id() -> str:
    """``rnd_`` + a ULID: time-ordered (sorts by creation), random, 26 URL-safe characters."""
    from ulid import ULID

    return f"rnd_{ULID()}"


def _queue_main_guard(exc: Exception) -> NoReturn:
    import redis as redis_mod

    if isinstance(exc, redis_mod.RedisError):
        fail(RenderError(f"cannot reach Redis: {exc}", code=ErrorCode.INTERNAL_ERROR))
    raise exc


@main.command()
@click.argument("source_uri")
@output_options
@click.option("--asset-id", default=None, help="Defaults to one derived from the render id.")
@click.option("--cut-id", default=None)
@click.option("--webhook-url", default=None)
@click.option(
    "--webhook-secret",
    default=None,
    envvar=WEBHOOK_SECRET_ENV,
    show_envvar=True,
    help="whsec_... (required with --webhook-url); prefer the variable or --webhook-secret-file, which ps cannot see.",
)
@click.option(
    "--webhook-secret-file",
    type=click.File("r"),
    default=None,
    help="A file holding the whsec_... secret (its first line).",
)
@version_option
def enqueue(
    source_uri: str,
    cut: Path | None,
    fmt: str,
    resolution: str | None,
    video_bitrate: str | None,
    audio_bitrate: str | None,
    loudness: str | None,
    aspect: str | None,
    smart: bool,
    asset_id: str | None,
    cut_id: str | None,
    webhook_url: str | None,
    webhook_secret: str | None,
    webhook_secret_file: Any,
) -> None:
    """Create a pending render of SOURCE_URI and queue it; prints the render id alone."""
    from worker import actors
    from worker.jobs import parse_job
    from worker.records import RedisRecordStore, now_iso

    settings = Settings.from_env(warn_unknown=False)  # the group checked (and warned about) them already
    render_id = new_render_id()
    if webhook_secret_file is not None:
        if webhook_secret is not None:
            raise click.UsageError(
                f"give the webhook secret once: --webhook-secret{'/' + WEBHOOK_SECRET_ENV} or --webhook-secret-file"
            )
        webhook_secret = (webhook_secret_file.readline(1024) or "").strip() or None
    try:
        segments = load_plan(cut, settings.max_segments)
        message: dict[str, Any] = {
            "version": 1,
            "render_id": render_id,
            "asset_id": asset_id or "ast_" + render_id[4:],
            "cut_id": cut_id if cut_id or segments is None else "cut_" + render_id[4:],
            "source": {"uri": source_uri},
            "segments": None if segments is None else [{"start": s.start, "end": s.end} for s in segments],
            "output": {
                "format": fmt,
                "resolution": resolution,
                "video_bitrate": _int(video_bitrate),
                "audio_bitrate": _int(audio_bitrate),
                **({"loudness": loudness} if loudness is not None else {}),
                **({"aspect": aspect} if aspect is not None else {}),
                **({} if smart else {"smart": False}),
            },
            "webhook": None,
        }
        if webhook_url or webhook_secret:
            message["webhook"] = {"url": webhook_url, "secret": webhook_secret}
        # The worker's own intake, with the worker's settings: what is enqueued here is accepted there.
        job = parse_job(
            message,
            max_segments=settings.max_segments,
            allow_private_webhooks=settings.webhook_allow_private,
            source_buckets=settings.source_bucket_list,
        )
        store = RedisRecordStore.from_url(settings.redis_url, ttl_s=settings.record_ttl_s)
        store.create(
            render_id,
            {"asset_id": job.asset_id, "cut_id": job.cut_id, "output": job.output.to_dict(), "created_at": now_iso()},
        )
        try:
            actors.send_render(settings, message)
        except Exception as exc:
            # Never leave a pending record that no job will ever move.
            why = f"the job could not be queued: {type(exc).__name__}: {exc}"[:300]
            store.fail(render_id, None, ErrorCode.INTERNAL_ERROR.value, why, {})
            raise
    except RenderError as err:
        fail(err)
    except Exception as exc:  # noqa: BLE001
        _queue_main_guard(exc)
    click.echo(render_id)


def read_status(render_id: str, settings: Settings | None = None) -> dict[str, Any] | None:
    """The render record with a freshly minted ``download_url`` (the library call)."""
    from worker.pipeline import download_url
    from worker.records import RedisRecordStore
    from worker.storage.s3 import S3Storage

    settings = settings or Settings.from_env()
    store = RedisRecordStore.from_url(settings.redis_url, ttl_s=settings.record_ttl_s)
    record = store.get(render_id)
    if record is None:
        return None
    record["download_url"] = download_url(S3Storage(settings), record, settings.url_expiry_s)
    return record


@main.command()
@click.argument("render_id")
@version_option
def status(render_id: str) -> None:
    """Print the render record as JSON, with a fresh download_url once completed."""
    try:
        record = read_status(render_id)
    except RenderError as err:
        fail(err)
    except Exception as exc:  # noqa: BLE001
        _queue_main_guard(exc)
    if record is None:
        fail(InvalidJob(f"no render record {render_id!r}"))
    click.echo(json.dumps(record, indent=2))


def cancel_render(render_id: str, reason: str | None = None, settings: Settings | None = None) -> Any:
    """Cancel a render (the library call behind ``render-cli cancel``); returns the store's ``CancelResult``."""
    from worker.records import RedisRecordStore

    settings = settings or Settings.from_env()
    store = RedisRecordStore.from_url(settings.redis_url, ttl_s=settings.record_ttl_s)
    return store.cancel(render_id, reason)


@main.command()
@click.argument("render_id")
@click.option("--reason", default=None, help="Who asked and why (free text; kept to 200 printable characters).")
@version_option
def cancel(render_id: str, reason: str | None) -> None:
    """Cancel a pending or processing render; prints the record as JSON.

    A render that already ended (completed, failed, cancelled) is left as it is, and stderr says so (exit 0).
    The worker rendering it stops ffmpeg within about a second and sends render.cancelled.
    """
    from worker.jobs import is_id

    if not is_id(render_id):
        fail(InvalidJob(f"not a render id: {excerpt(render_id)}"))
    try:
        result = cancel_render(render_id, reason, Settings.from_env(warn_unknown=False))
    except RenderError as err:
        fail(err)
    except Exception as exc:  # noqa: BLE001
        _queue_main_guard(exc)
    if result.status == "missing":
        fail(InvalidJob(f"no render record {render_id!r}"))
    if result.changed:
        click.echo(f"cancelled render {render_id} (it was {result.state})", err=True)
    else:
        click.echo(f"render {render_id} had already ended ({result.state}): nothing changed", err=True)
    click.echo(json.dumps(result.record, indent=2))


def dramatiq_argv(settings: Settings, processes: int, threads: int) -> list[str]:
    # Dramatiq waits this long for running jobs on SIGTERM; our own shutdown
    # timer (actors.GracefulShutdown) must fire first so renders are requeued
    # cleanly rather than abandoned.
    shutdown_ms = int((settings.shutdown_timeout_s + 30) * 1000)
    return [
        # A callable: Dramatiq runs it in each worker process, and it builds the broker there.
        "worker.actors:setup",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        # Only the render queue: webhook deliveries have threads of their own (worker/deliveries.py).
        "--queues",
        settings.queue,
        "--worker-shutdown-timeout",
        str(shutdown_ms),
        # Dramatiq's own logging set-up: DEBUG needs its -v (every logger then logs at DEBUG).
        *(["--verbose"] if settings.log_level == "DEBUG" else []),
    ]


def startup_checks(settings: Settings) -> None:
    """What a worker needs before it takes a job: an ffmpeg new enough, and an S3 client with credentials.

    A worker that passed these and reported ready could otherwise fail every job it takes (encode_failed on
    an old ffmpeg, storage_failed six times over on missing credentials).
    """
    from worker import ffmpeg
    from worker.storage.s3 import check_config

    ffmpeg.check_binary(settings.ffmpeg_path or None)
    check_config(settings)


def run_worker(processes: int, threads: int) -> NoReturn:
    # Each consumer holds at most one message per thread, the running ones
    # included, so a long render never sits on jobs that idle workers could take.
    # Dramatiq reads this variable once, when dramatiq.worker is imported (and
    # the worker processes are forked from this one): it must be set before
    # anything here imports dramatiq, or the default of two per thread applies.
    os.environ.setdefault("dramatiq_queue_prefetch", str(threads))

    from dramatiq import cli as dramatiq_cli

    try:
        settings = Settings.from_env()  # refuse to start on a bad setting, before any process forks
        startup_checks(settings)
    except RenderError as err:
        fail(err)
    from worker import telemetry

    telemetry.prepare_multiprocess_dir(settings)
    from worker import logsafe
    from worker.settings import secret_values

    logsafe.install(secret_values(settings))  # the parent's own lines (the worker processes install it in setup)
    args = dramatiq_cli.make_argument_parser().parse_args(dramatiq_argv(settings, processes, threads))
    sys.exit(dramatiq_cli.main(args))


@main.command(name="worker")
@click.option("--processes", "-p", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--threads", "-t", type=click.IntRange(1, 64), default=1, show_default=True)
@version_option
def worker_cmd(processes: int, threads: int) -> None:
    """Start a render worker (same as the render-worker command)."""
    run_worker(processes, threads)


@click.command(context_settings=CONTEXT)
@click.option("--processes", "-p", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--threads", "-t", type=click.IntRange(1, 64), default=1, show_default=True)
@version_option
def worker_main(processes: int, threads: int) -> None:
    """Start a render worker: Dramatiq on RENDER_REDIS_URL, consuming RENDER_QUEUE."""
    run_worker(processes, threads)


if __name__ == "__main__":  # pragma: no cover
    main()
