"""The Dramatiq wiring: ``dramatiq_*`` metrics into our directory, per-process ``render_*`` state, one fork.

Decision: one exposition server for ``dramatiq_*`` and ``render_*``. Dramatiq's own ``Prometheus`` middleware forks
an HTTP server on ``dramatiq_prom_port`` (9191 by default, the same default as ``RENDER_METRICS_PORT``) serving the
multiprocess directory ``dramatiq_prom_db``; running it next to ours would mean two ports (or a bind conflict) and
two directories. So :class:`DramatiqMetrics` keeps Dramatiq's metric *definitions* (their names are part of the
contract in DESIGN.md), points its directory at ours and drops its fork, and :class:`TelemetryMiddleware` forks
exactly one telemetry process per host (``worker.telemetry.process.run_telemetry``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import dramatiq
import prometheus_client
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from dramatiq.middleware import Middleware
from dramatiq.middleware import prometheus as dramatiq_prometheus

from worker.settings import Settings
from worker.telemetry.definitions import get_metrics
from worker.telemetry.exposition import ensure_multiprocess_dir, mark_process_dead
from worker.telemetry.observer import close_current_job, set_nvenc_available
from worker.telemetry.process import run_telemetry

logger = logging.getLogger(__name__)

_INTERNAL_SUFFIXES = (".DQ", ".XQ")


class DramatiqMetrics(dramatiq_prometheus.Prometheus):
    """Dramatiq's own ``dramatiq_*`` metrics, written to our multiprocess directory, without its HTTP server.

    Dramatiq's middleware keeps its directory in the module global ``DB_PATH`` (read from ``dramatiq_prom_db`` at
    import) and uses it in ``after_process_boot`` and ``after_worker_shutdown``; pointing that global at our
    directory keeps both in step with ours. ``forks`` is empty: :class:`TelemetryMiddleware` serves everything.

    Dramatiq creates a labelled series only at its first event, so a panel of errors or dead letters would say
    "No data" on a healthy fleet; every declared actor's counters are created at 0 instead.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.booted = False

    @property
    def forks(self) -> list[Callable[[], int]]:
        return []

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        dramatiq_prometheus.DB_PATH = str(ensure_multiprocess_dir(self.settings))
        super().after_process_boot(broker)
        # Dramatiq declares this gauge without a multiprocess mode, so every process kept a series of its own
        # (a pid label, kept after the process died). Same name and labels, summed over live processes.
        # Registered nowhere: in multiprocess mode the collector reads the processes' files, not a registry.
        self.inprogress_delayed_messages = prometheus_client.Gauge(
            "dramatiq_delayed_messages_inprogress",
            "The number of delayed messages in memory.",
            ["queue_name", "actor_name"],
            registry=None,
            multiprocess_mode="livesum",
        )
        self.booted = True
        for actor in list(broker.actors.values()):
            self._initialise(actor)

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        if self.booted:
            self._initialise(actor)

    def _initialise(self, actor: dramatiq.Actor[Any, Any]) -> None:
        # A retry is counted when the message is enqueued on the delay queue, under "<queue>.DQ".
        for queue_name in (actor.queue_name, f"{actor.queue_name}.DQ"):
            for counter in (
                self.total_messages,
                self.total_errored_messages,
                self.total_retried_messages,
                self.total_rejected_messages,
            ):
                counter.labels(queue_name, actor.actor_name)
        # At 0 from the start, so "delayed in memory" has data on a farm that never delayed a message.
        self.inprogress_delayed_messages.labels(actor.queue_name, actor.actor_name).set(0)

    # Dramatiq's hooks use metric objects created in after_process_boot. A producer process, or a worker run
    # in-process by a test, never emits process_boot: there the hooks do nothing instead of logging a critical
    # "Unexpected failure" for every message.

    def after_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if self.booted:
            super().after_nack(broker, message)

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        if not self.booted:
            return
        if message.message_id in self.delayed_messages and "eta" not in message.options:
            # Its delay is over: the process that held it puts it back on the queue, where any process may take
            # it. Counted down here, by the process that counted it up.
            self.delayed_messages.discard(message.message_id)
            self.inprogress_delayed_messages.labels(q_name(message.queue_name), message.actor_name).dec()
        super().after_enqueue(broker, message, delay)

    # Dramatiq counts a delayed message up under the delay queue's name ("<queue>.DQ", the queue it arrives on)
    # and down under the queue's (where it is processed), so neither series ever came back to 0. Both under the
    # queue's canonical name here.

    def before_delay_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if self.booted:
            self.delayed_messages.add(message.message_id)
            self.inprogress_delayed_messages.labels(q_name(message.queue_name), message.actor_name).inc()

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if not self.booted:
            return
        if message.message_id in self.delayed_messages:
            self.delayed_messages.discard(message.message_id)
            self.inprogress_delayed_messages.labels(q_name(message.queue_name), message.actor_name).dec()
        super().before_process_message(broker, message)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if self.booted:
            # A known fault the worker retries quietly (dramatiq.Retry: a tenant's receiver answering 5xx, storage
            # away) is counted by the worker's own metrics (render_webhook_deliveries_total{outcome="retry"},
            # dramatiq_message_retries_total), not as a message error: an error is a worker fault.
            if isinstance(exception, dramatiq.Retry):
                exception = None
            super().after_process_message(broker, message, result=result, exception=exception)

    after_skip_message = after_process_message  # as in Dramatiq's class

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.booted:
            super().after_worker_shutdown(broker, worker)


class TelemetryMiddleware(Middleware):
    """Per worker process: count the process and the queues it consumes, initialise series, report NVENC; per
    host: fork the telemetry process.

    ``probe_nvenc``: run the (cached, per-process) NVENC probe of ``worker.encoders`` in a background thread at
    boot, so ``render_nvenc_available`` is known before the first video job: a GPU host whose NVENC is broken
    should alert while idle, not after it rendered a day of jobs on the CPU. The render path reuses the cached
    result. Skipped when ``RENDER_NVENC=off``, which leaves the gauge absent on purpose.
    """

    def __init__(self, settings: Settings, *, probe_nvenc: bool = True) -> None:
        self.settings = settings
        self.probe_nvenc = probe_nvenc
        self._consumed: list[str] = []

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [run_telemetry] if self.settings.metrics_port else []

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        ensure_multiprocess_dir(self.settings)
        metrics = get_metrics()
        metrics.initialize_series()
        metrics.worker_processes.set(1)
        if self.probe_nvenc and self.settings.nvenc != "off":
            threading.Thread(target=self._report_nvenc, name="nvenc-probe", daemon=True).start()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # The queues this process really consumes (after --queues filtering), without the delay/dead-letter ones:
        # RenderNoWorkerConsuming compares them with the queues that hold ready jobs.
        consumers = [*worker.consumers]
        delivery = getattr(worker, "delivery", None)  # the webhook deliveries' own worker (worker/deliveries.py)
        if delivery is not None:
            consumers += [*delivery.consumers]
        self._consumed = sorted(q for q in consumers if not q.endswith(_INTERNAL_SUFFIXES))
        gauge = get_metrics().queue_consumers
        for queue in self._consumed:
            gauge.labels(queue=queue).set(1)

    def _report_nvenc(self) -> None:
        from worker.encoders import nvenc_status

        try:
            status = nvenc_status(
                self.settings.nvenc,
                ffmpeg_path=self.settings.ffmpeg_path or None,  # the same cache key as worker.render
                timeout_s=self.settings.nvenc_probe_timeout_s,
            )
        except Exception:  # noqa: BLE001 - telemetry must never take a worker down
            logger.warning("metrics: NVENC probe failed", exc_info=True)
            return
        set_nvenc_available(status.available)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        close_current_job()  # runs in the worker thread that processed the message

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        close_current_job()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        metrics = get_metrics()
        metrics.worker_processes.set(0)
        for queue in self._consumed:
            metrics.queue_consumers.labels(queue=queue).set(0)
        mark_process_dead()


def install(broker: dramatiq.Broker, settings: Settings) -> None:
    """Add the metrics middleware to a broker; the queue layer calls this where it builds the broker.

    No side effects beyond that: importing the broker module (in a test, say) does not switch the process to
    multiprocess mode. ``prepare_multiprocess_dir`` should run in the parent before Dramatiq forks (the
    ``render-worker`` entry point does); the middleware falls back to ``ensure_multiprocess_dir`` at boot.
    """
    broker.add_middleware(DramatiqMetrics(settings))
    broker.add_middleware(TelemetryMiddleware(settings))
