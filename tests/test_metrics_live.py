"""A live scrape: a real 2-process worker renders real jobs, and /metrics says exactly what happened.

Then every metric name that a Grafana panel or an alert rule in deploy/ uses must
be in that same live scrape, so the dashboards cannot drift from what the worker
exports. The GPU series are the one exception on a machine without a GPU: they are
absent by design (not zeros), and are checked against the worker's own definitions.
"""

from __future__ import annotations

import json
import urllib.request
from collections import defaultdict

import pytest
from farm import farm, wait_for
from prometheus_client.parser import text_string_to_metric_families
from promql import SYNTHETIC, dashboard_and_rule_exprs, promql_metric_names
from services import free_port

pytestmark = pytest.mark.services


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[s.name].append((s.labels, s.value))
    return samples


def value(samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == want for k, want in labels.items()))


def test_live_scrape_reports_exactly_what_happened(redis_server, s3_server, webhook_receiver, media, tmp_path):
    port = free_port()
    with farm(redis_server, s3_server, tmp_path, metrics_port=port, queue_depth_interval_s=0.3) as f:
        f.start_worker(processes=2)
        webhook_receiver.respond(500)  # the first delivery fails once: one retry, through the delay queue
        wav = f.upload(media["audio_wav"])
        corrupt = f.upload(media["corrupt"])
        good = [
            f.enqueue(wav, "m4a", segments=[(1.0, 3.0 + i), (5.0, 6.5)], webhook=webhook_receiver) for i in range(3)
        ]
        good.append(f.enqueue(wav, "mp3", webhook=webhook_receiver))
        bad = f.enqueue(corrupt, "mp4", webhook=webhook_receiver)
        f.send({"version": 1, "garbage": True})  # no render id: can only be dead-lettered
        records = {rid: f.wait_record(rid, timeout_s=90) for rid in [*good, bad]}
        assert all(records[r]["state"] == "completed" for r in good)
        assert records[bad]["state"] == "failed" and records[bad]["error_code"] == "source_unreadable"
        wait_for(lambda: len(webhook_receiver.received) >= 6, 30, "five webhooks and one retried attempt")
        wait_for(lambda: len(f.dead()) == 1, 30, "the garbage message in the dead-letter queue")

        def settled():
            s = scrape(port)
            done = value(s, "render_jobs_total") == 5 and value(s, "render_webhook_deliveries_total") == 6
            dead = value(s, "render_queue_depth", queue=f.queue, state="dead") == 1
            # Queue depth is sampled every queue_depth_interval_s: wait for a sample
            # taken after the last message left the queues.
            idle = all(
                value(s, "render_queue_depth", queue=q, state=st) == 0
                for q in (f.queue, f.webhook_queue)
                for st in ("ready", "delayed")
            )
            return s if done and dead and idle else None

        s = wait_for(settled, 30, "the scrape to settle")
        # Redis and the bucket answer, worker processes booted: ready (checked while the workers still run)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200
        objects = f.objects()

    # jobs by outcome, format and encoder; failures by code
    assert value(s, "render_jobs_total", outcome="completed", format="m4a", encoder="cpu") == 3
    assert value(s, "render_jobs_total", outcome="completed", format="mp3", encoder="cpu") == 1
    assert value(s, "render_jobs_total", outcome="failed", format="mp4") == 1
    assert {lab["code"]: v for lab, v in s["render_failures_total"] if v} == {"source_unreadable": 1}
    # histograms: one observation per completed job, +Inf bucket equals the count
    for fmt, n in (("m4a", 3), ("mp3", 1)):
        assert value(s, "render_job_duration_seconds_count", format=fmt) == n
        assert value(s, "render_job_duration_seconds_bucket", format=fmt, le="+Inf") == n
        assert value(s, "render_job_duration_seconds_sum", format=fmt) > 0
        assert value(s, "render_realtime_factor_count", format=fmt, encoder="cpu") == n
    # media seconds: exactly the durations the records report
    out_m4a = sum(records[r]["duration_s"] for r in good[:3])
    assert value(s, "render_output_seconds_total", format="m4a") == pytest.approx(out_m4a, abs=1e-3)
    assert value(s, "render_output_seconds_total", format="mp3") == pytest.approx(records[good[3]]["duration_s"], 1e-3)
    assert value(s, "render_source_seconds_total", format="m4a") == pytest.approx(3 * 20.0, abs=0.1)
    # uploads: the bytes of the objects really in the bucket
    assert value(s, "render_upload_bytes_total") == sum(objects.values()) and len(objects) == 4
    assert value(s, "render_upload_duration_seconds_count") == 4
    assert value(s, "render_webhook_deliveries_total", outcome="delivered") == 5
    assert value(s, "render_webhook_deliveries_total", outcome="retry") == 1
    # Dramatiq counts a retried message at each enqueue (onto the delay queue, then back onto the queue).
    assert value(s, "dramatiq_message_retries_total", actor_name="deliver_webhook") == 2
    assert value(s, "render_jobs_in_progress") == 0
    # queue depth read from the broker: nothing waiting, one dead letter
    assert value(s, "render_queue_depth", queue=f.queue, state="ready") == 0
    assert value(s, "render_queue_depth", queue=f.queue, state="delayed") == 0
    assert value(s, "render_queue_depth", queue=f.webhook_queue, state="ready") == 0
    # per-host health and Dramatiq's own metrics from the same endpoint
    assert value(s, "render_worker_processes") == 2
    assert value(s, "dramatiq_messages_total", actor_name="render") == 6
    assert value(s, "dramatiq_message_errors_total", actor_name="render") == 1  # the dead-lettered garbage
    # The receiver's 500 is the tenant's: a retry in the worker's delivery metric, not a message error.
    assert value(s, "dramatiq_message_errors_total", actor_name="deliver_webhook") == 0
    assert not any(name.startswith("render_gpu_") for name in s)  # no GPU here: absent, not zero
    # readiness inputs and the queues this host's two worker processes consume
    assert value(s, "render_redis_up") == 1 and value(s, "render_storage_up") == 1
    assert value(s, "render_queue_consumers", queue=f.queue) == 2
    assert value(s, "render_queue_consumers", queue=f.webhook_queue) == 2

    # every metric a dashboard panel or alert rule uses exists in this live scrape
    from prometheus_client import CollectorRegistry

    from worker.telemetry import RenderMetrics

    gpu_defined = {
        m.name
        for m in RenderMetrics(registry=CollectorRegistry()).registry.collect()
        if m.name.startswith("render_gpu_")
    }
    used = set().union(*(promql_metric_names(e) for e in dashboard_and_rule_exprs())) - SYNTHETIC
    assert used, "no expressions found in deploy/"
    missing = {n for n in used if n not in s and n not in gpu_defined}
    assert not missing, f"dashboard/rules use metrics absent from a live scrape: {sorted(missing)}"
    print(json.dumps({"used": len(used), "gpu_only": sorted(used & gpu_defined)}))


def _delayed(s) -> list[tuple[dict[str, str], float]]:
    return s.get("dramatiq_delayed_messages_inprogress", [])


def test_delayed_messages_in_memory_have_data_on_a_healthy_farm_and_return_to_zero(
    redis_server, s3_server, webhook_receiver, media, tmp_path
):
    """The "messages delayed in memory" panel: a series per queue and actor at 0 from the start (no failure
    needed), no pid label, and back at 0 once a delayed message went through."""
    port = free_port()
    with farm(redis_server, s3_server, tmp_path, metrics_port=port, queue_depth_interval_s=0.3) as f:
        f.start_worker(processes=2)
        wav = f.upload(media["audio_wav"])
        rid = f.enqueue(wav, "m4a", segments=[(1.0, 2.0)], webhook=webhook_receiver)
        assert f.wait_record(rid, timeout_s=60)["state"] == "completed"
        wait_for(lambda: webhook_receiver.received, 30, "the webhook")
        healthy = wait_for(lambda: (s := scrape(port)) and value(s, "render_webhook_deliveries_total") and s, 30, "")
        series = _delayed(healthy)
        assert {(lab["queue_name"], lab["actor_name"]) for lab, _ in series} >= {
            (f.queue, "render"),
            (f.webhook_queue, "deliver_webhook"),
        }
        assert all("pid" not in lab for lab, _ in series) and all(v == 0 for _, v in series)
        # A delivery that fails once goes through the delay queue; afterwards every series is back at 0.
        webhook_receiver.respond(500)
        other = f.enqueue(wav, "m4a", segments=[(2.0, 3.0)], webhook=webhook_receiver)
        assert f.wait_record(other, timeout_s=60)["state"] == "completed"
        wait_for(lambda: len(webhook_receiver.received) >= 3, 30, "the retried delivery")
        s = wait_for(lambda: (s := scrape(port)) and value(s, "render_webhook_deliveries_total") >= 3 and s, 30, "")
        assert value(s, "dramatiq_message_retries_total", actor_name="deliver_webhook") >= 1
        assert all("pid" not in lab for lab, _ in _delayed(s))
        assert {lab["queue_name"] for lab, _ in _delayed(s)} <= {f.queue, f.webhook_queue}  # no ".DQ" series
        assert all(v == 0 for _, v in _delayed(s)), _delayed(s)


def test_the_encoder_label_and_the_record_agree(redis_server, s3_server, media, tmp_path):
    """A job that ends before encoding counts under encoder "none" (and its record says null); a job cancelled
    mid-encode counts under the encoder that ran, which its record names too."""
    port = free_port()
    with farm(redis_server, s3_server, tmp_path, metrics_port=port, queue_depth_interval_s=0.3) as f:
        f.start_worker()
        missing = f.enqueue(f"s3://{f.source_bucket}/nope.mp4", "mp4")
        corrupt = f.enqueue(f.upload(media["corrupt"]), "mp4")
        for rid in (missing, corrupt):
            rec = f.wait_record(rid, timeout_s=60)
            assert rec["state"] == "failed" and rec["encoder"] is None, rec
        long = f.enqueue(f.upload(media["cfr30"]), "mp4", segments=[(5.0, 25.0), (40.0, 60.0)], smart=False)
        f.wait_record(long, lambda r: r["state"] == "processing" and r["progress"] > 0, timeout_s=60)
        during = scrape(port)
        assert value(during, "render_jobs_in_progress", encoder="cpu") == 1
        assert value(during, "render_jobs_in_progress", encoder="none") == 0
        f.cli("cancel", long, "--reason", "wrong cut")
        rec = f.wait_record(long, timeout_s=30)
        assert rec["state"] == "cancelled" and rec["encoder"] == "cpu", rec

        def settled():
            s = scrape(port)
            return s if value(s, "render_jobs_total") == 3 and value(s, "render_jobs_in_progress") == 0 else None

        s = wait_for(settled, 30, "the scrape to settle")
    assert value(s, "render_jobs_total", outcome="failed", format="mp4", encoder="none") == 2
    assert value(s, "render_jobs_total", outcome="failed", encoder="cpu") == 0
    assert value(s, "render_jobs_total", outcome="cancelled", format="mp4", encoder="cpu") == 1
