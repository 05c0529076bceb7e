"""Runtime telemetry: NVML (worker/gpu.py, published by worker.telemetry), multiprocess metrics, queue depth from
a real Redis, and the Dramatiq wiring end to end (real `dramatiq` CLI, real worker processes, one HTTP endpoint).

Tests that change prometheus_client's multiprocess state run in subprocesses, so this process stays in the
ordinary single-process mode the other test files expect.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from services import RedisServer, ServiceMissing, free_port, service_missing

from worker.gpu import GpuCollector, GpuSample
from worker.telemetry import RenderMetrics

ROOT = Path(__file__).resolve().parents[1]


def _nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = frozenset((k, v) for k, v in s.labels.items() if k != "pid")
            out[(s.name, labels)] = s.value
    return out


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, /, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"}}
    env = {k: v for k, v in env.items() if not k.startswith("RENDER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


# --- NVML -----------------------------------------------------------------------------------------------------


@pytest.mark.skipif(_nvml_works(), reason="this host has a working NVML; the no-GPU path cannot be observed")
def test_no_gpu_means_no_samples_no_exception_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="worker.gpu")
    collector = GpuCollector()
    registry = CollectorRegistry()
    metrics = RenderMetrics(registry)
    for _ in range(5):
        assert collector.sample() == []
        metrics.set_gpu_samples(collector.sample())  # what the telemetry loop does with an empty list
    assert not collector.enabled
    records = [r for r in caplog.records if r.name == "worker.gpu"]
    assert len(records) <= 1
    assert all(r.levelno == logging.DEBUG for r in records)
    collector.close()
    assert not [line for line in generate_latest(registry).splitlines() if line.startswith(b"render_gpu_")]


class FakeNvml:
    """pynvml's function names over two fake GPUs; GPU 1 is a data-centre part without NVENC/NVDEC."""

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported

    def __init__(self, count: int = 2, init_error: Exception | None = None) -> None:
        self.count = count
        self.init_error = init_error
        self.init_calls = 0
        self.shutdown_calls = 0

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, h: int) -> bytes | str:
        return b"NVIDIA L4" if h == 0 else "NVIDIA H100"

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=40 + h, memory=10)

    def _no_codec(self, h: int) -> None:
        if h == 1:
            raise pynvml.NVMLError_NotSupported()

    def nvmlDeviceGetEncoderUtilization(self, h: int) -> list[int]:
        self._no_codec(h)
        return [25, 167000]

    def nvmlDeviceGetDecoderUtilization(self, h: int) -> list[int]:
        self._no_codec(h)
        return [5, 167000]

    def nvmlDeviceGetEncoderStats(self, h: int) -> tuple[int, int, int]:
        self._no_codec(h)
        return (3, 240, 900)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(used=2 << 30, total=24 << 30, free=22 << 30)


def test_samples_and_unsupported_fields_are_absent_not_zero() -> None:
    nvml = FakeNvml()
    collector = GpuCollector(nvml)
    samples = collector.sample()
    assert samples == [
        GpuSample(0, "NVIDIA L4", 0.40, 0.25, 0.05, 3, 240.0, 2 << 30, 24 << 30),
        GpuSample(1, "NVIDIA H100", 0.41, None, None, None, None, 2 << 30, 24 << 30),
    ]
    collector.sample()
    assert nvml.init_calls == 1  # initialised once, lazily

    registry = CollectorRegistry()
    RenderMetrics(registry).set_gpu_samples(collector.sample())
    s = _samples(generate_latest(registry).decode())
    assert _value(s, "render_gpu_encoder_sessions", gpu="0", name="NVIDIA L4") == 3
    assert _value(s, "render_gpu_encoder_utilization_ratio", gpu="0", name="NVIDIA L4") == 0.25
    assert _value(s, "render_gpu_utilization_ratio", gpu="1", name="NVIDIA H100") == 0.41
    assert _value(s, "render_gpu_memory_total_bytes", gpu="1", name="NVIDIA H100") == 24 << 30
    h100 = frozenset({("gpu", "1"), ("name", "NVIDIA H100")})
    for name in ("render_gpu_encoder_sessions", "render_gpu_encoder_fps", "render_gpu_encoder_utilization_ratio"):
        assert (name, h100) not in s
    collector.close()
    assert nvml.shutdown_calls == 1


@pytest.mark.parametrize("count, error", [(0, None), (1, pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED))])
def test_unusable_nvml_disables_after_one_debug_line(
    caplog: pytest.LogCaptureFixture, count: int, error: Exception | None
) -> None:
    caplog.set_level(logging.DEBUG, logger="worker.gpu")
    nvml = FakeNvml(count=count, init_error=error)
    collector = GpuCollector(nvml)
    for _ in range(3):
        assert collector.sample() == []
    assert nvml.init_calls == 1
    records = [r for r in caplog.records if r.name == "worker.gpu"]
    assert [r.levelno for r in records] == [logging.DEBUG]


# --- multiprocess mode ------------------------------------------------------------------------------------------

CHILD = r"""
import sys
from worker import telemetry as metrics
n = int(sys.argv[1])
for _ in range(n):
    metrics.observe_job("completed", "mp4", "cpu", 10.0, output_s=20.0)
metrics.observe_upload(1000 * n, 1.0)
metrics.get_metrics().worker_processes.set(1)
metrics.set_nvenc_available(n == 2)
with metrics.track_in_progress("cpu"):
    pass
metrics.InProgress(metrics.get_metrics().in_progress, "nvenc")  # a render still in flight when the process dies
print(__import__("os").getpid(), flush=True)
__import__("os")._exit(0)
"""


def test_two_processes_make_one_coherent_scrape(tmp_path: Path) -> None:
    from prometheus_client import multiprocess

    env = _clean_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    pids = []
    for n in (3, 2):
        proc = subprocess.run([sys.executable, "-c", CHILD, str(n)], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        pids.append(int(proc.stdout.strip()))

    def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
        return _samples(generate_latest(registry).decode())

    s = scrape()
    assert _value(s, "render_jobs_total", outcome="completed", format="mp4", encoder="cpu") == 5
    assert _value(s, "render_job_duration_seconds_count", format="mp4") == 5
    assert _value(s, "render_output_seconds_total", format="mp4") == 100
    assert _value(s, "render_upload_bytes_total") == 5000
    assert _value(s, "render_worker_processes") == 2  # livesum
    assert _value(s, "render_jobs_in_progress", encoder="cpu") == 0
    assert _value(s, "render_jobs_in_progress", encoder="nvenc") == 2
    assert _value(s, "render_nvenc_available") == 1  # livemax

    # The second process (the one with NVENC) exits: its live gauges go, its counters stay.
    env_dead = dict(env)
    code = f"from worker import telemetry as metrics; metrics.mark_process_dead({pids[1]})"
    subprocess.run([sys.executable, "-c", code], env=env_dead, check=True)
    s = scrape()
    assert _value(s, "render_worker_processes") == 1
    assert _value(s, "render_jobs_in_progress", encoder="nvenc") == 1
    assert _value(s, "render_nvenc_available") == 0
    assert _value(s, "render_jobs_total", outcome="completed", format="mp4", encoder="cpu") == 5


PREPARE = r"""
import os, sys
from pathlib import Path
from prometheus_client import values
from worker import telemetry as metrics
from worker.settings import Settings
metrics.observe_webhook("delivered")          # created before the switch: in-memory, single-process
assert values.ValueClass is values.MutexValue
path = metrics.prepare_multiprocess_dir(Settings(metrics_dir=sys.argv[1]))
assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == sys.argv[1] == str(path)
assert not (path / "counter_1.db").exists(), "stale files are removed"
assert (path / "keep.txt").exists(), "only *.db files are removed"
metrics.observe_webhook("retry")               # after the switch: written to the shared files
assert list(path.glob("counter_*.db")), list(path.iterdir())
tmp = metrics.prepare_multiprocess_dir(Settings())  # empty RENDER_METRICS_DIR: a fresh temp dir
assert tmp.is_dir() and tmp != path
print(tmp)
"""


def test_prepare_multiprocess_dir_switches_mode_and_cleans(tmp_path: Path) -> None:
    (tmp_path / "counter_1.db").write_bytes(b"stale")
    (tmp_path / "keep.txt").write_text("operator file")
    proc = subprocess.run(
        [sys.executable, "-c", PREPARE, str(tmp_path)], env=_clean_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert not Path(proc.stdout.strip()).exists(), "the temp dir is removed when its creator exits"


OBSERVER = r"""
import logging, sys, time
import dramatiq
from dramatiq.brokers.stub import StubBroker
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from worker import telemetry as metrics
from worker.settings import Settings

critical = []
class Catch(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.ERROR and "Unexpected failure" in record.getMessage():
            critical.append(record.getMessage())
logging.getLogger().addHandler(Catch())

settings = Settings(metrics_dir=sys.argv[1], nvenc="auto", nvenc_probe_timeout_s=10)
metrics.prepare_multiprocess_dir(settings)

# A producer: middleware installed, process_boot never emitted. Hooks must stay quiet.
producer = StubBroker()
metrics.install(producer, settings)
producer.declare_queue("render")
producer.enqueue(dramatiq.Message(queue_name="render", actor_name="x", args=(), kwargs={}, options={"retries": 1}))

broker = StubBroker()
metrics.install(broker, settings)
dramatiq.set_broker(broker)
broker.emit_after("process_boot")
observer = metrics.PipelineObserver()

@dramatiq.actor(queue_name="render", max_retries=0)
def render(mode):
    observer.started("mp4")
    if mode != "before":
        observer.encoding("cpu")
    if mode == "complete":
        observer.uploaded(1000, 0.5)
        observer.finished("completed", "mp4", "cpu", 3.0, 6.0, 9.0)
    elif mode in ("fail", "before"):
        observer.failed("encode_failed" if mode == "fail" else "source_not_found", "mp4")
    else:
        raise RuntimeError("transient: the pipeline raised without telling the observer")

for mode in ("complete", "fail", "raise", "before"):
    render.send(mode)
worker = dramatiq.Worker(broker, worker_threads=2)
worker.start()
broker.join("render", fail_fast=False)
worker.join()

def scrape():
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=sys.argv[1])
    return generate_latest(registry).decode()

deadline = time.monotonic() + 30
while "render_nvenc_available" not in scrape() and time.monotonic() < deadline:
    time.sleep(0.1)
sys.stdout.write(scrape())
worker.stop()
assert not critical, critical
"""


def test_pipeline_observer_and_middleware_keep_in_progress_honest(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", OBSERVER, str(tmp_path)], env=_clean_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    s = _samples(proc.stdout)
    # The delivery that raised never told the observer; the middleware still closed its in-progress entry.
    assert _value(s, "render_jobs_in_progress", encoder="cpu") == 0
    assert _value(s, "render_jobs_in_progress", encoder="nvenc") == 0
    assert _value(s, "render_jobs_total", outcome="completed", format="mp4", encoder="cpu") == 1
    assert _value(s, "render_jobs_total", outcome="failed", format="mp4", encoder="cpu") == 1
    # Failed before any encode started (a missing source): "none", the README's meaning, never a guessed encoder.
    assert _value(s, "render_jobs_total", outcome="failed", format="mp4", encoder="none") == 1
    assert _value(s, "render_jobs_in_progress", encoder="none") == 0
    assert _value(s, "render_failures_total", code="encode_failed") == 1
    assert _value(s, "render_upload_bytes_total") == 1000
    assert _value(s, "render_realtime_factor_count", format="mp4", encoder="cpu") == 1
    assert _value(s, "dramatiq_messages_total", queue_name="render", actor_name="render") == 4
    assert _value(s, "dramatiq_message_errors_total", queue_name="render", actor_name="render") == 1
    # NVENC was probed at boot, in the background, with the render path's own (cached) probe.
    nvenc = _value(s, "render_nvenc_available")
    assert nvenc in (0, 1)
    if not _nvml_works():
        assert nvenc == 0


# --- a real redis-server ----------------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> Iterator[str]:
    """This test's own redis-server on a free port (skipped locally without the binary, failed under CI)."""
    try:
        server = RedisServer()
    except ServiceMissing as exc:
        service_missing(str(exc))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.mark.services
def test_read_queue_depths_against_a_real_dramatiq_broker(redis_url: str) -> None:
    import dramatiq
    import redis
    from dramatiq.brokers.redis import RedisBroker

    from worker.telemetry import read_queue_depths, update_queue_metrics

    broker = RedisBroker(url=redis_url)

    @dramatiq.actor(broker=broker, queue_name="render", actor_name="render_job")
    def render_job(n: int) -> None:
        raise AssertionError("never run")

    # Dead-letter one message through the broker's own consume/nack path.
    render_job.send(0)
    consumer = broker.consume("render", prefetch=1, timeout=100)
    doomed = next(m for m in consumer if m is not None)
    consumer.nack(doomed)
    consumer.close()

    sent_at = time.time()
    render_job.send(1)
    render_job.send_with_options(args=(2,), delay=60_000)

    client = redis.Redis.from_url(redis_url)
    depths = read_queue_depths(client, ["render", "idle"], now=sent_at + 5)
    assert (depths["render"].ready, depths["render"].delayed, depths["render"].dead) == (1, 1, 1)
    assert 4.0 <= depths["render"].oldest_age_s <= 6.0
    assert depths["idle"].ready == depths["idle"].delayed == depths["idle"].dead == 0
    assert depths["idle"].oldest_age_s == 0.0

    registry = CollectorRegistry()
    update_queue_metrics(client, ["render"], RenderMetrics(registry))
    s = _samples(generate_latest(registry).decode())
    assert _value(s, "render_queue_depth", queue="render", state="ready") == 1
    assert _value(s, "render_queue_depth", queue="render", state="delayed") == 1
    assert _value(s, "render_queue_depth", queue="render", state="dead") == 1
    assert 0 <= _value(s, "render_queue_oldest_age_seconds", queue="render") < 30
    broker.close()
    client.close()


# --- end to end: dramatiq CLI, two worker processes, one endpoint --------------------------------------------------

BROKER_MODULE = """
import dramatiq
from dramatiq.brokers.redis import RedisBroker
from worker import telemetry as metrics
from worker.settings import load

settings = load()
broker = RedisBroker(url=settings.redis_url)
metrics.install(broker, settings)
dramatiq.set_broker(broker)

@dramatiq.actor(queue_name=settings.queue, actor_name="render_job", max_retries=0)
def render_job(n):
    with metrics.track_in_progress("cpu"):
        metrics.observe_job("completed", "mp4", "cpu", 2.0, output_s=4.0, source_s=5.0)
"""

LAUNCHER = """
import sys
from worker import telemetry as metrics
from worker.settings import load
metrics.prepare_multiprocess_dir(load())   # what `render-worker` does before Dramatiq forks
from dramatiq.cli import main
sys.argv = ["dramatiq", *sys.argv[1:]]
sys.exit(main())
"""


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.services
@pytest.mark.slow
def test_dramatiq_cli_serves_everything_on_one_port(redis_url: str, s3_server: Any, tmp_path: Path) -> None:
    import dramatiq
    import redis
    from dramatiq.brokers.redis import RedisBroker

    (tmp_path / "e2e_broker.py").write_text(BROKER_MODULE)
    (tmp_path / "launch.py").write_text(LAUNCHER)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale from a previous run")
    port = free_port()
    env = _clean_env(
        RENDER_REDIS_URL=redis_url,
        RENDER_METRICS_PORT=str(port),
        RENDER_METRICS_HOST="127.0.0.1",
        RENDER_METRICS_DIR=str(metrics_dir),
        RENDER_QUEUE_DEPTH_INTERVAL_S="0.2",
        # /readyz also needs the output bucket to answer
        RENDER_S3_ENDPOINT_URL=s3_server.endpoint_url,
        RENDER_OUTPUT_BUCKET=s3_server.create_bucket(),
        AWS_ACCESS_KEY_ID=s3_server.access_key,
        AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
        AWS_DEFAULT_REGION=s3_server.region,
        dramatiq_prom_port=str(free_port()),  # were Dramatiq's own server started, it would show up here
    )

    # Three jobs for the worker, two on the webhook queue nobody consumes here.
    producer = RedisBroker(url=redis_url)
    for n in range(3):
        producer.enqueue(
            dramatiq.Message(queue_name="render", actor_name="render_job", args=(n,), kwargs={}, options={})
        )
    for n in range(2):
        producer.enqueue(
            dramatiq.Message(queue_name="render-webhooks", actor_name="deliver", args=(n,), kwargs={}, options={})
        )
    producer.close()

    proc = subprocess.Popen(
        [sys.executable, "launch.py", "e2e_broker", "--processes", "2", "--threads", "1", "--path", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        s: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                status, body = _get(base + "/metrics")
                if status == 200:
                    s = _samples(body)
                    if _converged(s):
                        break
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        else:
            pytest.fail(f"metrics never converged: {sorted(k[0] for k in s)}")

        assert _value(s, "dramatiq_messages_total", queue_name="render", actor_name="render_job") == 3
        assert _value(s, "render_output_seconds_total", format="mp4") == 12
        assert _value(s, "render_queue_depth", queue="render-webhooks", state="ready") == 2
        assert _value(s, "render_queue_oldest_age_seconds", queue="render-webhooks") > 0
        assert _value(s, "render_build_info", version=_version()) == 1
        assert not [k for k in s if k[0].startswith("render_gpu_")] or _nvml_works()
        assert _get(base + "/healthz")[0] == 200
        assert _wait_ready(base + "/readyz")
        assert _value(s, "render_queue_consumers", queue="render") == 2  # both worker processes consume it
        # No actor here consumes the webhook queue: its ready jobs have no consumer series (RenderNoWorkerConsuming).
        assert not [k for k in s if k[0] == "render_queue_consumers" and ("queue", "render-webhooks") in k[1]]
        with pytest.raises(OSError):  # Dramatiq's own exposition server was not started
            urllib.request.urlopen(f"http://127.0.0.1:{env['dramatiq_prom_port']}/", timeout=2)
        assert not (metrics_dir / "counter_999999.db").exists(), "stale files of an earlier run are removed"
        client = redis.Redis.from_url(redis_url)
        assert client.llen("dramatiq:render") == 0
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    # Worker processes and the telemetry process removed their live gauges on the way out.
    assert not list(metrics_dir.glob("gauge_live*.db")), textwrap.shorten(str(list(metrics_dir.iterdir())), 500)


def _wait_ready(url: str, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _get(url)[0] == 200:
            return True
        time.sleep(0.2)
    return False


def _converged(s: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> bool:
    completed = frozenset({("outcome", "completed"), ("format", "mp4"), ("encoder", "cpu")})
    ready = frozenset({("queue", "render"), ("state", "ready")})
    return (
        s.get(("render_jobs_total", completed)) == 3
        and s.get(("render_worker_processes", frozenset())) == 2
        and s.get(("render_queue_depth", ready)) == 0
    )


def _version() -> str:
    from worker.telemetry import build_version

    return build_version()


@pytest.mark.services
def test_telemetry_loop_reports_queues_nobody_consumes_and_gpu_samples(redis_url: str) -> None:
    """Jobs sent to a queue no worker is configured for (a RENDER_QUEUE typo) still show up in queue depth."""
    import redis

    from worker.telemetry import TelemetryLoop

    client = redis.Redis.from_url(redis_url)
    client.rpush("dramatiq:renders-typo", "a", "b")
    client.rpush("dramatiq:render.DQ", "c")  # a delay list names its queue, which is one of ours anyway
    client.sadd("dramatiq:__acks__.w1.render", "d")  # broker bookkeeping is not a queue
    registry = CollectorRegistry()
    loop = TelemetryLoop(client, ["render", "render-webhooks"], RenderMetrics(registry), gpu=GpuCollector(FakeNvml()))
    loop.poll_once()
    assert loop.polled_queues() == ["render", "render-webhooks", "renders-typo"]
    s = _samples(generate_latest(registry).decode())
    assert _value(s, "render_queue_depth", queue="renders-typo", state="ready") == 2
    assert _value(s, "render_queue_depth", queue="render", state="ready") == 0
    # The loop publishes what worker.gpu sampled (gpu.py itself knows nothing of Prometheus).
    assert _value(s, "render_gpu_encoder_sessions", gpu="0", name="NVIDIA L4") == 3
    loop.close()


def test_gpu_sampler_knows_nothing_of_prometheus() -> None:
    """No gpu.py <-> metrics import cycle: the sampler imports neither prometheus_client nor the telemetry package."""
    import ast

    tree = ast.parse((ROOT / "worker" / "gpu.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported, "no imports found: the check would pass vacuously"
    assert not {m for m in imported if m.startswith(("prometheus_client", "worker.telemetry", "worker.metrics"))}
