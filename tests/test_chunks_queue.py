"""Chunked renders through the queue (issue 11, queue half): real Redis, the S3 server, worker processes.

A render longer than RENDER_CHUNK_MIN_S becomes one message per chunk on the render queue and an assembly
that joins the stored pieces (worker/pipeline.py, "Chunked renders through the queue"). The settings here
are the validated minimums (chunks of 5 s, split past 10 s) and the source renders at 320x180, so a 25 s
cut is five chunks that encode in a second or two each. Outputs are checked against the oracle
(tests/oracle.py) and the barcodes in every frame (tests/mediacheck.py), never against worker/plan.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mediacheck as mc
import oracle
import pytest
from farm import Farm, alive, farm, ffmpeg_children, verified_events, wait_for

if TYPE_CHECKING:
    from services import RedisServer, S3Server, WebhookReceiver

pytestmark = pytest.mark.services

CHUNKED = {"chunk_s": 5, "chunk_min_s": 10}
FAST_RECOVERY = {"broker_heartbeat_timeout_ms": 5000, "broker_sweep_interval_s": 1, "lease_ttl_s": 3}
#: 25 s of output from two stretches of the 200 s cfr30 source: five chunks of 5 s.
CUT = [(10.0, 22.0), (150.0, 163.0)]
CHUNKS = 5
#: Measured on 2 cores: the first chunk is stored about 2 s after the render starts, the render completes after
#: about 6.5 s without the limit; 4 s sits between them (a factor 1.6 or more either way): the render fails after
#: some chunks were stored, never before the first.
TIME_LIMIT_S = 4


@pytest.fixture
def rig(redis_server: RedisServer, s3_server: S3Server, tmp_path: Path) -> Any:
    with farm(redis_server, s3_server, tmp_path, **CHUNKED, **FAST_RECOVERY) as f:
        yield f


def stored_by(log: str, rid: str) -> set[int]:
    return {int(k) for k in re.findall(rf"render {rid}: chunk (\d+) of {CHUNKS} stored", log)}


def rendered_by(log: str, rid: str) -> list[int]:
    return [int(k) for k in re.findall(rf"render {rid}: rendering chunk (\d+) of {CHUNKS}", log)]


def temporary(rig: Farm, rid: str) -> list[str]:
    return [k for k in rig.objects() if k.startswith(f"tmp/renders/{rid}/")]


def check_exact(rig: Farm, rid: str, tmp_path: Path) -> None:
    """The stored output holds every frame the oracle plans for CUT, in order, at a constant rate."""
    out = rig.download(f"renders/{rid}/{rid}.mp4", tmp_path / f"{rid}.mp4")
    exp = oracle.expected(CUT, rate=Fraction(30), origin=Fraction(0), first=0, end=6000)
    frames = mc.frame_indices(out)
    idx = [i for _, i in frames]
    assert len(idx) == exp.total == 25 * 30
    bad = [(k, got, want) for k, (got, want) in enumerate(zip(idx, exp.slots(), strict=True)) if got != want]
    assert not bad, f"{len(bad)} frames off the plan, first {bad[:5]}"
    steps = {round((b - a) * 30, 3) for (a, _), (b, _) in zip(frames, frames[1:], strict=False)}
    assert steps == {1.0}, steps  # no gap or overlap at a join
    durations = mc.stream_durations(out)
    assert abs(durations["audio"] - 25.0) < 1 / 30, durations


def one_event(rig: Farm, receiver: WebhookReceiver, rid: str) -> list[str]:
    wait_for(lambda: rig.pending(rig.webhook_queue) == 0 and receiver.received, 30, "the webhook")
    time.sleep(1)  # a second event, if one were sent, would have arrived by now
    return [e["type"] for e in verified_events(receiver).get(rid, [])]


def test_two_workers_share_the_chunks_and_the_output_is_exact(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    workers = [rig.start_worker(), rig.start_worker()]
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=CUT, webhook=webhook_receiver, smart=False)
    rec = rig.wait_record(rid, timeout_s=240)
    assert rec["state"] == "completed", rec
    assert rec["progress"] == 1
    assert (rig.records.get_raw(rid) or {}).get("chunks") == str(CHUNKS)  # an internal field of the record
    check_exact(rig, rid, tmp_path)
    # Every chunk stored exactly once, and by both workers between them.
    stored = [stored_by(w.log(), rid) for w in workers]
    assert stored[0] | stored[1] == set(range(CHUNKS)) and not stored[0] & stored[1], stored
    assert stored[0] and stored[1], f"one worker took every chunk: {stored}"
    # The audio was a part of its own, encoded once, beside the chunks.
    assert sum(w.log().count(f"render {rid}: audio stored") for w in workers) == 1
    # Each worker process downloaded the source once, however many chunks it took (its source cache).
    assert [len(re.findall(rf"render {rid}: source downloaded", w.log())) for w in workers] == [1, 1]
    assert temporary(rig, rid) == []  # the pieces were deleted after the assembly
    assert rig.objects() == {f"renders/{rid}/{rid}.mp4": rec["size_bytes"]}
    assert one_event(rig, webhook_receiver, rid) == ["render.completed"]
    assert rig.pending() == 0 and rig.dead() == []


def test_kill_9_mid_chunk_loses_only_that_chunk(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    first = rig.start_worker()
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=CUT, webhook=webhook_receiver, smart=False)
    # Let the first worker store one chunk and start the next, then kill it outright mid-chunk.
    wait_for(lambda: len(rendered_by(first.log(), rid)) >= 2, 120, "a second chunk to start", interval_s=0.02)
    first.kill_group()
    kept = stored_by(first.log(), rid)
    killed = rendered_by(first.log(), rid)[-1]
    assert kept and killed not in kept, (kept, killed)
    second = rig.start_worker()
    rec = rig.wait_record(rid, timeout_s=240)
    assert rec["state"] == "completed", rec
    check_exact(rig, rid, tmp_path)
    # The second worker rendered the killed chunk and the ones never started; what was stored stayed stored.
    redone = rendered_by(second.log(), rid)
    assert killed in redone and not kept & set(redone), (kept, redone)
    assert stored_by(second.log(), rid) == set(range(CHUNKS)) - kept
    assert temporary(rig, rid) == []
    assert one_event(rig, webhook_receiver, rid) == ["render.completed"]


def test_a_permanent_failure_in_one_chunk_fails_the_render_once(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    # The index at the front (faststart) and half the media data: the source probes as 200 s, and the
    # chunks cut from 150 s on find no frames there.
    whole = tmp_path / "faststart.mp4"
    cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(media["cfr30"]), "-c", "copy", "-movflags", "+faststart"]
    subprocess.run([*cmd, str(whole)], check=True, timeout=120)
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    workers = [rig.start_worker(), rig.start_worker()]
    rid = rig.enqueue(rig.upload(truncated), "mp4", segments=CUT, webhook=webhook_receiver, smart=False)
    rec = rig.wait_record(rid, timeout_s=240)
    assert rec["state"] == "failed", rec
    assert rec["error_code"] == "source_unreadable", rec
    assert one_event(rig, webhook_receiver, rid) == ["render.failed"]
    # Chunks still running when the render failed stop, and nothing of the render is left in storage.
    wait_for(lambda: rig.pending() == 0, 60, "the queue to drain")
    assert temporary(rig, rid) == [] and rig.objects() == {}
    assert not any(f"render {rid} assembly" in w.log() for w in workers)  # never assembled


def test_the_time_limit_bounds_the_chunked_render_as_a_whole(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver
) -> None:
    # One worker and a limit of a few seconds: each part runs well inside it, the render's seven do not.
    worker = rig.start_worker(time_limit_s=TIME_LIMIT_S)
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=CUT, webhook=webhook_receiver, smart=False)
    rec = rig.wait_record(rid, timeout_s=120)
    assert (rec["state"], rec["error_code"]) == ("failed", "timeout"), rec
    log = worker.log()
    assert stored_by(log, rid), "no chunk was stored: the limit stopped a single chunk, not the render"
    assert one_event(rig, webhook_receiver, rid) == ["render.failed"]
    wait_for(lambda: rig.pending() == 0, 60, "the remaining chunks to be acknowledged")
    assert rig.objects() == {} and rig.dead() == [] and rig.delayed() == []  # not retried, nothing left
    assert f"render {rid} assembly: completed" not in log


def test_cancel_stops_every_chunk_and_deletes_the_pieces(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver
) -> None:
    workers = [rig.start_worker(), rig.start_worker()]
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=CUT, webhook=webhook_receiver, smart=False)
    rig.wait_record(rid, lambda r: r["state"] == "processing" and r["progress"] > 0, timeout_s=60)
    res = rig.records.cancel(rid, "stop it")
    assert res.status == "cancelled"
    assert one_event(rig, webhook_receiver, rid) == ["render.cancelled"]
    wait_for(lambda: rig.pending() == 0, 60, "every chunk message to be acknowledged")
    rec = rig.record(rid)
    assert rec is not None and rec["state"] == "cancelled"
    assert rig.objects() == {}  # no piece and no output
    assert rig.dead() == []
    assert not any(f"render {rid} assembly" in w.log() for w in workers)
    assert [p for w in workers for pid in w.worker_pids() for p in ffmpeg_children(pid)] == []


def test_duplicate_chunk_deliveries_do_nothing_and_count_once(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Chunk 0 delivered three times: rendered once, and the barrier waits for every chunk.

    The test plays the coordinator (it takes the record's lease and sends the chunk messages itself), so the
    duplicates sit in the queue right behind the original, as a redelivery could put them, and the last two
    chunks come late.
    """
    msg = rig.message(rig.upload(media["cfr30"]), "mp4", segments=CUT, webhook=webhook_receiver, smart=False)
    rid = msg["render_id"]
    assert rig.records.start(rid, "coordinator", 3, {"asset_id": msg["asset_id"], "output": msg["output"]})

    def send(*indices: int) -> None:
        for index in indices:
            rig.send({"job": msg, "index": index, "count": CHUNKS, "token": "coordinator"}, actor="render_part")

    send(0, 0, 0, 1, 2)
    worker = rig.start_worker()
    # Chunks 3 and 4 are slow to come: a barrier that counted deliveries would have let the assembly go by now.
    wait_for(lambda: stored_by(worker.log(), rid) == {0, 1, 2}, 120, "chunks 0-2 to be stored")
    wait_for(lambda: rig.pending() == 0, 30, "the queue to drain")
    assert rig.record(rid)["state"] == "processing"  # type: ignore[index]
    assert f"render {rid}: assembly message" not in worker.log()
    send(3, 4)
    rec = rig.wait_record(rid, timeout_s=240)
    assert rec["state"] == "completed", rec
    check_exact(rig, rid, tmp_path)
    log = worker.log()
    assert sorted(rendered_by(log, rid)) == list(range(CHUNKS))  # chunk 0 once: the duplicates found it stored
    assert log.count(f"render {rid} chunk 0: duplicate") == 2
    assert log.count(f"render {rid} assembly: completed") == 1
    assert temporary(rig, rid) == []
    assert one_event(rig, webhook_receiver, rid) == ["render.completed"]
    assert rig.dead() == []


def test_a_chunk_making_no_progress_is_stopped_and_retried(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """A chunk's ffmpeg frozen (SIGSTOP) for the lease time is killed and its chunk retried; the render completes."""
    worker = rig.start_worker()
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=CUT, webhook=webhook_receiver, smart=False)
    wait_for(lambda: rendered_by(worker.log(), rid), 60, "a chunk to start", interval_s=0.01)
    frozen = wait_for(
        lambda: [p for pid in worker.worker_pids() for p in ffmpeg_children(pid)], 30, "ffmpeg", interval_s=0.005
    )
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    stalled_chunk = rendered_by(worker.log(), rid)[-1]
    rec = rig.wait_record(rid, timeout_s=240)
    assert rec["state"] == "completed", rec
    check_exact(rig, rid, tmp_path)
    log = worker.log()
    assert f"render {rid}: chunk-{stalled_chunk} made no progress" in log
    assert rendered_by(log, rid).count(stalled_chunk) == 2  # stopped once, then rendered again
    assert not any(alive(p) for p in frozen)
    assert temporary(rig, rid) == []
    assert one_event(rig, webhook_receiver, rid) == ["render.completed"]


def test_sigterm_mid_chunk_puts_the_chunk_back_and_another_worker_finishes(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    first = rig.start_worker(shutdown_timeout_s=0.2)
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=CUT, webhook=webhook_receiver, smart=False)
    wait_for(lambda: len(rendered_by(first.log(), rid)) >= 2, 120, "a second chunk to start", interval_s=0.01)
    # A chunk here encodes in half a second: its ffmpeg is frozen so that the shutdown surely finds it running.
    frozen = wait_for(
        lambda: [p for pid in first.worker_pids() for p in ffmpeg_children(pid)], 30, "ffmpeg", interval_s=0.005
    )
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    first.signal(signal.SIGTERM)
    assert first.proc.wait(timeout=30) == 0  # stopped cleanly: the chunk was stopped and put back, not lost
    kept = stored_by(first.log(), rid)
    assert "the render was cancelled; back on the queue" in first.log()  # the chunk it was rendering
    assert rig.dead() == []
    second = rig.start_worker()
    rec = rig.wait_record(rid, timeout_s=240)
    assert rec["state"] == "completed", rec
    check_exact(rig, rid, tmp_path)
    assert stored_by(second.log(), rid) == set(range(CHUNKS)) - kept  # what the first worker stored stayed stored
    assert temporary(rig, rid) == []
    assert one_event(rig, webhook_receiver, rid) == ["render.completed"]
