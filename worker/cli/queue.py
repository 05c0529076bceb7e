"""``render-cli`` on the farm: enqueue, status and cancel (and their library calls, :func:`read_status` and
:func:`cancel_render`), and ``worker``, which starts Dramatiq on the render queue (also ``render-worker``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from worker.cli.base import (
    CONTEXT,
    WEBHOOK_SECRET_ENV,
    as_int,
    fail,
    load_plan,
    main,
    output_options,
    version_option,
)
from worker.errors import ErrorCode, InvalidJob, RenderError, excerpt
from worker.settings import Settings


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
                "video_bitrate": as_int(video_bitrate),
                "audio_bitrate": as_int(audio_bitrate),
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
