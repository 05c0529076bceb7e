"""Load: a burst of small audio jobs through a two-process worker; none lost, none duplicated.

The assertions are about correctness only (every record completed once, one
object and one webhook per render). Throughput and latency are measured and
written to ``bench/results/queue_load.json`` for the record, never asserted:
the machines are shared and noisy.

* throughput: jobs / (last ``completed_at`` - first ``created_at``), the whole burst;
* latency: ``completed_at - created_at`` per render (enqueue to completion, so it
  includes the time a job waits behind the rest of the burst);
* service time: ``completed_at - started_at`` per render (one delivery's work).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from farm import farm, ts, verified_events, wait_for

if TYPE_CHECKING:
    from services import RedisServer, S3Server, WebhookReceiver

pytestmark = [pytest.mark.services, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "queue_load.json"
JOBS = int(os.environ.get("QUEUE_LOAD_JOBS", "200"))
PROCESSES = 2
CUT = [(1.0, 2.5), (4.0, 5.0), (8.0, 9.5)]  # 4 s of a 20 s WAV


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def test_burst_of_audio_jobs_none_lost_none_duplicated(
    redis_server: RedisServer, s3_server: S3Server, webhook_receiver: WebhookReceiver, media: dict, tmp_path: Path
) -> None:
    with farm(redis_server, s3_server, tmp_path) as rig:
        uri = rig.upload(media["audio_wav"])
        rig.start_worker(processes=PROCESSES, threads=1)
        ids = []
        t0 = time.monotonic()
        for _ in range(JOBS):
            msg = rig.message(uri, "m4a", segments=CUT, webhook=webhook_receiver)
            rig.submit(msg)
            ids.append(msg["render_id"])
        enqueue_s = time.monotonic() - t0

        def done() -> bool:
            states = [rig.redis.hget(f"render:{rid}", "state") for rid in ids]
            return all(s in ("completed", "failed") for s in states)

        wait_for(done, 300, f"{JOBS} renders to finish", interval_s=0.5)
        wall_s = time.monotonic() - t0
        wait_for(lambda: rig.pending() == 0 and rig.pending(rig.webhook_queue) == 0, 60, "the queues to drain")

        records = [rig.record(rid) for rid in ids]
        assert all(r is not None for r in records)
        recs: list[dict[str, Any]] = [r for r in records if r is not None]
        assert [r["state"] for r in recs] == ["completed"] * JOBS, [r for r in recs if r["state"] != "completed"][:3]
        assert all(r["attempts"] == 1 for r in recs)  # nothing rendered twice
        objects = rig.objects()
        assert sorted(objects) == sorted(f"renders/{rid}/{rid}.m4a" for rid in ids)
        assert all(objects[r["output_key"]] == r["size_bytes"] for r in recs)
        events = verified_events(webhook_receiver)
        assert sorted(events) == sorted(ids)
        assert all(len(evs) == 1 and evs[0]["type"] == "render.completed" for evs in events.values())
        assert len(webhook_receiver.received) == JOBS
        assert rig.dead() == []

    latency = [ts(r["completed_at"]) - ts(r["created_at"]) for r in recs]
    service = [ts(r["completed_at"]) - ts(r["started_at"]) for r in recs]
    span = max(ts(r["completed_at"]) for r in recs) - min(ts(r["created_at"]) for r in recs)
    report = {
        "test": "tests/test_queue_load.py::test_burst_of_audio_jobs_none_lost_none_duplicated",
        "command": "FIXTURES_CACHE=1 .venv/bin/python -m pytest -q -s tests/test_queue_load.py",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "jobs": JOBS,
        "job": "audio_wav (20 s, 48 kHz stereo PCM) -> m4a, 3 segments, 4 s out; webhook per job",
        "worker": f"render-worker --processes {PROCESSES} --threads 1",
        "enqueue_s": round(enqueue_s, 3),
        "burst_s": round(span, 3),
        "throughput_jobs_per_s": round(JOBS / span, 3),
        "latency_s": {
            "p50": round(percentile(latency, 50), 3),
            "p95": round(percentile(latency, 95), 3),
            "max": round(max(latency), 3),
        },
        "service_s": {
            "p50": round(percentile(service, 50), 3),
            "p95": round(percentile(service, 95), 3),
            "mean": round(statistics.fmean(service), 3),
        },
        "test_wall_s": round(wall_s, 3),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print("\nqueue load:", json.dumps(report, indent=2))
