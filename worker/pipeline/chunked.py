"""Chunked renders through the queue (DESIGN, "Chunked renders"; README, "Through the queue").

A video render whose output is longer than RENDER_CHUNK_MIN_S is planned by the worker that takes its
message (the *coordinator*), which sends one ``audio`` message and one ``chunk`` message per chunk and
acknowledges its own. Any worker takes a part: it gets the source (its process's cache, or a download),
plans the render exactly as the coordinator did (the plan is a pure function of the probe and the settings;
a count that differs is refused), encodes only its frames (:func:`worker.render.parts.render_chunk`) or the whole
audio (:func:`worker.render.parts.render_audio`) and stores the piece under ``tmp/<prefix>/<render_id>/``
(:data:`TMP_PREFIX`). The barrier is the record store's set of distinct stored parts
(:meth:`RecordStore.chunk_stored`; the audio is index ``count``): every delivery that stores a part and
finds the set complete sends the ``assembly`` message, which downloads the pieces, joins them by stream
copy, uploads the output, completes the record and deletes the pieces.

Why not Dramatiq's ``group(...).add_completion_callback`` with its GroupCallbacks barrier: that barrier
counts *successful deliveries*, not distinct chunks. A chunk delivered twice (Dramatiq's redelivery of a
message whose worker stalled past the heartbeat, or a crash between upload and ack) or put back on the queue
by :func:`worker.actors._requeue` (a busy lease, a shutdown: both return normally) counts again, so the
assembly would start with pieces missing, and a chunk that succeeds only after a retry made from a copy
would never be counted at all. A set keyed by chunk index counts each chunk once however often it is
delivered, and an assembly sent twice is harmless (its own lease, then the terminal record).

Every part runs under the record's lease token (the coordinator's, carried in the message): a chunk's
progress renews the record's lease, and the assembly completes or any part fails the record with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from worker import planner
from worker.chunks import ChunkPlan
from worker.errors import (
    Cancelled,
    CancelRequested,
    ChunkStalled,
    LeaseBusy,
    RenderError,
    RenderTimeout,
)
from worker.gops import GopIndex
from worker.jobs import Job, parse_job, render_id_of
from worker.pipeline.completion import complete_stored
from worker.pipeline.deps import Deps, Outcome
from worker.pipeline.events import fail, terminal_event
from worker.pipeline.guards import PartLease, Watch
from worker.pipeline.messages import (
    job_defaults,
    name_the_source,
)
from worker.pipeline.outputs import (
    download_name,
    job_output_key,
)
from worker.pipeline.sources import drop_source, fetch_source, forget_source
from worker.presets import load_preset
from worker.reframe import Knot
from worker.render import faces, parts
from worker.render import loudness as render_loudness
from worker.render.result import frames_report
from worker.scratch import Scratch
from worker.settings import Settings

log = logging.getLogger(__name__)

#: Where the pieces of chunked renders are stored in the output bucket, at the top of it: an S3 lifecycle rule
#: matches a key *prefix* only, so ``renders/<id>/tmp/`` could not be expired without expiring the outputs
#: beside it. deploy/s3-lifecycle.json expires everything under it after a day (a crashed render's leftovers).
TMP_PREFIX = "tmp/"


def tmp_key(settings: Settings, render_id: str, name: str) -> str:
    parts = [TMP_PREFIX.rstrip("/"), settings.output_prefix.strip("/"), render_id, name]
    return "/".join(p for p in parts if p)


def piece_key(settings: Settings, render_id: str, fmt: str, index: int) -> str:
    """Where chunk ``index``'s piece of an ``fmt`` render is stored: ``tmp/<prefix>/<render id>/chunk-NNNNN.mp4``."""
    return tmp_key(settings, render_id, parts.chunk_file_name(load_preset(fmt), index))


def audio_key(settings: Settings, render_id: str, fmt: str) -> str:
    """Where the audio part stores the render's audio: ``tmp/<output prefix>/<render id>/audio.m4a``."""
    return tmp_key(settings, render_id, parts.audio_file_name(load_preset(fmt)))


def dispatch_chunks(
    deps: Deps,
    raw: Any,
    count: int,
    token: str,
    deadline: float,
    version: str,
    crop_path: Sequence[Knot] | None = None,
) -> None:
    """Send the audio and every chunk of a chunked render. ``crop_path``: the reframing path the coordinator
    planned for the whole output (``output.aspect``), carried to every chunk so they crop alike."""
    assert deps.dispatch is not None
    log.info("render %s: %d chunks and the audio on the queue", render_id_of(raw), count)
    common = {
        "job": raw,
        "count": count,
        # The parts the barrier waits for: the chunks and the audio (stored in the set as index ``count``).
        "parts": count + 1,
        "token": token,
        "deadline": round(deadline, 3),
        # Every part renders from these very bytes: an object overwritten mid-render fails it instead
        # of joining chunks of two different recordings.
        "source_version": version,
    }
    if crop_path is not None:
        common["crop_path"] = [[k.frame, k.x] for k in crop_path]
    # The audio first: an hour of it takes about a minute to encode, which then runs beside the chunks
    # instead of inside the assembly, which is left a stream copy of seconds (BENCHMARKS.md).
    deps.dispatch("audio", {**common, "part": "audio"})
    for index in range(count):
        deps.dispatch("chunk", {**common, "index": index})


def part_deadline(body: Mapping[str, Any], settings: Settings) -> float:
    """The monotonic instant this part of a chunked render must be done by.

    RENDER_TIME_LIMIT_S bounds the render as a whole, as it bounds a whole render: the coordinator's
    message carries the wall-clock instant it started plus the limit, and every chunk and the assembly
    stop there, however many chunks ran before them or how long they waited on the queue. Without it a
    render of K chunks could run K times the limit. A part is never given more than the limit itself.
    """
    limit = settings.time_limit_s
    wall = body.get("deadline")
    if isinstance(wall, int | float) and not isinstance(wall, bool):  # absent in messages from older workers
        limit = min(limit, wall - time.time())
    if limit <= 0:
        raise RenderTimeout("the render ran past its time limit")
    return time.monotonic() + limit


def delete_pieces(deps: Deps, job: Job, count: int) -> None:
    """Delete every temporary piece of the render (missing ones are no error) and its chunk bookkeeping."""
    render_id = job.render_id
    keys = [piece_key(deps.settings, render_id, job.output.format, index) for index in range(count)]
    for key in [*keys, audio_key(deps.settings, render_id, job.output.format)]:
        try:
            deps.storage.delete(key)
        except RenderError as exc:  # the lifecycle rule on the temporary prefix expires it (deploy/)
            log.error("render %s: could not delete %s: %s", render_id, key, exc)
    with contextlib.suppress(RenderError):
        deps.records.chunks_clear(render_id)


def process_part(
    body: Mapping[str, Any], deps: Deps, *, last_attempt: bool, cancel: threading.Event | None = None
) -> Outcome:
    """Run one delivery of a chunked render's chunk, audio or assembly message (sent by the coordinator:
    :func:`worker.pipeline.flow.process`)."""
    settings = deps.settings
    job = parse_job(
        body["job"],
        max_segments=settings.max_segments,
        allow_private_webhooks=settings.webhook_allow_private,
        source_buckets=settings.source_bucket_list,
    )
    index = body.get("index")
    count, record_token = int(body["count"]), str(body["token"])
    render_id = job.render_id
    # The slot is the part's place in the barrier's set of stored parts (the audio's is ``count``).
    slot: int | None
    if body.get("part") == "audio":
        part, slot, key = "audio", count, audio_key(settings, job.render_id, job.output.format)
    elif index is None:
        part, slot, key = "assembly", None, None
    else:
        part, slot, key = (
            f"chunk-{int(index)}",
            int(index),
            piece_key(settings, render_id, job.output.format, int(index)),
        )
    state = deps.records.state(render_id)
    if state in ("completed", "failed", "cancelled"):
        forget_source(deps, job)  # a copy this process kept for the render's parts
        if state != "completed":  # pieces a failed or cancelled render left (a completed one deleted its own)
            delete_pieces(deps, job, count)
        terminal_event(deps, render_id, job.webhook)
        return Outcome.CANCELLED if state == "cancelled" else Outcome.DUPLICATE
    if key is not None and slot is not None and deps.storage.exists(key):
        # Stored already (a duplicate delivery, or a redelivery after a crash between the upload and the ack):
        # nothing to render; the barrier is passed again, in case the crash came before it.
        _part_stored(deps, body, render_id, slot)
        return Outcome.DUPLICATE
    token = uuid.uuid4().hex
    if not deps.records.part_lease(render_id, part, token, settings.lease_ttl_s):
        raise LeaseBusy(f"render {render_id}: {part} is being rendered by another worker")
    defaults = job_defaults(job)
    # A chunk at work counts as a job in progress on this worker (render_jobs_in_progress); the telemetry
    # middleware closes the entry when the message ends, and only the assembly counts the render as finished.
    deps.observer.started(job.output.format)
    try:
        with (
            Scratch(settings.work_dir, f"{render_id}-{part}") as scratch,
            Watch(deps, render_id, cancel, stop_states=("cancelled", "failed", "completed")) as watch,
            PartLease(deps, render_id, part, token, record_token, watch.stop) as lease,
        ):
            try:
                deadline = part_deadline(body, settings)
                if slot is None:
                    return _assemble_part(job, body, deps, record_token, lease, watch, scratch, deadline)
                if part == "audio":
                    _audio_part(job, body, deps, lease, watch, scratch, deadline)
                else:
                    _chunk_part(job, body, deps, slot, count, lease, watch, scratch, deadline)
            except Exception as exc:
                if lease.stalled.is_set():
                    raise ChunkStalled(f"render {render_id}: {part} made no progress") from exc
                if watch.cancelled():
                    raise CancelRequested(f"render {render_id} was stopped") from exc
                raise
    except CancelRequested:
        forget_source(deps, job)
        delete_pieces(deps, job, count)
        terminal_event(deps, render_id, job.webhook)
        return Outcome.CANCELLED
    except RenderError as err:
        name_the_source(err, job, deps.settings)
        deps.records.part_release(render_id, part, token)
        if err.transient and (not last_attempt or isinstance(err, Cancelled)):
            raise
        forget_source(deps, job)
        fail(deps, render_id, err, defaults, job.asset_id, job.webhook, record_token)
        delete_pieces(deps, job, count)
        return Outcome.FAILED
    except Exception as exc:  # noqa: BLE001 - a bug: fail the render instead of retrying forever
        log.exception("render %s: %s failed unexpectedly", render_id, part)
        forget_source(deps, job)
        bug = RenderError(f"unexpected error: {type(exc).__name__}: {exc}")
        name_the_source(bug, job, deps.settings)
        fail(deps, render_id, bug, defaults, job.asset_id, job.webhook, record_token)
        delete_pieces(deps, job, count)
        return Outcome.FAILED
    deps.records.part_release(render_id, part, token)
    return Outcome.STORED


def _fetch_and_plan(
    job: Job,
    body: Mapping[str, Any],
    deps: Deps,
    watch: Watch,
    scratch: Scratch,
    deadline: float,
    keep: contextlib.ExitStack,
) -> tuple[planner.Plan, ChunkPlan, GopIndex | None]:
    """The part's source, and the plan and chunks the coordinator made (the same function of the same probe),
    with the source's GOP index where the chunks copy (smart render)."""
    settings = deps.settings
    count = int(body["count"])
    pinned = body.get("source_version")
    src, _ = fetch_source(job, deps, watch, scratch.path, keep=keep, pinned=pinned if isinstance(pinned, str) else None)
    if time.monotonic() > deadline:  # the deadline does not stop a download: checked at its end
        raise RenderTimeout("the render ran past its time limit")
    plan = planner.plan_render(src, job.segments, job.output, limits=planner.Limits.from_settings(settings))
    strategy = planner.strategy_for(plan, settings)
    if strategy.chunks is None or strategy.count != count:
        # Workers with different RENDER_CHUNK_* settings: a deployment error.
        raise RenderError(f"this worker plans {strategy.count} chunks, the render was sent as {count}")
    return plan, strategy.chunks, strategy.gops


def _chunk_part(
    job: Job,
    body: Mapping[str, Any],
    deps: Deps,
    index: int,
    count: int,
    lease: PartLease,
    watch: Watch,
    scratch: Scratch,
    deadline: float,
) -> None:
    settings = deps.settings
    with contextlib.ExitStack() as keep:
        plan, cplan, gops = _fetch_and_plan(job, body, deps, watch, scratch, deadline, keep)
        # The crop's path over the whole output, as the coordinator planned it; a message from a coordinator
        # that sent none is planned here (the same faces in the same frames give the same path).
        sent = _crop_path_of(body)
        if sent is not None:
            plan = dataclasses.replace(plan, crop_path=sent)
        else:
            plan = faces.follow_speaker(plan, cancel=watch.stop, deadline=deadline)
        lease.index, lease.total, lease.watched = index, cplan.total, True
        frames = cplan.chunks[index].frames
        piece = scratch.path / parts.chunk_file_name(plan.preset, index)
        log.info("render %s: rendering chunk %d of %d", job.render_id, index, count)
        deps.observer.encoding("cpu")  # chunks use the CPU preset on every worker (see the README)
        parts.render_chunk(
            plan,
            cplan,
            index,
            piece,
            ffmpeg_bin=settings.ffmpeg_path or None,
            on_progress=lambda ratio: lease.on_progress(ratio, frames),
            cancel=watch.stop,
            deadline=deadline,
            gops=gops,
        )
    content_type = parts.piece_preset(plan.preset).content_type
    _store_part(
        deps,
        job,
        lease,
        watch,
        piece,
        piece_key(settings, job.render_id, job.output.format, index),
        content_type,
        f"chunk {index}",
    )
    lease.frames = frames
    deps.records.chunk_progress(job.render_id, index, frames)
    log.info("render %s: chunk %d of %d stored", job.render_id, index, count)
    _part_stored(deps, body, job.render_id, index)


#: The most knots a chunk message's crop path may carry (a path is a few knots a second of motion).
MAX_CROP_KNOTS = 100_000


def _crop_path_of(body: Mapping[str, Any]) -> tuple[Knot, ...] | None:
    """The coordinator's crop path from a chunk message, if it sent one (pairs of output frame and x)."""
    raw = body.get("crop_path")
    if not isinstance(raw, list) or not raw or len(raw) > MAX_CROP_KNOTS:
        return None
    knots = []
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2 and all(type(v) is int and v >= 0 for v in pair)):
            return None
        knots.append(Knot(pair[0], pair[1]))
    return tuple(knots)


def _audio_part(
    job: Job, body: Mapping[str, Any], deps: Deps, lease: PartLease, watch: Watch, scratch: Scratch, deadline: float
) -> None:
    """Encode the render's whole audio (as the whole render would) and store it beside the video pieces."""
    settings = deps.settings
    with contextlib.ExitStack() as keep:
        plan, _, _ = _fetch_and_plan(job, body, deps, watch, scratch, deadline, keep)
        lease.watched = True
        log.info("render %s: rendering the audio", job.render_id)
        deps.observer.encoding("cpu")
        # The one gain of the whole output, measured over all its kept audio here (the audio is one part).
        plan = render_loudness.normalise(
            plan, scratch.path, ffmpeg_bin=settings.ffmpeg_path or None, cancel=watch.stop, deadline=deadline
        )
        audio = parts.render_audio(
            plan,
            scratch.path / parts.audio_file_name(plan.preset),
            ffmpeg_bin=settings.ffmpeg_path or None,
            on_progress=lambda ratio: lease.on_progress(ratio, 10_000),
            cancel=watch.stop,
            deadline=deadline,
        )
    content_type = parts.audio_piece_preset(plan.preset).content_type
    key = audio_key(settings, job.render_id, job.output.format)
    report = plan.loudness_report()
    # The assembly completes the record: it reads the loudness figures from the audio piece it joins.
    metadata = {META_LOUDNESS: json.dumps(report, separators=(",", ":"))} if report is not None else None
    _store_part(deps, job, lease, watch, audio, key, content_type, "the audio", metadata)
    log.info("render %s: audio stored", job.render_id)
    _part_stored(deps, body, job.render_id, int(body["count"]))


def _store_part(
    deps: Deps,
    job: Job,
    lease: PartLease,
    watch: Watch,
    path: Path,
    key: str,
    content_type: str,
    what: str,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Upload a part's file under the render's temporary prefix, unless the render stopped meanwhile."""
    watch.raise_if_stopped()
    if lease.lost.is_set():
        raise LeaseBusy(f"lost the lease on {what} of {job.render_id} while rendering")
    deps.storage.put(path, key, content_type, metadata)
    if deps.records.state(job.render_id) in ("cancelled", "failed"):
        # Stopped during the upload: the part that stopped it may have deleted the pieces already, before this one
        # landed, so this piece goes now rather than waiting for the lifecycle rule.
        deps.storage.delete(key)
        raise CancelRequested(f"render {job.render_id} was stopped while {what} was uploaded")


def _part_stored(deps: Deps, body: Mapping[str, Any], render_id: str, slot: int) -> None:
    """The barrier: the delivery that finds every part stored sends the assembly (a duplicate is harmless).

    The parts are the chunks and the audio (``parts``); a render sent by a worker from before the audio
    had a part of its own names none, and its assembly renders the audio itself.
    """
    if deps.records.chunk_stored(render_id, slot) >= int(body.get("parts", body["count"])):
        assert deps.dispatch is not None
        # The assembly carries the part's message on, but for what names the part: the job, the token, the
        # render's deadline and its source version.
        deps.dispatch("assembly", {k: v for k, v in body.items() if k not in ("index", "part")})


#: The audio piece's object metadata: the loudness report of the render's one gain (S3 lower-cases the name).
META_LOUDNESS = "render-loudness"


def _loudness_of(deps: Deps, key: str) -> dict[str, Any] | None:
    """The loudness report the audio part stored with the audio piece at ``key`` (None: no target asked)."""
    text = (deps.storage.output_metadata(key) or {}).get(META_LOUDNESS)
    try:
        report = json.loads(text) if text else None
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _assemble_part(
    job: Job,
    body: Mapping[str, Any],
    deps: Deps,
    record_token: str,
    lease: PartLease,
    watch: Watch,
    scratch: Scratch,
    deadline: float,
) -> Outcome:
    settings = deps.settings
    started = time.monotonic()
    ffmpeg_bin = settings.ffmpeg_path or None
    count = int(body["count"])
    preset = load_preset(job.output.format, "cpu")
    audio = scratch.path / parts.audio_file_name(preset)
    audio_part = int(body.get("parts", count)) > count
    with contextlib.ExitStack() as keep:
        # The plan (frame count, piece durations) is the source's: probed again, from this process's cached
        # copy when it rendered parts of this render.
        plan, cplan, gops = _fetch_and_plan(job, body, deps, watch, scratch, deadline, keep)
        copied = planner.copied_frames(plan, cplan, gops)
        if not audio_part:
            plan = render_loudness.normalise(
                plan, scratch.path, ffmpeg_bin=ffmpeg_bin, cancel=watch.stop, deadline=deadline
            )
            parts.render_audio(plan, audio, ffmpeg_bin=ffmpeg_bin, cancel=watch.stop, deadline=deadline)
    report = plan.loudness_report()
    # The source's last use in this render: the room goes to the pieces and the joined output, which are
    # about an output's size each, so the assembly needs no more disk than a whole render.
    drop_source(job, deps, scratch.path)
    if audio_part:
        key = audio_key(settings, job.render_id, job.output.format)
        deps.storage.download(key, audio, stop=watch.stop)
        report = _loudness_of(deps, key)
    pieces = [scratch.path / "pieces" / parts.chunk_file_name(preset, k) for k in range(count)]
    for k, piece in enumerate(pieces):
        deps.storage.download(piece_key(settings, job.render_id, job.output.format, k), piece, stop=watch.stop)
    watch.raise_if_stopped()
    out = scratch.path / f"{job.render_id}.{preset.extension}"
    parts.assemble(
        plan, cplan, pieces, audio, out, ffmpeg_bin=ffmpeg_bin, cancel=watch.stop, deadline=deadline, gops=gops
    )
    watch.raise_if_stopped()
    key = job_output_key(settings, job)
    size = out.stat().st_size
    t0 = time.monotonic()
    deps.storage.put(out, key, preset.content_type)
    deps.observer.uploaded(size, time.monotonic() - t0)
    fields = {
        "size_bytes": size,
        "duration_s": round(plan.timeline.duration, 6),
        "encoder": preset.encoder,
        "output_key": key,
        "download_name": download_name(job),
        "chunks": count,
        "loudness": report,
        "frames": frames_report(copied, plan.timeline.total_units - copied),
    }

    def finished() -> None:
        wall = time.monotonic() - started
        fmt = job.output.format
        deps.observer.finished("completed", fmt, preset.encoder, wall, plan.timeline.duration, plan.info.duration)
        deps.observer.frames(fmt, copied, plan.timeline.total_units - copied)
        delete_pieces(deps, job, count)

    def cancelled() -> Outcome:
        with contextlib.suppress(RenderError):
            deps.storage.delete(key)
        delete_pieces(deps, job, count)
        terminal_event(deps, job.render_id, job.webhook)
        return Outcome.CANCELLED

    return complete_stored(
        deps,
        job,
        record_token,
        fields,
        finished=finished,
        cancelled=cancelled,
        deadline=deadline,
        stop=watch.shutdown,
    )
