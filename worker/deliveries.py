"""Webhook deliveries on threads of their own, so that a slow receiver can never hold a render thread.

The deploy default is one render thread a pod. Were deliveries consumed by the same threads as renders, a
tenant's receiver that drips its reply would take that thread for as long as an attempt lasts, and renders
would wait behind it. Each worker process therefore runs a second Dramatiq :class:`~dramatiq.Worker` that
consumes only the webhook queue, with ``RENDER_WEBHOOK_THREADS`` threads; the main worker consumes only the
render queue (``render-worker`` passes just that queue to Dramatiq). Every attempt has a total deadline
(:func:`worker.webhooks.deliver_once`), so a delivery thread is never held longer than that either.

The delivery worker shares the process's broker and its message middleware (retries, the current message,
metrics), but its own boot and shutdown are not announced to the middleware: those mean "this process starts
(or stops) taking renders" to the graceful-shutdown timer, the requeue sweep and the telemetry.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

log = logging.getLogger(__name__)

# The process-level signals of a Worker, which the delivery worker keeps to itself.
_QUIET = frozenset({"worker_boot", "worker_shutdown"})


class _QuietBroker:
    """The broker, less the delivery worker's boot and shutdown signals."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        if signal not in _QUIET:
            self._broker.emit_before(signal, *args, **kwargs)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        if signal not in _QUIET:
            self._broker.emit_after(signal, *args, **kwargs)


class _DeliveryConsumers(Middleware):
    """Adds the delivery worker's consumers as queues are declared, as Dramatiq's own worker middleware does for
    its worker (not a subclass of it: the broker warns when a middleware's type is added twice)."""

    def __init__(self, worker: dramatiq.Worker) -> None:
        self.worker = worker

    def after_declare_queue(self, broker: dramatiq.Broker, queue_name: str) -> None:
        self.worker._add_consumer(queue_name)

    def after_declare_delay_queue(self, broker: dramatiq.Broker, queue_name: str) -> None:
        self.worker._add_consumer(queue_name, delay=True)


class DeliveryWorker(dramatiq.Worker):
    def __init__(self, broker: dramatiq.Broker, queue: str, threads: int) -> None:
        super().__init__(_QuietBroker(broker), queues={queue}, worker_threads=threads)  # type: ignore[arg-type]
        # One message in hand per thread. render-worker sets Dramatiq's process-wide prefetch to the render
        # threads (cli.run_worker), which would leave one delivery thread idle behind a slow attempt.
        self.queue_prefetch = threads

    def start(self) -> None:
        self.broker.add_middleware(_DeliveryConsumers(self))
        for _ in range(self.worker_threads):
            self._add_worker()


class DeliveryThreads(Middleware):
    """Starts the delivery worker with the process's (render) worker, and stops it after that one stopped."""

    def __init__(self, queue: str, threads: int, stop_timeout_s: float) -> None:
        self.queue = queue
        self.threads = threads
        self.stop_timeout_ms = int(stop_timeout_s * 1000)
        self.worker: DeliveryWorker | None = None

    # Before the render worker boots (after_* hooks run in reverse order, and the telemetry's after_worker_boot
    # must find the delivery worker's queues).
    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.worker is not None:
            return
        self.worker = DeliveryWorker(broker, self.queue, self.threads)
        self.worker.start()
        # The telemetry counts the queues a process consumes from its worker (RenderNoWorkerConsuming).
        worker.delivery = self.worker  # type: ignore[attr-defined]
        log.info("webhook deliveries: %d thread(s) on queue %s", self.threads, self.queue)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # After the render worker has stopped: the events of the renders it finished meanwhile still go out, and
        # its shutdown is not held up (a render put back during it must not be taken again by this process).
        if self.worker is not None:
            # An attempt in flight ends within its deadline; what is still queued in memory goes back to Redis.
            self.worker.stop(timeout=self.stop_timeout_ms)
            self.worker = None
