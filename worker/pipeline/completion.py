"""Completing a stored render: the record's guarded transition and its event, retried in place while the
record store is away, so an output in storage never leaves its record processing for ever."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from worker.errors import (
    RenderError,
)
from worker.jobs import Job
from worker.pipeline.deps import Deps, Outcome
from worker.pipeline.events import terminal_event

log = logging.getLogger(__name__)


def complete_stored(
    deps: Deps,
    job: Job,
    token: str,
    fields: Mapping[str, Any],
    *,
    finished: Callable[[], None],
    cancelled: Callable[[], Outcome],
    deadline: float,
    stop: threading.Event | None,
) -> Outcome:
    """Complete the record of a render whose output is stored, and hand its event over, retrying while the
    record store is away (:func:`until_recorded`).

    ``finished`` runs once, when this delivery completed the record (metrics, clean-up); ``cancelled`` when a
    cancel got there first. Where the lease was gone (someone else finished it, or holds it now) only the
    event is seen to.
    """
    completed = False  # by this delivery, in an earlier try whose event could not be handed over

    def complete() -> Outcome:
        nonlocal completed
        if not completed and not deps.records.complete(job.render_id, token, fields):
            state = deps.records.state(job.render_id)
            if state == "cancelled":
                return cancelled()
            if state is None:
                return record_lost(job, str(fields["output_key"]))
            terminal_event(deps, job.render_id, job.webhook)
            return Outcome.DUPLICATE
        if not completed:
            completed = True
            finished()
        terminal_event(deps, job.render_id, job.webhook)
        return Outcome.COMPLETED

    return until_recorded(job.render_id, complete, deadline, stop)


#: How long the completion of a stored render waits between tries while the record store is away, at most.
RECORD_RETRY_MAX_S = 10.0


def until_recorded(render_id: str, fn: Callable[[], Outcome], deadline: float, stop: threading.Event | None) -> Outcome:
    """Run ``fn`` (the record's completion and its event) until the record store answers, up to ``deadline``.

    The output is in storage by then: giving up at the first Redis error would leave the record processing for
    ever (the message acknowledged, no retry queued, no webhook). Each try is idempotent (the record's guarded
    transition, the event marked once). Past ``deadline`` (the job's time limit) or on shutdown the error
    leaves as transient: the message is not acknowledged and comes back, and the delivery that takes it
    completes from the stored object (:func:`stored_result`) without rendering again.
    """
    delay = 0.5
    while True:
        try:
            return fn()
        except RenderError as exc:
            if not exc.transient or time.monotonic() + delay > deadline or (stop is not None and stop.is_set()):
                raise
            log.warning(
                "render %s is stored but the record store is unavailable (%s); completing it again in %.1f s",
                render_id,
                exc.message,
                delay,
            )
        if stop is not None:
            stop.wait(delay)
        else:
            time.sleep(delay)
        delay = min(delay * 2, RECORD_RETRY_MAX_S)


def record_lost(job: Job, key: str) -> Outcome:
    """The record vanished under a stored render: the record store lost its data (a Redis without persistence
    restarted). Nothing here can rebuild it; the output stays where it was put, and the message is done."""
    log.error(
        "render %s: its record is gone (the record store lost its data?); the output is stored at %s; no event is sent",
        job.render_id,
        key,
    )
    return Outcome.DUPLICATE
