"""The queue worker when things go wrong: kill -9, SIGTERM, time limits, S3 outages, a failing webhook receiver.

Same real services as test_queue_e2e.py. The kill -9 test runs on the documented
defaults (a 60 s broker heartbeat timeout, the requeue sweep every 15 s, a 30 s
lease), so it shows the recovery bound an operator gets: about 75 s plus the
render. The other interruption tests shorten those three settings (``FAST_RECOVERY``)
only to keep the suite quick; what they check does not depend on them.
"""

from __future__ import annotations

import shlex
import signal
import stat
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from farm import (
    SECRET,
    Farm,
    WorkerProcess,
    alive,
    deliveries,
    farm,
    ffmpeg_children,
    ts,
    verified_events,
    wait_for,
)
from test_render_exact import check_frames

from worker import ffmpeg
from worker.plan import Segment

if TYPE_CHECKING:
    from services import FaultProxy, RedisServer, S3Server, WebhookReceiver

pytestmark = pytest.mark.services

#: A cut of cfr30 that takes a few seconds to encode on two cores: long enough to interrupt.
LONG_CUT = [(5.0, 25.0), (40.0, 60.0)]
FAST_RECOVERY = {"broker_heartbeat_timeout_ms": 5000, "broker_sweep_interval_s": 1, "lease_ttl_s": 3}
#: The issue's bound for a crashed render on the defaults: "about 2 minutes plus its render time".
RECOVERY_BOUND_S = 120


@pytest.fixture
def rig(redis_server: RedisServer, s3_server: S3Server, tmp_path: Path) -> Any:
    with farm(redis_server, s3_server, tmp_path, **FAST_RECOVERY) as f:
        yield f


@pytest.fixture
def default_rig(redis_server: RedisServer, s3_server: S3Server, tmp_path: Path) -> Any:
    """A farm on the documented recovery settings: no heartbeat, sweep or lease override."""
    with farm(redis_server, s3_server, tmp_path) as f:
        assert not {"RENDER_BROKER_HEARTBEAT_TIMEOUT_MS", "RENDER_BROKER_SWEEP_INTERVAL_S", "RENDER_LEASE_TTL_S"} & set(
            f.settings_env
        )
        yield f


def rendering(rig: Farm, rid: str) -> dict[str, Any]:
    """Wait until the render is really under way: processing, with progress written."""
    return rig.wait_record(rid, lambda r: r["state"] == "processing" and r["progress"] > 0, timeout_s=30)


def ffmpeg_of(worker: WorkerProcess) -> list[int]:
    return [p for pid in worker.worker_pids() for p in ffmpeg_children(pid)]


def check_whole(rig: Farm, rid: str, tmp_path: Path) -> None:
    """The object is a complete, frame-exact render of LONG_CUT."""
    out = rig.download(f"renders/{rid}/{rid}.mp4", tmp_path / f"{rid}.mp4")
    check_frames(out, [Segment(a, b) for a, b in LONG_CUT], Fraction(30))


def test_kill_9_mid_render_another_worker_completes_it_on_the_defaults(
    default_rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    rig = default_rig
    first = rig.start_worker()
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=LONG_CUT, smart=False, webhook=webhook_receiver)
    rendering(rig, rid)
    encoders = wait_for(lambda: ffmpeg_of(first), 10, "ffmpeg to run")
    first.kill_group()  # SIGKILL to the parent and the worker process at once: nothing gets to clean up
    killed_at = time.monotonic()
    # ffmpeg runs in a session of its own, so the group kill did not reach it: PR_SET_PDEATHSIG did.
    wait_for(lambda: not any(alive(p) for p in encoders), 5, "the orphaned ffmpeg to die")
    killed = rig.record(rid)
    assert killed is not None and killed["state"] == "processing" and killed["progress"] < 1

    second = rig.start_worker()
    # Dramatiq alone would requeue the dead worker's message only by chance; the second worker's sweep
    # timer does it once the heartbeat timeout has passed. The render itself takes a few seconds here.
    rec = rig.wait_record(rid, timeout_s=RECOVERY_BOUND_S + 60)
    recovered_s = time.monotonic() - killed_at
    assert rec["state"] == "completed", rec
    assert rec["attempts"] == 2  # the killed render and the one that finished
    assert rig.objects() == {f"renders/{rid}/{rid}.mp4": rec["size_bytes"]}
    check_whole(rig, rid, tmp_path)
    wait_for(lambda: rig.pending(rig.webhook_queue) == 0 and webhook_receiver.received, 30, "the webhook")
    events = verified_events(webhook_receiver)
    assert [e["type"] for e in events[rid]] == ["render.completed"]  # exactly one webhook
    assert rig.pending() == 0 and rig.dead() == []
    render_s = ts(rec["completed_at"]) - ts(rec["started_at"])
    print(f"\nkill -9 recovery on the defaults: completed {recovered_s:.1f} s after the kill (render {render_s:.1f} s)")
    assert recovered_s <= RECOVERY_BOUND_S + render_s, second.log()[-3000:]


def test_sigterm_lets_a_short_render_finish(rig: Farm, media: dict[str, Path]) -> None:
    worker = rig.start_worker(shutdown_timeout_s=60)
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=LONG_CUT, smart=False)
    rendering(rig, rid)
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=60) == 0  # a clean exit, after the render
    rec = rig.record(rid)
    assert rec is not None and rec["state"] == "completed" and rec["attempts"] == 1, rec
    assert rig.pending() == 0  # acked, nothing requeued


def test_sigterm_past_the_shutdown_timeout_requeues_the_render(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    first = rig.start_worker(shutdown_timeout_s=0.5)
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=LONG_CUT, smart=False, webhook=webhook_receiver)
    rendering(rig, rid)
    encoders = ffmpeg_of(first)
    first.signal(signal.SIGTERM)
    assert first.proc.wait(timeout=30) == 0  # it stopped cleanly rather than being killed
    assert not any(alive(p) for p in encoders)
    rec = rig.record(rid)
    assert rec is not None and rec["state"] == "processing" and rec["attempts"] == 1, rec
    assert rig.redis.get(f"render:{rid}:lease") is None  # released, not left to lapse
    assert rig.pending() == 1 and rig.dead() == []  # back on the queue, not lost
    assert "the render was cancelled" in first.log()

    rig.start_worker()
    rec = rig.wait_record(rid, timeout_s=60)
    assert rec["state"] == "completed" and rec["attempts"] == 2, rec
    check_whole(rig, rid, tmp_path)
    wait_for(lambda: rig.pending(rig.webhook_queue) == 0 and webhook_receiver.received, 30, "the webhook")
    assert len(deliveries(webhook_receiver, rid)) == 1


def test_a_second_sigterm_kills_at_once(rig: Farm, media: dict[str, Path], tmp_path: Path) -> None:
    first = rig.start_worker(shutdown_timeout_s=600)
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=LONG_CUT, smart=False)
    rendering(rig, rid)
    encoders = ffmpeg_of(first)
    first.signal(signal.SIGTERM)
    wait_for(lambda: "Stopping worker process" in first.log(), 10, "the first signal to arrive")
    first.signal(signal.SIGTERM)
    first.proc.wait(timeout=30)  # well short of the 600 s the first signal allowed
    wait_for(lambda: not first.worker_pids() and not any(alive(p) for p in encoders), 5, "the group to die")
    rec = rig.record(rid)
    assert rec is not None and rec["state"] == "processing"

    # Killed, so nothing was released or requeued: the next worker's requeue sweep and
    # the lapsing lease hand it to it.
    rig.start_worker()
    rec = rig.wait_record(rid, timeout_s=60)
    assert rec["state"] == "completed" and rec["attempts"] == 2, rec
    check_whole(rig, rid, tmp_path)


def test_time_limit_fails_with_timeout_and_writes_nothing(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver
) -> None:
    rig.start_worker(time_limit_s=1)
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", webhook=webhook_receiver, smart=False)  # ~20 s of encoding
    rec = rig.wait_record(rid, timeout_s=30)
    assert (rec["state"], rec["error_code"], rec["attempts"]) == ("failed", "timeout", 1), rec
    assert rig.objects() == {}
    scratch = Path(rig.settings().work_dir)
    assert list(scratch.iterdir()) == []  # no partial output, no fetched source left behind
    wait_for(lambda: rig.pending(rig.webhook_queue) == 0 and webhook_receiver.received, 30, "the webhook")
    events = verified_events(webhook_receiver)
    assert [(e["type"], e["data"]["error_code"]) for e in events[rid]] == [("render.failed", "timeout")]
    assert rig.delayed() == [] and rig.dead() == []  # permanent: not retried


# -- storage and webhook faults, over the wire ------------------------------------------------------------------


def test_s3_outage_is_retried_until_it_recovers(
    rig: Farm, media: dict[str, Path], s3_fault_proxy: FaultProxy, webhook_receiver: WebhookReceiver
) -> None:
    uri = rig.upload(media["audio_wav"])
    rig.start_worker(s3_endpoint_url=s3_fault_proxy.url, max_retries=5)
    s3_fault_proxy.down = True
    rid = rig.enqueue(uri, "m4a", segments=[(1.0, 3.0)], webhook=webhook_receiver)
    # Wait for a retry by the queue (a second attempt), not just the storage layer's own quick retries.
    rig.wait_record(rid, lambda r: r["attempts"] >= 2, timeout_s=60)
    s3_fault_proxy.down = False
    rec = rig.wait_record(rid, timeout_s=60)
    assert rec["state"] == "completed", rec
    assert any(r.outcome == "injected 503" for r in s3_fault_proxy.requests)
    assert rig.objects() == {f"renders/{rid}/{rid}.m4a": rec["size_bytes"]}
    wait_for(lambda: rig.pending(rig.webhook_queue) == 0 and webhook_receiver.received, 30, "the webhook")
    assert [e["type"] for e in verified_events(webhook_receiver)[rid]] == ["render.completed"]
    # Each failed attempt is one warning naming the code (no traceback: a known fault), and no secret anywhere.
    log = rig.logs()
    assert "storage_failed" in log and "retried with backoff" in log and "Traceback" not in log
    assert SECRET.removeprefix("whsec_") not in log


def counting_ffmpeg(tmp_path: Path) -> tuple[Path, Path]:
    """An ffmpeg that logs each command line to a file, then runs the real one: (the wrapper, the log)."""
    log = tmp_path / "ffmpeg-runs.log"
    wrapper = tmp_path / "bin" / "ffmpeg"
    wrapper.parent.mkdir()
    real = ffmpeg.resolve_ffmpeg()
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {shlex.quote(str(log))}\nexec {shlex.quote(real)} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper, log


def renders_run(log: Path) -> int:
    """Encodes the wrapper saw (start-up checks and probes carry no filter graph)."""
    lines = log.read_text().splitlines() if log.exists() else []
    return sum("filter_complex" in line for line in lines)


def test_a_retry_after_a_failed_upload_does_not_render_again(
    rig: Farm, media: dict[str, Path], s3_fault_proxy: FaultProxy, webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    wrapper, runs = counting_ffmpeg(tmp_path)
    uri = rig.upload(media["audio_wav"])
    rig.start_worker(s3_endpoint_url=s3_fault_proxy.url, ffmpeg_path=wrapper, max_retries=5)
    s3_fault_proxy.down_methods = {"PUT", "POST"}  # the source downloads, the output cannot be stored
    rid = rig.enqueue(uri, "m4a", segments=[(1.0, 3.0)], webhook=webhook_receiver)
    # A retry by the queue (a second attempt), past the storage layer's own quick retries.
    rig.wait_record(rid, lambda r: r["attempts"] >= 2, timeout_s=90)
    s3_fault_proxy.down_methods = set()
    rec = rig.wait_record(rid, timeout_s=90)
    assert rec["state"] == "completed", rec
    assert rec["attempts"] >= 2
    assert any(r.method == "PUT" and r.outcome == "injected 503" for r in s3_fault_proxy.requests)
    assert renders_run(runs) == 1, runs.read_text()  # rendered once, uploaded on a later attempt
    assert rig.objects() == {f"renders/{rid}/{rid}.m4a": rec["size_bytes"]}
    wait_for(lambda: rig.pending(rig.webhook_queue) == 0 and webhook_receiver.received, 30, "the webhook")
    assert [e["type"] for e in verified_events(webhook_receiver)[rid]] == ["render.completed"]
    assert list(Path(rig.settings().work_dir).iterdir()) == []  # the kept output went with the render


def test_s3_down_for_good_fails_with_storage_failed(
    rig: Farm, media: dict[str, Path], s3_fault_proxy: FaultProxy, webhook_receiver: WebhookReceiver
) -> None:
    uri = rig.upload(media["audio_wav"])
    rig.start_worker(s3_endpoint_url=s3_fault_proxy.url, max_retries=1)
    s3_fault_proxy.down = True
    rid = rig.enqueue(uri, "m4a", webhook=webhook_receiver)
    rec = rig.wait_record(rid, timeout_s=60)
    assert (rec["state"], rec["error_code"], rec["attempts"]) == ("failed", "storage_failed", 2), rec
    assert "503" in rec["error_message"] or "SlowDown" in rec["error_message"]
    wait_for(lambda: rig.pending() == 0 and rig.pending(rig.webhook_queue) == 0, 30, "the queues to drain")
    assert rig.dead() == []  # failed for good in the record, not a stuck message
    events = verified_events(webhook_receiver)
    assert [(e["type"], e["data"]["error_code"]) for e in events[rid]] == [("render.failed", "storage_failed")]


def test_webhook_receiver_errors_are_retried_until_one_delivery_succeeds(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.respond(500, 500, 503)
    rig.start_worker()
    rid = rig.enqueue(rig.upload(media["audio_wav"]), "m4a", segments=[(1.0, 2.0)], webhook=webhook_receiver)
    assert rig.wait_record(rid)["state"] == "completed"
    requests = webhook_receiver.wait_for(4, timeout_s=30)
    wait_for(lambda: rig.pending(rig.webhook_queue) == 0, 30, "the webhook queue to drain")
    requests = deliveries(webhook_receiver, rid)
    assert len(requests) == 4  # three refused, the fourth acknowledged, and nothing after it
    assert len({r.headers["webhook-id"] for r in requests}) == 1  # one event: receivers can dedupe on the id
    events = verified_events(webhook_receiver)[rid]  # every attempt is signed afresh and verifies
    assert {e["type"] for e in events} == {"render.completed"}
    log = rig.logs()
    # A tenant's flaky receiver is a warning per attempt, with the status and the attempt number; no traceback.
    assert "attempt 1 of 8 failed (HTTP 500" in log and "attempt 3 of 8 failed (HTTP 503" in log
    assert "Failed to process message deliver_webhook(" not in log and "Traceback" not in log
    assert SECRET.removeprefix("whsec_") not in log
