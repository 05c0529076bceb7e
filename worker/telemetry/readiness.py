"""``/readyz``: is this host able to take jobs? Redis and the output bucket are checked in the background.

The checks run in a thread of the telemetry process every :data:`READINESS_INTERVAL_S`, each bounded by
:data:`READINESS_TIMEOUT_S`; ``/readyz`` only reads the cached result, so a slow Redis or object store can never make
the probe itself time out, and a kubelet probing every few seconds costs the store one cheap call per interval.
A result older than :data:`READINESS_MAX_AGE_S` (the checking thread is stuck) counts as not ready.

The same results are exported as ``render_redis_up`` and ``render_storage_up``: while Redis is down the queue gauges
keep their last values (they are not turned into NaN, which would silence every alert comparing them), and
``render_redis_up 0`` is what RenderRedisUnreachable fires on.

These are constants, not ``RENDER_*`` settings: the probe periods in deploy/k8s are tuned to them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from worker.settings import Settings
from worker.telemetry.definitions import RenderMetrics, get_metrics

logger = logging.getLogger(__name__)

READINESS_INTERVAL_S = 5.0  # how often Redis and the output bucket are checked
READINESS_TIMEOUT_S = 2.0  # connect/read limit of one check
READINESS_MAX_AGE_S = 3 * READINESS_INTERVAL_S + 2 * READINESS_TIMEOUT_S  # older results mean "not ready"

Check = Callable[[], None]  # raises when the dependency is unreachable


@dataclass(frozen=True)
class Readiness:
    redis_ok: bool
    storage_ok: bool
    checked_at: float  # time.monotonic() of the check
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.redis_ok and self.storage_ok


def redis_check(url: str, timeout_s: float = READINESS_TIMEOUT_S) -> Check:
    """PING the broker and record store, with its own short-timeout client (not the queue poller's)."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def check() -> None:
        client.ping()

    return check


def storage_check(settings: Settings, timeout_s: float = READINESS_TIMEOUT_S, *, session: Any = None) -> Check:
    """HEAD the output bucket once: the cheapest call that proves the store answers for the bucket we write to.

    A 403 counts as reachable: the store answered, and a worker's policy may allow writing objects but not
    ``s3:ListBucket`` (which HeadBucket needs); real permission errors surface on upload. A missing bucket (404),
    a connection error, a timeout or missing credentials count as unreachable. ``session``: a boto3 session (tests);
    by default the standard ``AWS_*`` credentials chain.
    """
    client: Any = None

    def check() -> None:
        nonlocal client
        import botocore.exceptions

        from worker.storage.s3 import build_client

        if client is None:
            client = build_client(
                settings, session=session, botocore_attempts=1, connect_timeout_s=timeout_s, read_timeout_s=timeout_s
            )
        try:
            client.head_bucket(Bucket=settings.output_bucket)
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status != 403:
                raise

    return check


class ReadinessChecker:
    """Runs the checks, keeps the latest result, and exports it as ``render_redis_up`` / ``render_storage_up``."""

    def __init__(
        self,
        check_redis: Check,
        check_storage: Check,
        metrics: RenderMetrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_age_s: float = READINESS_MAX_AGE_S,
    ) -> None:
        self._checks = {"redis": check_redis, "storage": check_storage}
        self._metrics = metrics
        self._clock = clock
        self._max_age_s = max_age_s
        self._latest: Readiness | None = None
        self._logged: dict[str, bool] = {}

    def check_now(self) -> Readiness:
        ok: dict[str, bool] = {}
        problems = []
        for name, check in self._checks.items():
            try:
                check()
                ok[name] = True
            except Exception as exc:  # noqa: BLE001 - any failure means "not reachable", never a crash
                ok[name] = False
                problems.append(f"{name} unreachable: {type(exc).__name__}: {exc}"[:300])
            if self._logged.get(name, True) != ok[name]:  # one line per change, not one per check
                if ok[name]:
                    logger.info("readiness: %s reachable", name)
                else:
                    logger.warning("readiness: %s", problems[-1])
            self._logged[name] = ok[name]
        result = Readiness(ok["redis"], ok["storage"], self._clock(), tuple(problems))
        self._latest = result
        (self._metrics or get_metrics()).set_reachable(redis_ok=result.redis_ok, storage_ok=result.storage_ok)
        return result

    def current(self) -> Readiness | None:
        """The latest result, or None when there is none yet or it is too old to trust."""
        latest = self._latest
        if latest is None or self._clock() - latest.checked_at > self._max_age_s:
            return None
        return latest

    def run(self, interval_s: float, stop: threading.Event) -> None:
        while not stop.is_set():
            self.check_now()
            stop.wait(interval_s)

    def start(self, stop: threading.Event, interval_s: float = READINESS_INTERVAL_S) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(interval_s, stop), name="readiness", daemon=True)
        thread.start()
        return thread
