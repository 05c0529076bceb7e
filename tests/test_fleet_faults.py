"""Faults a fleet meets (issue 18), each against the real services: Redis, s3rver, render-worker processes.

Every fault ends in a terminal state or a retry that leads to one, with one webhook per render, nothing partial
in storage, and no traceback for a fault the worker knows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from farm import SECRET, Farm, alive, farm, ffmpeg_children, verified_events, wait_for
from services import fill, small_disk

from worker import scratch

if TYPE_CHECKING:
    from services import FaultProxy, RedisServer, S3Server, WebhookReceiver

LONG_CUT = [(5.0, 25.0), (40.0, 60.0)]


@pytest.fixture
def default_rig(redis_server: RedisServer, s3_server: S3Server, tmp_path: Path) -> Any:
    """A farm on the documented defaults (a killed worker's message comes back only after 60 s)."""
    with farm(redis_server, s3_server, tmp_path) as f:
        yield f


# -- 7. no scratch outlives a killed worker --------------------------------------------------------------------


def _scratch(rig: Farm) -> list[str]:
    return sorted(p.name for p in Path(rig.settings().work_dir).iterdir())


@pytest.mark.services
def test_a_worker_at_boot_removes_the_scratch_of_a_killed_worker_never_a_live_ones(
    default_rig: Farm, media: dict[str, Path]
) -> None:
    rig = default_rig
    work = Path(rig.settings().work_dir)
    # A live process's scratch (this test process's), which must survive every clean-up.
    live = scratch.temp_dir("render", work)
    first = rig.start_worker()
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=LONG_CUT, smart=False)
    rig.wait_record(rid, lambda r: r["state"] == "processing" and r["progress"] > 0, timeout_s=30)
    wait_for(lambda: any(ffmpeg_children(p) for p in first.worker_pids()), 10, "ffmpeg to run")
    left = _scratch(rig)
    first.kill_group()  # SIGKILL: nothing gets to clean up
    wait_for(lambda: not any(alive(p) for p in first.worker_pids()), 10, "the worker to die")
    # What a killed worker leaves: the render's directory (its source and partial output), ffmpeg's graph
    # directory, and the source cache with a whole copy of the source.
    assert any(n == f"job-{rid}" for n in left) and any(n.startswith("render-") for n in left), left
    assert any(n.startswith("sources-") for n in left), left
    assert set(left) <= set(_scratch(rig))

    rig.start_worker()  # boots, cleans up, then waits for jobs (the killed job comes back only after 60 s)
    assert _scratch(rig) == [Path(live.name).name]
    assert Path(live.name, scratch.OWNER_FILE).exists()
    live.cleanup()


def test_clean_dead_keeps_a_live_process_and_a_kept_retry_and_sees_through_a_reused_pid(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owned = tmp_path / f"render-{sleeper.pid}-abc"
        owned.mkdir()
        (owned / scratch.OWNER_FILE).write_text(scratch.owner_tag(sleeper.pid))
        reused = tmp_path / f"render-{os.getpid()}-old"
        reused.mkdir()
        # Our pid, but another start time: the process that made it is gone, and its pid was given again.
        (reused / scratch.OWNER_FILE).write_text(f"{os.getpid()}:1")
        kept = tmp_path / "job-rnd_kept"  # a render's scratch kept on purpose for its retry: nobody owns it
        kept.mkdir()
        (kept / ".lock").touch()
        mine_tmp = scratch.temp_dir("render", tmp_path)  # this process's, claimed
        mine = Path(mine_tmp.name)
        assert scratch.clean_dead(tmp_path) == [reused.name]
        assert owned.exists() and kept.exists() and mine.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert scratch.clean_dead(tmp_path) == [owned.name]
    assert kept.exists() and mine.exists()
    mine_tmp.cleanup()


def test_a_delivery_in_progress_is_never_cleaned_even_with_its_owner_file_gone(tmp_path: Path) -> None:
    with scratch.Scratch(str(tmp_path), "rnd_busy") as held:
        (held.path / scratch.OWNER_FILE).write_text("999999999:1")  # as if the owner were dead
        assert scratch.clean_dead(tmp_path) == []  # its flock says a live delivery holds it
        assert held.path.exists()


# -- 6. a 0-byte source ends at once ------------------------------------------------------------------------------


@pytest.mark.services
def test_an_empty_source_fails_at_once_without_a_download(
    default_rig: Farm, webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Against s3rver with the default checksum mode: today's GET of a 0-byte object hangs to the read timeout."""
    rig = default_rig
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    rig.start_worker()
    started = time.monotonic()
    rid = rig.enqueue(rig.upload(empty), "mp4", webhook=webhook_receiver)
    rec = rig.wait_record(rid, timeout_s=30)
    assert (rec["state"], rec["error_code"], rec["attempts"]) == ("failed", "source_unreadable", 1), rec
    assert "empty" in rec["error_message"]
    assert time.monotonic() - started < 20  # not the 60 s read timeout, nor minutes of retries
    wait_for(lambda: rig.pending(rig.webhook_queue) == 0 and webhook_receiver.received, 30, "the webhook")
    assert [e["type"] for e in verified_events(webhook_receiver)[rid]] == ["render.failed"]
    assert rig.objects() == {} and _scratch(rig) == []
    assert "Traceback" not in rig.logs()


# -- 2. disk full ----------------------------------------------------------------------------------------------


@pytest.fixture
def disk_rig(redis_server: RedisServer, s3_server: S3Server, tmp_path: Path) -> Any:
    with small_disk(tmp_path / "disk", 64) as disk, farm(redis_server, s3_server, tmp_path) as f:
        f.configure(work_dir=disk)
        yield f, disk


@pytest.mark.services
def test_a_disk_that_fills_up_during_a_render_is_retried_and_nothing_is_lost(
    disk_rig: tuple[Farm, Path], media: dict[str, Path], webhook_receiver: WebhookReceiver
) -> None:
    rig, disk = disk_rig
    # Retries that find the disk still full decline at once; enough of them, on the default backoff, to outlast
    # the ballast.
    rig.start_worker(max_retries=20)
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=LONG_CUT, smart=False, webhook=webhook_receiver)
    rig.wait_record(rid, lambda r: r["state"] == "processing" and r["progress"] > 0, timeout_s=30)
    ballast = fill(disk)  # another tenant of the host's disk took the rest
    released = rig.wait_record(rid, lambda r: "disk_full" in (r["error_message"] or ""), timeout_s=60)
    assert released["state"] == "processing" or released["error_code"] == "disk_full", released
    # The failed attempt freed its scratch, the source cache included: only the ballast is on the disk.
    wait_for(lambda: sorted(p.name for p in disk.iterdir()) == ["ballast"], 10, "the scratch to be freed")
    assert rig.objects() == {}  # nothing partial in storage
    ballast.unlink()
    done = rig.wait_record(rid, timeout_s=120)
    assert done["state"] == "completed", done
    assert rig.objects() == {f"renders/{rid}/{rid}.mp4": done["size_bytes"]}
    wait_for(lambda: rig.pending(rig.webhook_queue) == 0 and webhook_receiver.received, 30, "the webhook")
    assert [e["type"] for e in verified_events(webhook_receiver)[rid]] == ["render.completed"]
    log = rig.logs()
    assert "Traceback" not in log and "internal_error" not in log and "encode_failed" not in log


@pytest.mark.services
def test_a_worker_without_room_declines_a_job_before_fetching_and_keeps_serving(
    redis_server: RedisServer,
    s3_server: S3Server,
    media: dict[str, Path],
    webhook_receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk", 4) as disk, farm(redis_server, s3_server, tmp_path) as rig:
        rig.configure(work_dir=disk)
        rig.start_worker(max_retries=1)
        big = rig.enqueue(rig.upload(media["audio_wav"]), "m4a", webhook=webhook_receiver)  # 3.8 MB: x2 > 4 MB
        rec = rig.wait_record(big, timeout_s=120)
        assert (rec["state"], rec["error_code"], rec["attempts"]) == ("failed", "disk_full", 2), rec
        assert "declined" in rec["error_message"]
        assert list(disk.iterdir()) == []  # never fetched
        small = rig.enqueue(rig.upload(media["tone_wav"]), "m4a", webhook=webhook_receiver)  # 0.96 MB: fits
        assert rig.wait_record(small, timeout_s=60)["state"] == "completed"
        wait_for(lambda: rig.pending(rig.webhook_queue) == 0 and len(webhook_receiver.received) >= 2, 30, "webhooks")
        events = verified_events(webhook_receiver)
        assert [(e["type"], e["data"]["error_code"]) for e in events[big]] == [("render.failed", "disk_full")]
        assert [e["type"] for e in events[small]] == ["render.completed"]
        assert "Traceback" not in rig.logs()


# -- 4. no secret in any log, at any level -----------------------------------------------------------------------

REDIS_PASSWORD = "redis-pa55word-in-the-url"


@pytest.mark.services
def test_no_secret_in_any_log_line_at_debug(
    s3_server: S3Server, media: dict[str, Path], webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Every logger at DEBUG (Dramatiq logs each message it receives, arguments included; botocore logs request
    headers): no webhook secret, no Redis password, no AWS credential in the worker's output."""
    from services import RedisServer

    with RedisServer(password=REDIS_PASSWORD) as redis_server, farm(redis_server, s3_server, tmp_path) as rig:
        rig.start_worker(log_level="DEBUG")
        ok = rig.enqueue(rig.upload(media["audio_wav"]), "m4a", segments=[(1.0, 2.0)], webhook=webhook_receiver)
        bad = rig.enqueue(f"s3://{rig.source_bucket}/missing.mp4", "mp4", webhook=webhook_receiver)
        assert rig.wait_record(ok)["state"] == "completed" and rig.wait_record(bad)["state"] == "failed"
        wait_for(lambda: rig.pending(rig.webhook_queue) == 0 and len(webhook_receiver.received) >= 2, 30, "webhooks")
        log = rig.logs()
    # Every logger really logged at DEBUG: the check below is not passing on an empty log.
    for logger in ("dramatiq.worker.WorkerThread", "botocore", "urllib3", "worker."):
        assert f"] [{logger}" in log and "[DEBUG]" in log, logger
    assert "Received message render(" in log  # the line that carried the secret
    for secret in (SECRET, SECRET.removeprefix("whsec_"), REDIS_PASSWORD, s3_server.secret_key, s3_server.access_key):
        assert secret not in log, secret[:8]


# -- 3. a slow webhook receiver cannot starve renders -----------------------------------------------------------


def test_an_attempt_has_a_total_deadline_against_a_dripping_receiver() -> None:
    from services import DripReceiver

    from worker import webhooks

    with DripReceiver(interval_s=0.5) as drip:
        started = time.monotonic()
        result = webhooks.deliver_once(drip.url, "whsec_" + "A" * 32, "msg_1", b"{}", 2.0, allow_private=True)
        took = time.monotonic() - started
    assert not result.delivered and result.retryable and "timeout" in result.reason
    assert took < 3.0, took  # the attempt's whole time, though every single read was answered within 0.5 s


def test_a_redirect_is_a_failed_attempt_and_is_never_followed(
    webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    from services import WebhookReceiver as Receiver

    from worker import webhooks

    with Receiver() as elsewhere:
        webhook_receiver.location = elsewhere.url
        webhook_receiver.respond(302)
        result = webhooks.deliver_once(
            webhook_receiver.url, "whsec_" + "A" * 32, "msg_1", b"{}", 5.0, allow_private=True
        )
        assert not result.delivered and result.retryable and result.status == 302
        assert elsewhere.received == []  # not followed


@pytest.mark.services
def test_a_dripping_receiver_holds_no_render_and_no_other_delivery(
    default_rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver
) -> None:
    """One render thread (the deploy default), a receiver that drips a byte every 2 s: the next render and its
    webhook go out as if nothing were wrong, and the slow delivery's claim outlives each of its attempts."""
    from services import DripReceiver

    rig = default_rig
    timeout_s = 10.0  # RENDER_WEBHOOK_TIMEOUT_S's default
    with DripReceiver(interval_s=2.0) as drip:
        rig.start_worker(threads=1, webhook_timeout_s=timeout_s)  # the defaults (the farm shortens the timeout)
        uri = rig.upload(media["audio_wav"])
        slow = rig.message(uri, "m4a", segments=[(1.0, 2.0)])
        slow["webhook"] = {"url": drip.url, "secret": SECRET}
        slow_id = slow["render_id"]
        rig.submit(slow)
        assert rig.wait_record(slow_id)["state"] == "completed"
        wait_for(lambda: drip.connections, 30, "the slow receiver's first attempt")
        claim = f"render:{slow_id}:delivering:render.completed"
        ttl_ms = rig.redis.pttl(claim)
        assert ttl_ms > 0 and ttl_ms / 1000 >= timeout_s - (time.time() - drip.connections[0][0]), ttl_ms
        started = time.monotonic()
        fast = rig.enqueue(uri, "m4a", segments=[(2.0, 3.0)], webhook=webhook_receiver)
        assert rig.wait_record(fast, timeout_s=30)["state"] == "completed"
        webhook_receiver.wait_for(1, timeout_s=30)
        took = time.monotonic() - started
        assert took < timeout_s, took  # not behind the slow delivery (today: 90 s pending, 150 s no webhook)
        wait_for(lambda: len(drip.connections) >= 2 and drip.connections[0][1], 60, "a second slow attempt")
        first = drip.connections[0]
        assert first[1] - first[0] < timeout_s + 2  # each attempt ended at its deadline
        # Attempts never overlap: the claim held for the whole of each one.
        spans = sorted((a, b or time.time()) for a, b in drip.connections)
        assert all(b0 <= a1 for (_, b0), (a1, _) in zip(spans, spans[1:], strict=False)), spans
    assert [e["type"] for e in verified_events(webhook_receiver)[fast]] == ["render.completed"]


# -- 1. Redis away while a render completes --------------------------------------------------------------------


def _halt_redis_at_upload(proxy: FaultProxy, redis_server: RedisServer) -> threading.Event:
    """Stop Redis the moment the render's output upload reaches S3 (before it is forwarded)."""
    halted = threading.Event()

    def on_request(method: str, path: str) -> None:
        if method in ("PUT", "POST") and "/renders/" in path and not halted.is_set():
            halted.set()
            redis_server.halt()

    proxy.on_request = on_request
    return halted


def _uploaded(proxy: FaultProxy) -> bool:
    return any(r.method in ("PUT", "POST") and r.outcome.startswith("forwarded 2") for r in proxy.requests)


def _stored_while_redis_is_away(
    rig: Farm, proxy: FaultProxy, redis_server: RedisServer, source: Path, receiver: WebhookReceiver
) -> str:
    """Enqueue a render of ``source`` and return its id once its output is stored, with Redis stopped since the
    upload began."""
    halted = _halt_redis_at_upload(proxy, redis_server)
    rid = rig.enqueue(rig.upload(source), "m4a", segments=[(1.0, 4.0)], webhook=receiver)
    wait_for(halted.is_set, 60, "the upload")
    wait_for(lambda: _uploaded(proxy), 30, "the upload to finish")
    return rid


@pytest.mark.services
def test_redis_away_from_the_upload_until_after_it_the_render_still_completes_once(
    s3_server: S3Server,
    s3_fault_proxy: FaultProxy,
    media: dict[str, Path],
    webhook_receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    from services import RedisServer

    aof = tmp_path / "aof"
    aof.mkdir()
    with RedisServer(appendonly_dir=aof) as redis_server, farm(redis_server, s3_server, tmp_path) as rig:
        rig.start_worker(s3_endpoint_url=s3_fault_proxy.url)
        rid = _stored_while_redis_is_away(rig, s3_fault_proxy, redis_server, media["audio_wav"], webhook_receiver)
        time.sleep(5)  # Redis stays away past the upload: the worker cannot complete the record meanwhile
        redis_server.resume()
        rec = rig.wait_record(rid, timeout_s=60)
        assert (rec["state"], rec["attempts"]) == ("completed", 1), rec
        assert rig.objects() == {f"renders/{rid}/{rid}.m4a": rec["size_bytes"]}
        wait_for(lambda: rig.pending(rig.webhook_queue) == 0 and webhook_receiver.received, 30, "the webhook")
        time.sleep(1)
        assert [e["type"] for e in verified_events(webhook_receiver)[rid]] == ["render.completed"]
        assert rig.pending() == 0 and rig.dead() == []
        log = rig.logs()
        assert "record store is unavailable" in log and "Traceback" not in log
        assert "same type twice" not in log


@pytest.mark.services
def test_a_worker_killed_while_redis_is_away_is_completed_from_the_stored_output_without_rendering_again(
    s3_server: S3Server,
    s3_fault_proxy: FaultProxy,
    media: dict[str, Path],
    webhook_receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    from services import RedisServer
    from test_queue_faults import FAST_RECOVERY, counting_ffmpeg, renders_run

    aof = tmp_path / "aof"
    aof.mkdir()
    with (
        RedisServer(appendonly_dir=aof) as redis_server,
        farm(redis_server, s3_server, tmp_path, **FAST_RECOVERY) as rig,
    ):
        first = rig.start_worker(s3_endpoint_url=s3_fault_proxy.url)
        rid = _stored_while_redis_is_away(rig, s3_fault_proxy, redis_server, media["audio_wav"], webhook_receiver)
        first.kill_group()  # dies with the output stored and the record still processing
        redis_server.resume()
        wrapper, runs = counting_ffmpeg(tmp_path)
        rig.start_worker(s3_endpoint_url=s3_fault_proxy.url, ffmpeg_path=wrapper)
        rec = rig.wait_record(rid, timeout_s=90)
        assert (rec["state"], rec["attempts"]) == ("completed", 2), rec
        assert renders_run(runs) == 0  # completed from the stored object: nothing rendered again
        assert rig.objects() == {f"renders/{rid}/{rid}.m4a": rec["size_bytes"]}
        wait_for(lambda: rig.pending(rig.webhook_queue) == 0 and webhook_receiver.received, 30, "the webhook")
        time.sleep(1)
        assert [e["type"] for e in verified_events(webhook_receiver)[rid]] == ["render.completed"]


@pytest.mark.services
def test_redis_that_lost_its_data_is_logged_and_the_worker_moves_on(
    s3_server: S3Server,
    s3_fault_proxy: FaultProxy,
    media: dict[str, Path],
    webhook_receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    from services import RedisServer

    with RedisServer() as redis_server, farm(redis_server, s3_server, tmp_path) as rig:  # no persistence
        rig.start_worker(s3_endpoint_url=s3_fault_proxy.url)
        lost = _stored_while_redis_is_away(rig, s3_fault_proxy, redis_server, media["audio_wav"], webhook_receiver)
        redis_server.resume()  # empty: every record, queue and lease is gone
        wait_for(lambda: "its record is gone" in rig.logs(), 60, "the worker to notice")
        s3_fault_proxy.on_request = None
        after = rig.enqueue(rig.upload(media["audio_wav"]), "m4a", segments=[(1.0, 2.0)], webhook=webhook_receiver)
        assert rig.wait_record(after, timeout_s=60)["state"] == "completed"  # the worker kept serving
        assert rig.record(lost) is None
        assert lost in rig.logs()


@pytest.mark.services
def test_a_download_that_fills_the_disk_is_disk_full_and_leaves_nothing(s3_server: S3Server, tmp_path: Path) -> None:
    from worker.errors import DiskFull
    from worker.storage.s3 import S3Storage

    settings = s3_server.settings()
    storage = S3Storage(settings, session=s3_server.session())
    bucket = s3_server.create_bucket()
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(6 << 20))
    s3_server.client().upload_file(str(big), bucket, "big.mp4")
    with small_disk(tmp_path / "disk", 4) as disk:
        with pytest.raises(DiskFull) as info:
            storage.fetch(f"s3://{bucket}/big.mp4", disk / "src" / "big.mp4", deadline_s=60)
        assert info.value.transient and info.value.code.value == "disk_full"
        assert [p for p in disk.rglob("*") if p.is_file()] == []  # no partial file, no temporary


# -- issue 23.5: messages a client sees name the job's source, never the worker's scratch ------------------


@pytest.mark.services
@pytest.mark.parametrize("fmt", ["mp4", "m4a"])
def test_an_unreadable_source_is_named_by_its_uri_not_the_scratch_file(
    default_rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver, fmt: str
) -> None:
    rig = default_rig
    rig.start_worker()
    uri = rig.upload(media["corrupt"])
    rid = rig.enqueue(uri, fmt, webhook=webhook_receiver)
    rec = rig.wait_record(rid, timeout_s=30)
    assert (rec["state"], rec["error_code"]) == ("failed", "source_unreadable"), rec
    message = rec["error_message"]
    assert message.startswith(uri + ": "), message
    work = rig.settings().work_dir
    assert work not in message and "/tmp" not in message and "source." not in message
    wait_for(lambda: rig.pending(rig.webhook_queue) == 0 and webhook_receiver.received, 30, "the webhook")
    (event,) = verified_events(webhook_receiver)[rid]
    assert event["data"]["error_message"] == message
