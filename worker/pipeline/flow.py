"""One delivery of a job message, top to bottom: intake → lease → fetch → plan → render → store → complete.

See the package docstring for the retry policy this implements.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from typing import Any

from worker import planner
from worker.errors import (
    Cancelled,
    CancelRequested,
    DiskFull,
    InvalidJob,
    LeaseBusy,
    RenderError,
    UnrecordableJob,
    disk_full_in,
)
from worker.jobs import Job, asset_id_of, parse_job, render_id_of, webhook_of
from worker.pipeline import outputs
from worker.pipeline.chunked import (
    dispatch_chunks,
)
from worker.pipeline.completion import complete_stored
from worker.pipeline.deps import Deps, Outcome
from worker.pipeline.events import cancelled, fail, terminal_event
from worker.pipeline.export_job import run_export
from worker.pipeline.guards import Lease, Watch
from worker.pipeline.messages import (
    bounded_message,
    defaults_from_raw,
    job_defaults,
    name_the_source,
)
from worker.pipeline.outputs import (
    RENDERED_FILE,
    download_name,
    fingerprint,
    job_output_key,
    rendered,
    result_metadata,
    stored_result,
)
from worker.pipeline.sources import fetch_source, forget_source
from worker.presets import load_preset
from worker.render import RenderResult, faces
from worker.render.result import frames_report
from worker.scratch import Scratch

log = logging.getLogger(__name__)


def process(
    raw: Any,
    deps: Deps,
    *,
    last_attempt: bool,
    cancel: threading.Event | None = None,
    token: str | None = None,
) -> Outcome:
    """Run one delivery of a job message. Raises only for the queue to retry or dead-letter."""
    settings = deps.settings
    token = token or uuid.uuid4().hex
    try:
        job = parse_job(
            raw,
            max_segments=settings.max_segments,
            allow_private_webhooks=settings.webhook_allow_private,
            source_buckets=settings.source_bucket_list,
        )
    except Exception as exc:  # noqa: BLE001 - parse_job is total; this is the last line if it is not
        err = exc if isinstance(exc, InvalidJob) else InvalidJob(f"the job message is malformed ({type(exc).__name__})")
        render_id = render_id_of(raw)
        if render_id is None:
            raise UnrecordableJob(f"message has no usable render_id: {err.message}") from exc
        # The record fails and render.failed goes to the webhook if its url and
        # secret are usable, even when the message is malformed elsewhere.
        webhook = webhook_of(raw, allow_private=settings.webhook_allow_private)
        fail(deps, render_id, err, defaults_from_raw(raw), asset_id_of(raw) or "", webhook)
        return Outcome.FAILED

    defaults = job_defaults(job)
    started = deps.records.start(job.render_id, token, settings.lease_ttl_s, defaults)
    if started.status == "terminal":
        if started.state == "cancelled":
            # Cancelled while queued (never started: started_at stays empty), or while a worker that has since
            # crashed rendered it. Either way it stays cancelled: the message is acknowledged, not rendered.
            rec = deps.records.get(job.render_id) or {}
            return cancelled(deps, job, may_have_uploaded=bool(rec.get("started_at")))
        terminal_event(deps, job.render_id, job.webhook)
        return Outcome.DUPLICATE
    if started.status == "busy":
        raise LeaseBusy(f"render {job.render_id} is being rendered by another worker")

    fmt = job.output.format
    wall_started = time.monotonic()
    deps.observer.started(fmt)
    try:
        with (
            Scratch(settings.work_dir, job.render_id) as scratch,
            Lease(deps, job.render_id, token) as lease,
            Watch(deps, job.render_id, cancel) as watch,
        ):
            try:
                try:
                    result = run_render(job, deps, lease, watch, scratch, raw)
                except OSError as exc:
                    # Translated at the boundary: a full disk is the host's (retried), never a bug or the job's.
                    full = disk_full_in(exc)
                    if full is None:
                        raise
                    raise DiskFull(f"the worker's disk is full ({full.strerror})") from exc
            except Exception as exc:
                if watch.cancelled():
                    # Whatever stopped the render (ffmpeg killed, the lease refused), the record is cancelled:
                    # the scratch directory goes with it and nothing is retried.
                    scratch.keep = False
                    if isinstance(exc, CancelRequested):
                        raise
                    raise CancelRequested(f"render {job.render_id} was cancelled") from exc
                if isinstance(exc, RenderError):
                    # Kept only for a retry of this render, which may then skip straight to the upload.
                    retried = exc.transient and (not last_attempt or isinstance(exc, Cancelled))
                    # A full disk keeps nothing: the room goes back to this host's other work.
                    scratch.keep = retried and not isinstance(exc, LeaseBusy | DiskFull)
                raise
    except CancelRequested:
        forget_source(deps, job)
        # The upload may have been under way when the cancel landed (it is checked just before it starts).
        return cancelled(deps, job, may_have_uploaded=True)
    except LeaseBusy:
        # Another worker took the render over while this one was stalled: it owns
        # the record now, so this delivery just steps aside.
        return Outcome.DUPLICATE
    except RenderError as err:
        name_the_source(err, job, settings)
        retry = err.transient and (not last_attempt or isinstance(err, Cancelled))
        if retry:  # the source stays in this process's cache, for the retry if it comes back here
            if isinstance(err, DiskFull):
                forget_source(deps, job)  # unless the disk is full: then it goes, and the retry downloads again
            deps.records.release(job.render_id, token, {"error_message": bounded_message(f"retrying after: {err}")})
            raise
        forget_source(deps, job)
        fail(deps, job.render_id, err, defaults, job.asset_id, job.webhook, token)
        return Outcome.FAILED
    except Exception as exc:  # noqa: BLE001 - a bug: fail the record instead of retrying forever
        log.exception("render %s failed unexpectedly", job.render_id)
        forget_source(deps, job)
        bug = RenderError(f"unexpected error: {type(exc).__name__}: {exc}")
        name_the_source(bug, job, deps.settings)
        fail(deps, job.render_id, bug, defaults, job.asset_id, job.webhook, token)
        return Outcome.FAILED
    if result is None:
        # Dispatched as a chunked render: the record stays processing under this delivery's token, which the
        # chunks renew and the assembly completes with; this message is done.
        return Outcome.DISPATCHED

    fields = {
        "size_bytes": result.size_bytes,
        "duration_s": round(result.duration_s, 6),
        "encoder": result.encoder,
        "output_key": job_output_key(settings, job),
        "download_name": download_name(job),
        "loudness": result.loudness,
        "frames": frames_report(result.copied_frames, result.encoded_frames),
    }

    def finished() -> None:
        wall = time.monotonic() - wall_started
        deps.observer.finished("completed", fmt, result.encoder, wall, result.duration_s, result.source_duration_s)
        deps.observer.frames(fmt, result.copied_frames, result.encoded_frames)

    # A cancel that won the race with this completion after the upload: the cancel is what the record says, so
    # the object it would have pointed at goes again.
    return complete_stored(
        deps,
        job,
        token,
        fields,
        finished=finished,
        cancelled=lambda: cancelled(deps, job, may_have_uploaded=True),
        deadline=wall_started + settings.time_limit_s,
        stop=cancel,
    )


def run_render(
    job: Job, deps: Deps, lease: Lease, watch: Watch, scratch: Scratch, raw: Any = None
) -> RenderResult | None:
    """Render (or export) the job and store its output; None when it was dispatched as a chunked render."""
    if job.output.is_export:
        return run_export(job, deps, lease, watch, scratch)
    settings = deps.settings
    deadline = time.monotonic() + settings.time_limit_s
    # The same instant on the wall clock, for the chunks of a chunked render: other workers, other clocks.
    wall_deadline = time.time() + settings.time_limit_s
    preset = load_preset(job.output.format)
    tmp = scratch.path
    out = tmp / f"{job.render_id}.{preset.extension}"
    job_print = fingerprint(job)
    key = job_output_key(settings, job)
    if outputs.REUSE_OUTPUT:
        stored = stored_result(deps, key, job_print, out)
        if stored is not None:
            # An earlier delivery uploaded it and could not complete the record (Redis away, a crash).
            log.info("render %s: its output is stored already (%d bytes); completing", job.render_id, stored.size_bytes)
            return stored
    result = rendered(tmp, out, job_print) if outputs.REUSE_OUTPUT else None
    if result is not None:
        log.info(
            "render %s: reusing the output an earlier attempt rendered (%d bytes)", job.render_id, result.size_bytes
        )
    else:
        (tmp / RENDERED_FILE).unlink(missing_ok=True)
        splittable = deps.dispatch is not None and preset.has_video
        with contextlib.ExitStack() as keep:
            # A render that may be chunked keeps its source in the worker's cache: this worker is likely to
            # take some of the chunks, which then need no download.
            src, version = fetch_source(job, deps, watch, tmp, keep=keep if splittable else None)
            plan = planner.plan_render(src, job.segments, job.output, limits=planner.Limits.from_settings(settings))
            strategy = planner.strategy_for(plan, settings, split=splittable)
            if strategy.kind is planner.Kind.CHUNKED:
                # Its parts encode on the CPU preset: the record says so from now on, however it ends.
                deps.records.note(job.render_id, lease.token, {"encoder": "cpu"})
                # A reframed render's crop path is planned here, once, and travels with every chunk.
                plan = faces.follow_speaker(plan, cancel=watch.stop, deadline=deadline)
                dispatch_chunks(deps, raw, strategy.count, lease.token, wall_deadline, version, plan.crop_path)
                return None
            result = deps.renderer(
                src,
                job.segments,
                job.output,
                out,
                settings=settings,
                on_progress=lease.on_progress,
                cancel=watch.stop,
                deadline=deadline,
                plan=plan,  # the source is probed once
                strategy=strategy,
                on_encoder=lease.on_encoder,
            )
        # Not needed again (a retry uploads the output): the disk is the output's during the upload.
        src.unlink(missing_ok=True)
        forget_source(deps, job)
        (tmp / RENDERED_FILE).write_text(json.dumps({"fingerprint": job_print, "result": result.to_dict()}))
    # Asked now rather than at the next poll: a cancel that landed during the last half second uploads nothing.
    watch.raise_if_stopped()
    if lease.lost.is_set():
        raise LeaseBusy(f"lost the lease on {job.render_id} while rendering")
    t0 = time.monotonic()
    deps.storage.put(out, key, preset.content_type, result_metadata(job_print, result))
    deps.observer.uploaded(result.size_bytes, time.monotonic() - t0)
    return result
