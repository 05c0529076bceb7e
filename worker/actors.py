"""Thin Dramatiq actors over the pipeline: the only module that knows Dramatiq.

Importing this module builds the Redis broker from the ``RENDER_*`` settings
and declares two actors:

* ``render`` on ``RENDER_QUEUE``: one job message in, :func:`pipeline.process`;
* ``deliver_webhook`` on ``RENDER_WEBHOOK_QUEUE``: one signed POST per attempt,
  retried by Dramatiq with its own bounded backoff, so a slow receiver never
  holds up a render.

Start workers with ``render-worker`` (or ``dramatiq worker.actors``).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Mapping
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Middleware

from worker import pipeline, webhooks
from worker.errors import Cancelled, RenderError
from worker.jobs import Webhook
from worker.records import RedisRecordStore
from worker.settings import Settings, load
from worker.storage.s3 import S3Storage

log = logging.getLogger(__name__)

settings: Settings = load()

_SECRET = re.compile(r"whsec_[A-Za-z0-9+/=_-]*")


class RedactSecrets(logging.Filter):
    """Keep webhook secrets out of the logs.

    Dramatiq logs a whole message, arguments included, when an actor raises
    (``Failed to process message render({...})``), and job messages and webhook
    deliveries carry the ``whsec_`` secret of their webhook.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "whsec_" in text:
            record.msg, record.args = _SECRET.sub("whsec_<redacted>", text), None
        return True


for _name in ("dramatiq.worker.WorkerThread", "dramatiq.worker.ConsumerThread"):
    logging.getLogger(_name).addFilter(RedactSecrets())


class GracefulShutdown(Middleware):
    """On SIGTERM, let the current render finish for ``shutdown_timeout_s``, then stop it.

    The stopped render raises :class:`~worker.errors.Cancelled`, which is
    transient: the pipeline releases its lease and Dramatiq's retry puts the
    message back on the queue for another worker. A second signal makes
    Dramatiq exit at once; ffmpeg dies with its parent (see ffmpeg.py) and the
    unacked message is requeued once the broker notices the missing heartbeat.
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


def _retry_when(max_retries: int) -> Any:
    def retry_when(retries: int, exc: BaseException) -> bool:
        return isinstance(exc, RenderError) and exc.transient and retries < max_retries

    return retry_when


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
    broker.enqueue(message.copy(options={"requeues": requeues}), delay=delay_ms)


def build_broker(s: Settings) -> RedisBroker:
    broker = RedisBroker(
        url=s.redis_url,
        heartbeat_timeout=s.broker_heartbeat_timeout_ms,
        maintenance_chance=s.broker_maintenance_chance,
    )
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(GracefulShutdown(s.shutdown_timeout_s))
    try:
        from worker import metrics

        metrics.install(broker, s)
    except ImportError:  # pragma: no cover - metrics are part of the package
        log.warning("metrics module not available")
    return broker


broker = build_broker(settings)
dramatiq.set_broker(broker)


def _shutdown_event() -> threading.Event | None:
    for mw in broker.middleware:
        if isinstance(mw, GracefulShutdown):
            return mw.cancel
    return None


@functools.cache
def _redis() -> redis.Redis:
    """This worker process's Redis client (built after the fork; thread-safe, pooled)."""
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


@functools.cache
def _deps() -> pipeline.Deps:
    """Collaborators, built once per worker process (after the fork)."""
    client = _redis()
    observer: pipeline.Observer
    try:
        from worker import metrics

        observer = metrics.PipelineObserver()
    except (ImportError, AttributeError):
        observer = pipeline.Observer()
    return pipeline.Deps(
        settings=settings,
        records=RedisRecordStore(client, ttl_s=settings.record_ttl_s),
        storage=S3Storage(settings),
        send_event=enqueue_event,
        observer=observer,
    )


def enqueue_event(
    event_type: str, render_id: str, asset_id: str, webhook: Webhook | None, extra: Mapping[str, Any]
) -> None:
    if webhook is None:
        return
    deliver_webhook.send(event_type, render_id, asset_id, webhook.url, webhook.secret, dict(extra))


@dramatiq.actor(
    actor_name="render",
    queue_name=settings.queue,
    max_retries=settings.max_retries,
    min_backoff=settings.retry_min_backoff_ms,
    max_backoff=settings.retry_max_backoff_ms,
    retry_when=_retry_when(settings.max_retries),
    # A message with no render id has nowhere to report to: straight to the
    # dead-letter queue, never retried.
    throws=(pipeline.UnrecordableJob,),
    # The pipeline enforces RENDER_TIME_LIMIT_S itself and stops ffmpeg; this is
    # only a backstop for a thread stuck outside ffmpeg.
    time_limit=int((settings.time_limit_s + 600) * 1000),
)
def render(message: Any) -> None:
    current = CurrentMessage.get_current_message()
    retries = current.options.get("retries", 0) if current is not None else 0
    try:
        outcome = pipeline.process(
            message,
            _deps(),
            last_attempt=retries >= settings.max_retries,
            cancel=_shutdown_event(),
        )
    except pipeline.UnrecordableJob as err:
        msg_id = current.message_id if current is not None else "?"
        log.error("render message %s dead-lettered: %s", msg_id, err.message)
        raise
    except (pipeline.LeaseBusy, Cancelled) as err:
        if current is None:
            raise
        # A lease lapses lease_ttl_s after its holder stops renewing it, so that
        # is when a takeover can first succeed; a live holder is asked again then.
        busy = isinstance(err, pipeline.LeaseBusy)
        delay_ms = int(settings.lease_ttl_s * 1000) if busy else settings.retry_min_backoff_ms
        _requeue(current, max(delay_ms, settings.retry_min_backoff_ms), err.message)
        return
    # Dramatiq has no use for a return value without a result backend (and warns
    # about one on every message), so the outcome goes to the log instead.
    log.info("render message %s: %s", current.message_id if current is not None else "?", outcome.value)


class WebhookNotDelivered(RenderError):
    transient = True


@dramatiq.actor(
    actor_name="deliver_webhook",
    queue_name=settings.webhook_queue,
    max_retries=max(0, settings.webhook_max_attempts - 1),
    min_backoff=settings.webhook_min_backoff_ms,
    max_backoff=settings.webhook_max_backoff_ms,
    retry_when=_retry_when(max(0, settings.webhook_max_attempts - 1)),
)
def deliver_webhook(
    event_type: str, render_id: str, asset_id: str, url: str, secret: str, extra: dict[str, Any]
) -> None:
    deps = _deps()
    observer = deps.observer
    msg_id = webhooks.event_id(render_id, event_type)
    client = _redis()
    done_key = f"render:{render_id}:delivered:{event_type}"
    if client.exists(done_key):
        log.info("webhook %s for %s was delivered already", msg_id, render_id)
        return
    body = webhooks.build_event(event_type, render_id, asset_id, extra)
    result = webhooks.deliver_once(
        url, secret, msg_id, body, settings.webhook_timeout_s, allow_private=settings.webhook_allow_private
    )
    if result.delivered:
        client.set(done_key, "1", ex=settings.record_ttl_s)
        _observe_webhook(observer, "delivered")
        return
    current = CurrentMessage.get_current_message()
    retries = current.options.get("retries", 0) if current is not None else 0
    if not result.retryable or retries >= settings.webhook_max_attempts - 1:
        log.error("webhook %s for %s given up after %d attempts: %s", msg_id, render_id, retries + 1, result.reason)
        _observe_webhook(observer, "gave_up")
        return
    _observe_webhook(observer, "retry")
    raise WebhookNotDelivered(f"webhook {msg_id} attempt {retries + 1} failed: {result.reason}")


def _observe_webhook(observer: Any, outcome: str) -> None:
    fn = getattr(observer, "webhook", None)
    if fn is not None:
        fn(outcome)
