"""Thin Dramatiq actors over the pipeline: the only module that knows Dramatiq.

Importing this module builds nothing and reads no setting. :func:`setup` does
that, once per process: it reads the ``RENDER_*`` settings, builds the Redis
broker with its middleware, makes it Dramatiq's global broker and declares two
actors on it:

* ``render`` on ``RENDER_QUEUE``: one job message in, :func:`pipeline.process`;
* ``deliver_webhook`` on ``RENDER_WEBHOOK_QUEUE``: one signed POST per attempt,
  retried by Dramatiq with its own bounded backoff, so a slow receiver never
  holds up a render.

Who calls :func:`setup`:

* ``render-worker`` hands Dramatiq ``worker.actors:setup``, a callable Dramatiq's
  CLI runs in each worker process before it reads the global broker;
* ``dramatiq worker.actors`` (the module without ``:setup``) leaves Dramatiq no
  hook but the import itself: its CLI reads the global broker right after
  importing the module. So the last lines below call :func:`setup` when, and
  only when, the process is Dramatiq's own CLI (``sys.argv[0]`` is ``dramatiq``).
  Every other importer (``render-cli``, tests, ``render-worker``'s parent) gets a
  module with no broker and no settings read.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name
from dramatiq.middleware import CurrentMessage, Middleware

from worker import logsafe, pipeline, scratch, webhooks
from worker.deliveries import DeliveryThreads
from worker.errors import Cancelled, LeaseBusy, RenderError, UnrecordableJob, WebhookNotDelivered
from worker.jobs import Webhook
from worker.records import RedisRecordStore
from worker.settings import Settings, load, secret_values
from worker.source_cache import SourceCache
from worker.storage.s3 import S3Storage

log = logging.getLogger(__name__)


class GracefulShutdown(Middleware):
    """On SIGTERM, let the current render finish for ``shutdown_timeout_s``, then stop it.

    The stopped render raises :class:`~worker.errors.Cancelled`, which is
    transient: the pipeline releases its lease and the actor puts the message
    back on the queue for another worker. A second signal makes Dramatiq exit
    at once; ffmpeg dies with its parent (see ffmpeg.py) and the unacked message
    is requeued by another worker's :class:`RequeueSweep`.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.cancel = threading.Event()
        self._timer: threading.Timer | None = None

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        log.info("shutting down: current renders have %.0f s to finish before they are requeued", self.timeout_s)
        self._timer = threading.Timer(self.timeout_s, self.cancel.set)
        self._timer.daemon = True
        self._timer.start()


def sweep(broker: RedisBroker, queues: list[str]) -> None:
    """Requeue the unacked messages of dead workers on ``queues``, now.

    This is Dramatiq's own maintenance step (in its ``dispatch`` Lua script): a
    worker whose heartbeat is older than the broker's ``heartbeat_timeout`` is
    dead, and the messages it fetched but never acked go back on their queue.
    Dramatiq runs it only by chance (``maintenance_chance`` per million broker
    calls), so after a crash the message could wait for hours; here it is asked
    for explicitly, through the same script with its ``do_maintenance`` flag
    set. The call also refreshes this worker's own heartbeat.
    """
    script = broker.scripts["dispatch"]
    for queue in queues:
        # dispatch(args=[command, timestamp, queue, worker id, heartbeat timeout, dead message ttl,
        #                do_maintenance, max unpack size], keys=[namespace]); "qsize" only reads.
        args = [
            "qsize",
            current_millis(),
            queue,
            broker.broker_id,
            broker.heartbeat_timeout,
            broker.dead_message_ttl,
            1,
            broker._max_unpack_size(),
        ]
        script(args=args, keys=[broker.namespace])


class RequeueSweep(Middleware):
    """Run :func:`sweep` every ``interval_s`` in every worker process, so crash recovery has a bound.

    A render whose worker died is back on its queue within ``heartbeat timeout +
    interval`` (60 s + 15 s by default) and taken over once its lease has lapsed
    (``RENDER_LEASE_TTL_S``, shorter than that), whatever the traffic.
    """

    #: Switch for the test that shows crash recovery depends on the timer.
    enabled = True

    def __init__(self, queues: list[str], interval_s: float) -> None:
        self.queues = queues
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        if not self.enabled:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(broker,), name="requeue-sweep", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()

    def _run(self, broker: RedisBroker) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                sweep(broker, self.queues)
            except redis.RedisError as exc:  # Redis away: the consumers notice too; try again next time
                log.warning("requeue sweep failed: %s", exc)


def _retry_when(max_retries: int) -> Any:
    def retry_when(retries: int, exc: BaseException) -> bool:
        if isinstance(exc, dramatiq.Retry) and isinstance(exc.__cause__, RenderError):
            exc = exc.__cause__  # a known fault raised quietly (_retry_quietly)
        return isinstance(exc, RenderError) and exc.transient and retries < max_retries

    return retry_when


class ScratchJanitor(Middleware):
    """At boot, before this process takes a job: remove the scratch that dead worker processes left behind.

    A worker killed with SIGKILL (or OOM) leaves its render's directory, ffmpeg's graph directory and a whole
    source copy on the host's disk; nothing else would ever remove them (see :mod:`worker.scratch`).
    """

    def __init__(self, work_dir: str) -> None:
        self.work_dir = work_dir

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        scratch.clean_dead(self.work_dir)


def build_broker(s: Settings) -> RedisBroker:
    broker = RedisBroker(
        url=s.redis_url,
        heartbeat_timeout=s.broker_heartbeat_timeout_ms,
        maintenance_chance=s.broker_maintenance_chance,
    )
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(ScratchJanitor(s.work_dir))
    broker.add_middleware(GracefulShutdown(s.shutdown_timeout_s))
    queues = [s.queue, dq_name(s.queue), s.webhook_queue, dq_name(s.webhook_queue)]
    broker.add_middleware(RequeueSweep(queues, s.broker_sweep_interval_s))
    # Deliveries on threads of their own; added before the telemetry, which counts the queues they consume.
    broker.add_middleware(DeliveryThreads(s.webhook_queue, s.webhook_threads, s.webhook_timeout_s + 5))
    from worker import telemetry  # the one import point of the metrics side

    telemetry.install(broker, s)
    return broker


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What :func:`setup` built for this process."""

    settings: Settings
    broker: RedisBroker
    render: dramatiq.Actor[..., None]
    deliver_webhook: dramatiq.Actor[..., None]
    render_part: dramatiq.Actor[..., None]


_runtime: Runtime | None = None
_setup_lock = threading.Lock()


def setup(settings: Settings | None = None) -> RedisBroker:
    """Read the settings, build the broker, declare the actors; once per process (later calls return it)."""
    global _runtime
    with _setup_lock:
        if _runtime is not None:
            return _runtime.broker
        s = settings or load()
        logsafe.install(secret_values(s))
        logging.getLogger().setLevel(s.log_level)
        broker = build_broker(s)
        dramatiq.set_broker(broker)
        # Renders and the parts of chunked renders share the render queue and its retry policy (a chunk that
        # fails transiently is retried alone).
        render_options: dict[str, Any] = {
            "queue_name": s.queue,
            "broker": broker,
            "max_retries": s.max_retries,
            "min_backoff": s.retry_min_backoff_ms,
            "max_backoff": s.retry_max_backoff_ms,
            "retry_when": _retry_when(s.max_retries),
            # The pipeline enforces RENDER_TIME_LIMIT_S itself and stops ffmpeg; this is
            # only a backstop for a thread stuck outside ffmpeg.
            "time_limit": int((s.time_limit_s + 600) * 1000),
        }
        render_actor = dramatiq.actor(
            actor_name="render",
            # A message with no render id has nowhere to report to: straight to the
            # dead-letter queue, never retried.
            throws=(UnrecordableJob,),
            **render_options,
        )(_render)
        webhook_retries = max(0, s.webhook_max_attempts - 1)
        webhook_actor = dramatiq.actor(
            actor_name="deliver_webhook",
            queue_name=s.webhook_queue,
            broker=broker,
            max_retries=webhook_retries,
            min_backoff=s.webhook_min_backoff_ms,
            max_backoff=s.webhook_max_backoff_ms,
            retry_when=_retry_when(webhook_retries),
        )(_deliver_webhook)
        # The chunks, audio and assembly of a chunked render (pipeline.process_part): any worker takes them.
        part_actor = dramatiq.actor(actor_name="render_part", **render_options)(_render_part)
        _runtime = Runtime(s, broker, render_actor, webhook_actor, part_actor)
        return broker


def runtime() -> Runtime:
    """This process's broker, settings and actors; :func:`setup` must have run."""
    if _runtime is None:
        raise RuntimeError("worker.actors.setup() has not run in this process")
    return _runtime


def _shutdown_event() -> threading.Event | None:
    for mw in runtime().broker.middleware:
        if isinstance(mw, GracefulShutdown):
            return mw.cancel
    return None


@functools.cache
def _redis() -> redis.Redis:
    """This worker process's Redis client (built after the fork; thread-safe, pooled)."""
    return redis.Redis.from_url(runtime().settings.redis_url, decode_responses=True)


@functools.cache
def _deps() -> pipeline.Deps:
    """Collaborators, built once per worker process (after the fork)."""
    from worker import telemetry

    settings = runtime().settings
    return pipeline.Deps(
        settings=settings,
        records=RedisRecordStore(_redis(), ttl_s=settings.record_ttl_s),
        storage=S3Storage(settings),
        send_event=enqueue_event,
        observer=telemetry.PipelineObserver(),
        dispatch=_dispatch_part,
        # Per process, as the fork made it: each process downloads a chunked render's source once.
        sources=SourceCache(Path(settings.work_dir or tempfile.gettempdir())),
    )


def _dispatch_part(kind: str, body: dict[str, Any]) -> None:
    """Send a chunk or the assembly of a chunked render (``kind`` only names it in the log)."""
    message = runtime().render_part.send(body)
    log.info("render %s: %s message %s sent", body["job"].get("render_id"), kind, message.message_id)


def enqueue_event(
    event_type: str, render_id: str, asset_id: str, webhook: Webhook | None, extra: Mapping[str, Any]
) -> None:
    if webhook is None:
        return
    runtime().deliver_webhook.send(event_type, render_id, asset_id, webhook.url, webhook.secret, dict(extra))


def _requeue(message: Any, delay_ms: int, why: str) -> None:
    """Put the current message back on its queue after ``delay_ms`` without spending one of its retries.

    For deliveries that did no work and met no error: a render whose lease another
    worker holds (a duplicate delivery, or a crashed worker's lease not lapsed
    yet), and a render stopped by shutdown. Going through Dramatiq's retries
    instead would count these against ``RENDER_MAX_RETRIES``: a duplicate of a
    long render would be dead-lettered while the original is still running, and
    a shutdown on the last attempt would strand the record in ``processing``.
    The message is acked once this returns; a crash between the two leaves a
    duplicate, which the record's guarded transitions absorb.
    """
    requeues = int(message.options.get("requeues", 0)) + 1
    log.info("render message %s: %s; back on the queue in %d ms", message.message_id, why, delay_ms)
    runtime().broker.enqueue(message.copy(options={"requeues": requeues}), delay=delay_ms)


def _render(message: Any) -> None:
    settings = runtime().settings
    current = CurrentMessage.get_current_message()
    retries = current.options.get("retries", 0) if current is not None else 0
    try:
        outcome = pipeline.process(
            message,
            _deps(),
            last_attempt=retries >= settings.max_retries,
            cancel=_shutdown_event(),
        )
    except UnrecordableJob as err:
        msg_id = current.message_id if current is not None else "?"
        log.error("render message %s dead-lettered: %s", msg_id, err.message)
        raise
    except (LeaseBusy, Cancelled) as err:
        _put_back(current, err, settings)
        return
    except RenderError as err:
        _retry_quietly(current, err)
        raise
    # Dramatiq has no use for a return value without a result backend (and warns
    # about one on every message), so the outcome goes to the log instead.
    log.info("render message %s: %s", current.message_id if current is not None else "?", outcome.value)


def _retry_quietly(current: Any, err: RenderError) -> None:
    """A known transient fault (storage, a full disk): one warning line, then a retry with backoff.

    Raised as :class:`dramatiq.Retry`, which the Retries middleware retries like any exception but Dramatiq does
    not log as an unhandled one with a traceback: the fault is the worker's to report, by its code.
    """
    if not err.transient or current is None:
        return
    log.warning("render message %s: %s; retried with backoff", current.message_id, err)
    raise dramatiq.Retry(str(err)) from err


def _put_back(current: Any, err: RenderError, settings: Settings) -> None:
    """Requeue a render or part message that found its lease busy or was stopped by a shutdown."""
    if current is None:  # called outside a worker (a test calling the actor function): nothing to requeue
        raise err
    # A lease lapses lease_ttl_s after its holder stops renewing it, so that
    # is when a takeover can first succeed; a live holder is asked again then.
    busy = isinstance(err, LeaseBusy)
    delay_ms = int(settings.lease_ttl_s * 1000) if busy else settings.retry_min_backoff_ms
    _requeue(current, max(delay_ms, settings.retry_min_backoff_ms), err.message)


def _render_part(body: dict[str, Any]) -> None:
    settings = runtime().settings
    current = CurrentMessage.get_current_message()
    retries = current.options.get("retries", 0) if current is not None else 0
    try:
        outcome = pipeline.process_part(
            body, _deps(), last_attempt=retries >= settings.max_retries, cancel=_shutdown_event()
        )
    except (LeaseBusy, Cancelled) as err:
        _put_back(current, err, settings)
        return
    except RenderError as err:
        _retry_quietly(current, err)
        raise
    part = body.get("part") or ("assembly" if body.get("index") is None else f"chunk {body['index']}")
    log.info("render %s %s: %s (pid %d)", body["job"].get("render_id"), part, outcome.value, os.getpid())


def _deliver_webhook(
    event_type: str, render_id: str, asset_id: str, url: str, secret: str, extra: dict[str, Any]
) -> None:
    settings = runtime().settings
    observer = _deps().observer
    msg_id = webhooks.event_id(render_id, event_type)
    client = _redis()
    done_key = f"render:{render_id}:delivered:{event_type}"
    if client.exists(done_key):
        log.info("webhook %s for %s was delivered already", msg_id, render_id)
        return
    # One attempt at a time per render and event: two copies of the same event (two workers that both found it
    # unsent, say a cancel's and a redelivery's) would otherwise both pass the check above and both POST. The
    # claim lapses on its own if this process dies mid-attempt; the copy that finds it taken tries again later,
    # and then finds the event delivered.
    claim_key = f"render:{render_id}:delivering:{event_type}"
    # Outlives the attempt, whose whole time is bounded by webhook_timeout_s (webhooks.deliver_once).
    claim_ms = int((settings.webhook_timeout_s * 2 + 5) * 1000)
    if not client.set(claim_key, msg_id, nx=True, px=claim_ms):
        busy = f"webhook {msg_id} is being delivered by another worker; checking again later"
        log.info(busy)
        raise dramatiq.Retry(busy) from WebhookNotDelivered(busy)
    try:
        if client.exists(done_key):  # delivered between the first check and the claim
            return
        body = webhooks.build_event(event_type, render_id, asset_id, extra)
        result = webhooks.deliver_once(
            url, secret, msg_id, body, settings.webhook_timeout_s, allow_private=settings.webhook_allow_private
        )
        if result.delivered:
            client.set(done_key, "1", ex=settings.record_ttl_s)
    finally:
        client.delete(claim_key)
    if result.delivered:
        _observe_webhook(observer, "delivered")
        return
    current = CurrentMessage.get_current_message()
    retries = current.options.get("retries", 0) if current is not None else 0
    if not result.retryable or retries >= settings.webhook_max_attempts - 1:
        log.error("webhook %s for %s given up after %d attempts: %s", msg_id, render_id, retries + 1, result.reason)
        _observe_webhook(observer, "gave_up")
        return
    _observe_webhook(observer, "retry")
    # The tenant's receiver, not a worker fault: one warning with the status and the attempt, no traceback, no
    # dramatiq_message_errors_total (dramatiq.Retry is retried like any error but not logged as one).
    log.warning(
        "webhook %s for %s: attempt %d of %d failed (%s); retried with backoff",
        msg_id,
        render_id,
        retries + 1,
        settings.webhook_max_attempts,
        result.reason,
    )
    raise dramatiq.Retry(f"webhook {msg_id} attempt {retries + 1} failed: {result.reason}") from WebhookNotDelivered(
        result.reason
    )


def _observe_webhook(observer: Any, outcome: str) -> None:
    fn = getattr(observer, "webhook", None)
    if fn is not None:
        fn(outcome)


def send_render(settings: Settings, message: Mapping[str, Any]) -> str:
    """Queue one render job from outside a worker (``render-cli enqueue``); returns the message id.

    A plain broker on ``RENDER_REDIS_URL``: no :func:`setup`, so no worker middleware in a CLI process.
    """
    broker = RedisBroker(url=settings.redis_url)
    try:
        msg: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=settings.queue, actor_name="render", args=(dict(message),), kwargs={}, options={}
        )
        broker.enqueue(msg)
        return msg.message_id
    finally:
        broker.close()


def _started_by_dramatiq_cli() -> bool:
    """Whether this process is ``dramatiq worker.actors`` (see the module docstring)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    by_name = argv0.name in {"dramatiq", "dramatiq-gevent"}
    by_module = argv0.name == "__main__.py" and argv0.parent.name == "dramatiq"  # python -m dramatiq
    return "dramatiq.cli" in sys.modules and (by_name or by_module)


if _started_by_dramatiq_cli():
    setup()
