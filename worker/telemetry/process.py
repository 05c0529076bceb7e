"""The telemetry process: one per host, next to the worker processes.

It serves ``/metrics`` (every process's ``dramatiq_*`` and ``render_*`` values from the multiprocess directory),
``/healthz`` and ``/readyz``; polls queue depth and NVML every ``RENDER_QUEUE_DEPTH_INTERVAL_S``; and checks Redis
and the output bucket for readiness. Queue depth is read by this single loop, not by every worker process, so Redis
sees one poller per host.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import redis

from worker.gpu import GpuCollector
from worker.settings import Settings, load
from worker.telemetry.definitions import RenderMetrics, build_version, get_metrics
from worker.telemetry.exposition import ensure_multiprocess_dir, fork_settings, mark_process_dead, start_http_server
from worker.telemetry.queues import MAX_DISCOVERED_QUEUES, discover_queues, update_queue_metrics
from worker.telemetry.readiness import READINESS_INTERVAL_S, ReadinessChecker, redis_check, storage_check

logger = logging.getLogger(__name__)

# How often the keyspace is scanned for queues that hold jobs but are not this worker's (a SCAN walks every key,
# so far less often than the depth poll). A constant, not a setting.
QUEUE_DISCOVERY_INTERVAL_S = 60.0


class TelemetryLoop:
    """Polls queue depth and NVML and writes the gauges; one per host, in the telemetry process.

    The polled queues are this worker's own plus any other queue found holding jobs (see
    :func:`worker.telemetry.queues.discover_queues`), so jobs sent to a queue no worker consumes still show up as
    ``render_queue_depth{state="ready"}`` next to a missing ``render_queue_consumers``. While Redis is unreachable
    the queue gauges keep their last values (``render_redis_up`` says they are stale).
    """

    def __init__(
        self,
        client: redis.Redis,
        queues: Sequence[str],
        metrics: RenderMetrics | None = None,
        *,
        gpu: GpuCollector | None = None,
        discovery_interval_s: float = QUEUE_DISCOVERY_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.queues = list(queues)
        self.metrics = metrics or get_metrics()
        self.gpu = gpu or GpuCollector()
        self.discovered: set[str] = set()
        self._discovery_interval_s = discovery_interval_s
        self._next_discovery = float("-inf")
        self._clock = clock
        self._broker_down = False

    def polled_queues(self) -> list[str]:
        return self.queues + sorted(self.discovered - set(self.queues))

    def poll_once(self) -> None:
        try:
            now = self._clock()
            if now >= self._next_discovery:
                self._next_discovery = now + self._discovery_interval_s
                room = MAX_DISCOVERED_QUEUES - len(self.discovered)
                if room > 0:
                    found = discover_queues(self.client, limit=MAX_DISCOVERED_QUEUES + len(self.queues))
                    self.discovered |= set(sorted(found - set(self.queues))[:room])
            update_queue_metrics(self.client, self.polled_queues(), self.metrics)
            if self._broker_down:
                logger.info("metrics: broker reachable again")
            self._broker_down = False
        except redis.RedisError as exc:
            if not self._broker_down:  # one line per outage, not one per poll
                logger.warning("metrics: cannot read queue depth from the broker (keeping last values): %s", exc)
            self._broker_down = True
        samples = self.gpu.sample()
        if samples:
            self.metrics.set_gpu_samples(samples)

    def run(self, interval_s: float, stop: threading.Event) -> None:
        while not stop.is_set():
            self.poll_once()
            stop.wait(interval_s)

    def close(self) -> None:
        self.gpu.close()
        self.client.close()


def run_telemetry(settings: Settings | None = None, stop: threading.Event | None = None) -> int:
    """Serve the endpoint, check readiness and poll queue depth + GPU until stopped.

    Dramatiq's CLI calls fork functions without arguments, so the settings are the ones
    ``prepare_multiprocess_dir`` saw in the parent (inherited through fork) or, when the process was spawned,
    loaded from the environment. Dramatiq stops fork processes with SIGTERM, which raises ``SystemExit`` here;
    the ``finally`` then removes this process's live gauges.
    """
    settings = settings or fork_settings() or load()
    ensure_multiprocess_dir(settings)
    stop = stop or threading.Event()
    metrics = get_metrics()
    metrics.build_info.labels(version=build_version()).set(1)
    checker = ReadinessChecker(redis_check(settings.redis_url), storage_check(settings), metrics)
    checker.start(stop, READINESS_INTERVAL_S)
    server = start_http_server(settings, readiness=checker.current)
    loop = TelemetryLoop(
        redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5),
        [settings.queue, settings.webhook_queue],
        metrics,
    )
    try:
        loop.run(settings.queue_depth_interval_s, stop)
    finally:
        stop.set()
        loop.close()
        if server is not None:
            server.close()
        mark_process_dead()
    return 0
