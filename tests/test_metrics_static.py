"""Every metric that a dashboard panel, alert rule or KEDA query in deploy/ names must exist in a real scrape.

The scrape comes from a subprocess in prometheus_client multiprocess mode – the way the worker runs – that installs
the real middleware on a Dramatiq broker, processes real messages through a Dramatiq worker (so Dramatiq's own
``dramatiq_*`` metrics come from Dramatiq's code, not from a copied list), calls every ``render_*`` helper once, and
fetches ``/metrics`` over HTTP from :class:`worker.telemetry.MetricsServer`. A subprocess keeps the environment
variable and prometheus_client's value class out of the test process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from services import service_missing

try:  # `python -m pytest` from the repository root, or tests/ as a package
    from tests.promql import ROOT, RULE_FILES, SYNTHETIC, all_exprs, dashboard_and_rule_exprs, promql_metric_names
except ImportError:  # plain `pytest` with rootdir-relative imports
    from promql import ROOT, RULE_FILES, SYNTHETIC, all_exprs, dashboard_and_rule_exprs, promql_metric_names

SCRAPE_SCRIPT = r"""
import sys, urllib.request
import dramatiq
from dramatiq.brokers.stub import StubBroker
from worker import telemetry as metrics
from worker.gpu import GpuSample
from worker.settings import Settings

settings = Settings(metrics_dir=sys.argv[1], metrics_host="127.0.0.1", metrics_port=0)
metrics.prepare_multiprocess_dir(settings)
broker = StubBroker()
metrics.install(broker, settings)
dramatiq.set_broker(broker)
broker.emit_after("process_boot")

@dramatiq.actor(queue_name="render", max_retries=1, min_backoff=1, max_backoff=10)
def render(fail):
    with metrics.track_in_progress("nvenc") as job:
        job.switch("cpu")
        if fail:
            raise RuntimeError("boom")
    metrics.observe_job("completed", "mp4", "cpu", 12.0, output_s=30.0, source_s=40.0)

@dramatiq.actor(queue_name="render-webhooks", actor_name="deliver_webhook")
def deliver_webhook():  # declared, never sent: its Dramatiq counters must still be there, at 0
    pass

render.send(False)
render.send(True)  # fails, is retried once through the delay queue, then dead-lettered
worker = dramatiq.Worker(broker, worker_threads=1)
worker.start()
broker.join("render", fail_fast=False)
worker.join()

m = metrics.get_metrics()
metrics.observe_job("failed", "mov", "none", 0.5)
metrics.observe_failure("encode_failed")
metrics.observe_upload(1_000_000, 2.5)
metrics.observe_frames("mp4", 900, 100)
metrics.observe_webhook("delivered")
metrics.set_nvenc_available(True)
m.set_queue_depths({"render": metrics.QueueDepth(ready=3, delayed=1, dead=2, oldest_age_s=42.0)})
m.build_info.labels(version=metrics.build_version()).set(1)
m.set_reachable(redis_ok=True, storage_ok=True)
m.set_gpu_samples([GpuSample(0, "NVIDIA L4", 0.5, 0.25, 0.1, 2, 120.0, 1 << 30, 24 << 30)])

server = metrics.MetricsServer(metrics.make_registry(), "127.0.0.1", 0)
body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10).read()
server.close()
worker.stop()  # after the scrape: shutdown marks this process dead, which removes its live gauges
sys.stdout.write(body.decode())
"""

# The render_* contract (DESIGN.md, Metrics): names, kinds and label sets.
EXPECTED_RENDER = {
    "render_jobs_total": ("counter", {"outcome", "format", "encoder"}),
    "render_failures_total": ("counter", {"code"}),
    "render_job_duration_seconds": ("histogram", {"format"}),
    "render_realtime_factor": ("histogram", {"format", "encoder"}),
    "render_jobs_in_progress": ("gauge", {"encoder"}),
    "render_source_seconds_total": ("counter", {"format"}),
    "render_output_seconds_total": ("counter", {"format"}),
    "render_video_frames_total": ("counter", {"format", "how"}),
    "render_upload_bytes_total": ("counter", set()),
    "render_upload_duration_seconds": ("histogram", set()),
    "render_webhook_deliveries_total": ("counter", {"outcome"}),
    "render_queue_depth": ("gauge", {"queue", "state"}),
    "render_queue_oldest_age_seconds": ("gauge", {"queue"}),
    "render_nvenc_available": ("gauge", set()),
    "render_worker_processes": ("gauge", set()),
    "render_build_info": ("gauge", {"version"}),
    "render_queue_consumers": ("gauge", {"queue"}),
    "render_redis_up": ("gauge", set()),
    "render_storage_up": ("gauge", set()),
    "render_gpu_utilization_ratio": ("gauge", {"gpu", "name"}),
    "render_gpu_encoder_utilization_ratio": ("gauge", {"gpu", "name"}),
    "render_gpu_decoder_utilization_ratio": ("gauge", {"gpu", "name"}),
    "render_gpu_encoder_sessions": ("gauge", {"gpu", "name"}),
    "render_gpu_encoder_fps": ("gauge", {"gpu", "name"}),
    "render_gpu_memory_used_bytes": ("gauge", {"gpu", "name"}),
    "render_gpu_memory_total_bytes": ("gauge", {"gpu", "name"}),
}
EXPECTED_DRAMATIQ = {
    "dramatiq_messages_total",
    "dramatiq_message_errors_total",
    "dramatiq_message_retries_total",
    "dramatiq_message_rejects_total",
    "dramatiq_messages_inprogress",
    "dramatiq_delayed_messages_inprogress",
    "dramatiq_message_duration_milliseconds_bucket",
}


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> str:
    metrics_dir = tmp_path_factory.mktemp("metrics")
    env = {k: v for k, v in os.environ.items() if k not in {"PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"}}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", SCRAPE_SCRIPT, str(metrics_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def families(scrape: str) -> dict[str, tuple[str, set[str], set[str]]]:
    """family name -> (type, sample names, label names)"""
    out = {}
    for fam in text_string_to_metric_families(scrape):
        labels = {k for s in fam.samples for k in s.labels if k not in {"le", "pid"}}
        out[fam.name] = (fam.type, {s.name for s in fam.samples}, labels)
    return out


@pytest.fixture(scope="module")
def scraped_names(families: dict[str, tuple[str, set[str], set[str]]]) -> set[str]:
    return set().union(*(samples for _, samples, _ in families.values()))


def test_extractor_handles_the_promql_we_write() -> None:
    cases = {
        'histogram_quantile(0.95, sum by (le, format) (rate(render_job_duration_seconds_bucket{a="b"}[1h])))': {
            "render_job_duration_seconds_bucket"
        },
        'max by (queue) (render_queue_depth{state="ready"}) > 0 unless on (queue) (label_replace(sum by '
        '(queue_name) (rate(dramatiq_messages_total[15m])) > 0, "queue", "$1", "queue_name", "(.*)"))': {
            "render_queue_depth",
            "dramatiq_messages_total",
        },
        "sum(rate(a_total[$__rate_interval])) / on (x) group_left (y) b_info offset 5m": {"a_total", "b_info"},
        "max by (instance) (x) == bool 0 and on (instance) count without (pid) (y) > 0": {"x", "y"},
        'up{job="render-worker"} @ 1609746000 or vector(0)': {"up"},
        '{__name__="render_jobs_total", outcome="failed"}': {"render_jobs_total"},
        'rate(x[5m:1m]) * 1e3 + sum(z{q=~"$queue"}) # trailing comment naming not_a_metric': {"x", "z"},
        "quantile_over_time(0.9, render_queue_oldest_age_seconds[1h])": {"render_queue_oldest_age_seconds"},
    }
    for expr, expected in cases.items():
        assert promql_metric_names(expr) == expected, expr


def test_deploy_has_expressions_to_check() -> None:
    exprs = dashboard_and_rule_exprs()
    assert len(exprs) >= 30
    assert all(isinstance(e, str) and e.strip() for e in exprs)


def test_scrape_has_the_render_contract(families: dict[str, tuple[str, set[str], set[str]]]) -> None:
    for name, (kind, labels) in EXPECTED_RENDER.items():
        family = name.removesuffix("_total") if kind == "counter" else name
        assert family in families, f"{name} missing from the scrape"
        got_kind, samples, got_labels = families[family]
        assert got_kind == kind, name
        assert got_labels == labels, name
        if kind == "counter":
            assert name in samples
    render_families = {n for n in families if n.startswith("render_")}
    contract = {n.removesuffix("_total") if k == "counter" else n for n, (k, _) in EXPECTED_RENDER.items()}
    assert render_families == contract, "an undocumented render_* metric appeared (or one went missing)"


def test_scrape_has_dramatiq_metrics_from_one_endpoint(scraped_names: set[str]) -> None:
    assert scraped_names >= EXPECTED_DRAMATIQ


@pytest.fixture(scope="module")
def values(scrape: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels without pid) -> value"""
    out = {}
    for fam in text_string_to_metric_families(scrape):
        for s in fam.samples:
            out[(s.name, frozenset((k, v) for k, v in s.labels.items() if k != "pid"))] = s.value
    return out


def _get(values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return values.get((name, frozenset(labels.items())))


def test_labelled_counters_start_at_zero_for_known_labels(
    values: dict[tuple[str, frozenset[tuple[str, str]]], float],
) -> None:
    """A panel of a counter that never moved must show 0, not "No data": every known label set is exported."""
    from worker.errors import ErrorCode
    from worker.telemetry import ENCODERS, FORMATS, JOB_OUTCOMES, WEBHOOK_OUTCOMES

    assert "cancelled" in JOB_OUTCOMES
    for outcome in JOB_OUTCOMES:
        for fmt in FORMATS:
            for encoder in ENCODERS:
                got = _get(values, "render_jobs_total", outcome=outcome, format=fmt, encoder=encoder)
                assert got is not None, (outcome, fmt, encoder)
    assert _get(values, "render_jobs_total", outcome="cancelled", format="mp4", encoder="cpu") == 0
    # Editor exports are jobs too, counted under their own format (encoder "none"), not lumped into "other".
    for fmt in ("xmeml", "fcpxml", "edl", "otio"):
        assert _get(values, "render_jobs_total", outcome="completed", format=fmt, encoder="none") == 0, fmt
    for code in ErrorCode:
        assert _get(values, "render_failures_total", code=code.value) is not None, code
    assert _get(values, "render_failures_total", code="timeout") == 0
    for outcome in WEBHOOK_OUTCOMES:
        assert _get(values, "render_webhook_deliveries_total", outcome=outcome) is not None, outcome
    # Dramatiq's own counters for an actor that never ran: present, at 0.
    for name in (
        "dramatiq_messages_total",
        "dramatiq_message_errors_total",
        "dramatiq_message_retries_total",
        "dramatiq_message_rejects_total",
    ):
        assert _get(values, name, queue_name="render-webhooks", actor_name="deliver_webhook") == 0, name
    # ...and the ones that did move still count what happened (the failing message was dead-lettered once).
    assert _get(values, "dramatiq_message_rejects_total", queue_name="render", actor_name="render") == 1


def test_a_cancel_is_finished_but_never_a_failure() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from worker.telemetry import RenderMetrics

    registry = CollectorRegistry()
    m = RenderMetrics(registry)
    m.initialize_series()
    m.observe_job("cancelled", "mp4", "cpu", 5.0)
    text = generate_latest(registry).decode()
    assert 'render_jobs_total{encoder="cpu",format="mp4",outcome="cancelled"} 1.0' in text
    failures = [line for line in text.splitlines() if line.startswith("render_failures_total{")]
    assert failures and all(line.endswith(" 0.0") for line in failures)
    assert "render_job_duration_seconds_count{" not in text  # durations are for completed renders only


def test_duration_buckets_reach_the_time_limit(values: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> None:
    from worker.settings import Settings

    limit = Settings().time_limit_s
    les = {dict(k[1]).get("le") for k in values if k[0] == "render_job_duration_seconds_bucket"}
    finite = sorted(float(le) for le in les if le not in (None, "+Inf"))
    assert "+Inf" in les
    assert finite[-1] >= limit, f"top duration bucket {finite[-1]} s is below RENDER_TIME_LIMIT_S {limit} s"


def test_worker_exports_the_queues_it_consumes(values: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> None:
    assert _get(values, "render_queue_consumers", queue="render") == 1
    assert _get(values, "render_queue_consumers", queue="render-webhooks") == 1
    assert not [k for k in values if k[0] == "render_queue_consumers" and dict(k[1])["queue"].endswith(".DQ")]


NVENC_SCRIPT = r"""
import sys, threading
from dramatiq.brokers.stub import StubBroker
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from worker import telemetry
from worker.settings import Settings

settings = Settings(metrics_dir=sys.argv[1], metrics_port=0, nvenc=sys.argv[2], nvenc_probe_timeout_s=20)
telemetry.prepare_multiprocess_dir(settings)
broker = StubBroker()
telemetry.install(broker, settings)
broker.emit_after("process_boot")
for t in threading.enumerate():
    if t.name == "nvenc-probe":
        t.join(60)  # the real probe, as a worker process runs it at boot
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry, path=sys.argv[1])
sys.stdout.write(generate_latest(registry).decode())
"""


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_nvenc_gauge_is_absent_when_nvenc_is_off(mode: str, tmp_path: Path) -> None:
    """RENDER_NVENC=off is a CPU host on purpose: no render_nvenc_available at all, so the GPU alert cannot fire."""
    env = {k: v for k, v in os.environ.items() if k not in {"PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"}}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", NVENC_SCRIPT, str(tmp_path), mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    names = {s.name for fam in text_string_to_metric_families(proc.stdout) for s in fam.samples}
    assert "render_worker_processes" in names  # the middleware did boot
    if mode == "off":
        assert "render_nvenc_available" not in names
    else:
        assert "render_nvenc_available" in names  # probed (0 or 1): a GPU host's answer is always there


def test_no_high_cardinality_labels(families: dict[str, tuple[str, set[str], set[str]]]) -> None:
    for name, (_, _, labels) in families.items():
        if name.startswith("render_"):
            assert not labels & {"render_id", "asset_id", "cut_id", "id", "url", "message_id"}, name


def test_every_deploy_metric_exists_in_a_scrape(scraped_names: set[str]) -> None:
    missing = []
    for where, expr in all_exprs():
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        missing += [f"{where}: {n}" for n in sorted(names - scraped_names - SYNTHETIC)]
    assert not missing, "metrics named in deploy/ but absent from a real scrape:\n" + "\n".join(missing)


def _promtool() -> str | None:
    path = shutil.which("promtool")
    if path is None:
        service_missing("promtool is not installed (Debian's prometheus package)")
    return path


def test_promtool_check_rules() -> None:
    promtool = _promtool()
    assert promtool is not None
    proc = subprocess.run([promtool, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests() -> None:
    promtool = _promtool()
    assert promtool is not None
    tests = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yml"))
    assert tests
    proc = subprocess.run(
        [promtool, "test", "rules", *(t.name for t in tests)], cwd=tests[0].parent, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_promtool_check_config() -> None:
    promtool = _promtool()
    assert promtool is not None
    config = Path(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    proc = subprocess.run([promtool, "check", "config", "--syntax-only", str(config)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
