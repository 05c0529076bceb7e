"""/readyz and the reachability gauges against real services: a redis-server stopped mid-test, and S3.

The telemetry process runs as in production (``run_telemetry`` in its own process, multiprocess mode, settings from
the environment); only its readiness interval is shortened so that the test waits seconds, not tens of seconds.
The Redis server is this test's own, so stopping it cannot disturb other tests sharing the session's server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from services import RedisServer, S3Server, ServiceMissing, free_port, service_missing

from worker.telemetry import ReadinessChecker, RenderMetrics, redis_check, storage_check

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[1]

TELEMETRY = r"""
import signal, sys
from worker import telemetry
from worker.telemetry import process
from worker.settings import load

process.READINESS_INTERVAL_S = 0.3   # the test's patience, not production's (5 s)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as Dramatiq's fork processes do: SystemExit, then cleanup
settings = load()
telemetry.prepare_multiprocess_dir(settings)
telemetry.get_metrics().worker_processes.set(1)  # stands in for a booted worker process on this host
sys.exit(process.run_telemetry(settings))
"""


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body = _get(url)[1]
    return {
        (s.name, frozenset((k, v) for k, v in s.labels.items() if k != "pid")): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


def _wait(predicate: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            got = predicate()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def own_redis() -> Any:
    try:
        server = RedisServer()
    except ServiceMissing as exc:
        service_missing(str(exc))
    server.start()
    yield server
    server.stop()


def _restart_on_same_port(server: RedisServer, workdir: Path) -> subprocess.Popen[bytes]:
    argv = [server.binary, "--port", str(server.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=server.port)
    _wait(lambda: client.ping(), "redis-server to come back")
    client.close()
    return proc


def test_readyz_fails_while_redis_is_down_and_queue_gauges_keep_their_values(
    own_redis: RedisServer, s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.create_bucket()
    client = redis.Redis.from_url(own_redis.url)
    client.rpush("dramatiq:render", "a", "b")  # two ready jobs (ids only: no bodies, so no age)
    client.close()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RENDER_", "AWS_", "PROMETHEUS_MULTIPROC"))}
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        RENDER_REDIS_URL=own_redis.url,
        RENDER_S3_ENDPOINT_URL=s3_server.endpoint_url,
        RENDER_OUTPUT_BUCKET=bucket,
        RENDER_METRICS_PORT=str(port),
        RENDER_METRICS_HOST="127.0.0.1",
        RENDER_METRICS_DIR=str(tmp_path / "metrics"),
        RENDER_QUEUE_DEPTH_INTERVAL_S="0.3",
        AWS_ACCESS_KEY_ID=s3_server.access_key,
        AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
        AWS_DEFAULT_REGION=s3_server.region,
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", TELEMETRY], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    ready = ("render_queue_depth", frozenset({("queue", "render"), ("state", "ready")}))
    up = ("render_redis_up", frozenset())
    restarted: subprocess.Popen[bytes] | None = None
    try:
        _wait(lambda: _get(base + "/readyz")[0] == 200, "/readyz 200 with Redis and the bucket reachable")
        s = _wait(lambda: (lambda s: s if s.get(ready) == 2 else None)(_scrape(base + "/metrics")), "queue depth 2")
        assert s[up] == 1 and s[("render_storage_up", frozenset())] == 1

        own_redis.stop()  # Redis goes away mid-test
        status, body = _wait(lambda: (lambda r: r if r[0] == 503 else None)(_get(base + "/readyz")), "/readyz 503")
        assert "redis unreachable" in body and "storage" not in body
        s = _wait(lambda: (lambda s: s if s.get(up) == 0 else None)(_scrape(base + "/metrics")), "redis_up 0")
        time.sleep(1.0)  # several failed queue polls later...
        s = _scrape(base + "/metrics")
        assert s[ready] == 2, "queue gauges keep their last value (a NaN would silence every queue alert)"
        assert _get(base + "/healthz")[0] == 200  # the process lives on: not a liveness failure

        restarted = _restart_on_same_port(own_redis, tmp_path)
        _wait(lambda: _get(base + "/readyz")[0] == 200, "/readyz 200 again once Redis is back")
        assert _scrape(base + "/metrics")[up] == 1
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
        if restarted is not None:
            restarted.terminate()
            restarted.wait(10)
    assert proc.returncode == 0, out
    assert "redis unreachable" in out  # one warning for the outage...
    assert out.count("readiness: redis unreachable") == 1  # ...not one per check


def test_storage_check_needs_the_output_bucket_to_answer(s3_server: S3Server) -> None:
    bucket = s3_server.create_bucket()
    session = s3_server.session()

    def checker(**overrides: Any) -> tuple[ReadinessChecker, CollectorRegistry]:
        registry = CollectorRegistry()
        settings = s3_server.settings(**overrides)
        check = ReadinessChecker(lambda: None, storage_check(settings, session=session), RenderMetrics(registry))
        return check, registry

    ok, registry = checker(output_bucket=bucket)
    assert ok.check_now().ok and ok.current() is not None
    assert b"render_storage_up 1.0" in generate_latest(registry)

    missing, _ = checker(output_bucket=bucket + "-missing")
    result = missing.check_now()
    assert not result.ok and result.redis_ok and "storage unreachable" in result.problems[0]

    closed, registry = checker(output_bucket=bucket, s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    result = closed.check_now()
    assert not result.storage_ok
    assert b"render_storage_up 0.0" in generate_latest(registry)


def test_a_stale_readiness_result_is_not_ready() -> None:
    now = [100.0]
    checker = ReadinessChecker(lambda: None, lambda: None, RenderMetrics(CollectorRegistry()), clock=lambda: now[0])
    assert checker.current() is None  # never checked: not ready
    assert checker.check_now().ok
    assert checker.current() is not None
    now[0] += 60  # the checking thread got stuck: its last word is too old to trust
    assert checker.current() is None


def test_redis_check_against_a_closed_port() -> None:
    check = redis_check(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    with pytest.raises(redis.ConnectionError):
        check()
