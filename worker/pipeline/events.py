"""Terminal events: each render's one ``render.completed``, ``render.failed`` or ``render.cancelled``, handed
over once whoever ends the render (see the package docstring for who sends ``render.cancelled``)."""

from __future__ import annotations

import logging

from worker.errors import (
    EventNotQueued,
    RenderError,
)
from worker.jobs import Job, Webhook
from worker.pipeline.deps import Deps, Outcome
from worker.pipeline.messages import (
    bounded_message,
)
from worker.pipeline.outputs import (
    job_output_key,
)
from worker.scratch import Scratch

log = logging.getLogger(__name__)

COMPLETED = "render.completed"
FAILED = "render.failed"
CANCELLED = "render.cancelled"


def send(deps: Deps, event_type: str, render_id: str, asset_id: str, webhook: Webhook | None, extra: dict) -> None:
    """Hand the terminal event over once; a failure here must not undo the render.

    The record is already terminal, so a redelivery does no work: it finds the
    event unmarked and sends it (:func:`terminal_event`). That needs the queue
    to retry, so whatever the sender raised (a broker error, say) leaves as a
    transient error rather than as an unexpected one, which would dead-letter
    the message and lose the event.
    """
    try:
        deps.send_event(event_type, render_id, asset_id, webhook, extra)
        deps.records.mark_event(render_id)
    except Exception as exc:  # noqa: BLE001 - the record is final; the event is retried on redelivery
        log.exception("could not enqueue %s for %s", event_type, render_id)
        raise EventNotQueued(f"could not enqueue {event_type} for {render_id}: {exc}") from exc


def terminal_event(deps: Deps, render_id: str, webhook: Webhook | None) -> bool:
    """For a render that ended (here or elsewhere): send its event only if it never went out.

    Returns whether this call handed one over. Whoever hands over ``render.cancelled`` also counts the cancel
    (``render_jobs_total{outcome="cancelled"}``), so a cancelled render is counted once, wherever it ends.
    """
    rec = deps.records.get(render_id)
    if rec is None or deps.records.event_marked(render_id):
        return False
    asset_id = rec.get("asset_id") or ""
    if rec["state"] == "completed":
        send(deps, COMPLETED, render_id, asset_id, webhook, {})
    elif rec["state"] == "failed":
        extra = {"error_code": rec.get("error_code"), "error_message": rec.get("error_message")}
        send(deps, FAILED, render_id, asset_id, webhook, extra)
    elif rec["state"] == "cancelled":
        send(deps, CANCELLED, render_id, asset_id, webhook, {"cancel_reason": rec.get("cancel_reason")})
        deps.observer.cancelled(str((rec.get("output") or {}).get("format") or ""))
    else:
        return False
    return True


def cancelled(deps: Deps, job: Job, *, may_have_uploaded: bool) -> Outcome:
    """A job whose record is cancelled: leave nothing behind on this host or in storage, then the event once.

    ``may_have_uploaded``: the output may be in storage (a cancel that landed during the upload, or a
    redelivery after a worker that had started it crashed); the object is deleted again.
    """
    with Scratch(deps.settings.work_dir, job.render_id):
        pass  # a scratch directory kept for an upload retry on this host: entered without keep, so removed
    if may_have_uploaded:
        try:
            deps.storage.delete(job_output_key(deps.settings, job))
        except RenderError as exc:  # the event still goes out; the log names the orphan
            log.error("render %s was cancelled but its output could not be deleted: %s", job.render_id, exc)
    terminal_event(deps, job.render_id, job.webhook)
    return Outcome.CANCELLED


def fail(
    deps: Deps,
    render_id: str,
    err: RenderError,
    defaults: dict,
    asset_id: str,
    webhook: Webhook | None,
    token: str | None = None,
) -> None:
    message = bounded_message(err.message)
    if deps.records.fail(render_id, token, err.code.value, message, defaults):
        deps.observer.failed(err.code.value, str(defaults.get("output", {}).get("format", "")))
        extra = {"error_code": err.code.value, "error_message": message}
        send(deps, FAILED, render_id, asset_id, webhook, extra)
    else:
        terminal_event(deps, render_id, webhook)
