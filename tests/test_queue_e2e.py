"""The queue worker end to end: ``render-cli enqueue`` → Redis → a ``render-worker`` subprocess → S3 → webhook.

Everything is real: redis-server, the S3 server (s3rver), the worker as a
separate process tree started through its console script, the webhook receiver
over HTTP, signatures checked with the reference ``standardwebhooks`` library,
and outputs downloaded through the presigned URL the worker mints and checked
frame by frame and for A/V sync with the renderer's own checks.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from farm import SECRET, Farm, deliveries, farm, verified_events, wait_for
from test_render_exact import check_frames, check_sync, expected_for

from fixtures import generate as gen
from worker.cli import read_status
from worker.plan import Segment

if TYPE_CHECKING:
    from services import RedisServer, S3Server, WebhookReceiver

pytestmark = pytest.mark.services

RATE_2997 = Fraction(30000, 1001)
CUT = [(0.5, 2.25), (4.0, 6.1), (9.3, 12.0), (15.5, 19.0)]


@pytest.fixture
def rig(redis_server: RedisServer, s3_server: S3Server, tmp_path: Path) -> Any:
    with farm(redis_server, s3_server, tmp_path) as f:
        yield f


def fetch(url: str, dest: Path) -> dict[str, str]:
    """GET a presigned URL into ``dest``; returns the response headers (lower-cased)."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        dest.write_bytes(resp.read())
        return {k.lower(): v for k, v in resp.headers.items()}


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def check_output(path: Path, media: dict[str, Path], fmt: str, cut: list[tuple[float, float]] | None) -> None:
    """The renderer's frame and sync checks on a downloaded output of ``cfr2997``."""
    segments = [Segment(a, b) for a, b in cut] if cut else None
    exp = expected_for("cfr2997", segments, fmt, media["cfr2997"])  # the test oracle's timeline, not the worker's
    if fmt in ("mp4", "mov"):
        whole = [Segment(0.0, float(Fraction(gen.VARIANTS["cfr2997"].frames) / RATE_2997))]
        check_frames(path, segments or whole, RATE_2997)
    check_sync(path, exp, gen.source_audio("cfr2997").mean(axis=0), 48000)


def test_every_format_with_and_without_a_cut(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    rig.start_worker(processes=2)
    uri = rig.upload(media["cfr2997"])
    jobs = [(fmt, cut) for fmt in ("mp4", "mov", "m4a", "mp3") for cut in (CUT, None)]
    with ThreadPoolExecutor(4) as pool:  # render-cli start-up is most of an enqueue
        ids = list(pool.map(lambda j: rig.enqueue(uri, j[0], segments=j[1], webhook=webhook_receiver), jobs))
    assert len(set(ids)) == len(ids)

    records = {rid: rig.wait_record(rid, timeout_s=120) for rid in ids}
    with ThreadPoolExecutor(4) as pool:
        statuses = dict(zip(ids, pool.map(rig.status, ids), strict=True))
    keys = rig.objects()
    for rid, (fmt, cut) in zip(ids, jobs, strict=True):
        rec, status = records[rid], statuses[rid]
        assert rec["state"] == "completed", rec
        assert rec["attempts"] == 1 and rec["progress"] == 1.0
        assert rec["encoder"] == "cpu" if fmt in ("m4a", "mp3") else rec["encoder"] in ("cpu", "nvenc")
        assert rec["output"]["format"] == fmt and (rec["cut_id"] is not None) == (cut is not None)
        assert status["state"] == "completed" and status["download_url"]
        # One object per render, at its deterministic key, as large as the record says.
        key = f"renders/{rid}/{rid}.{fmt}"
        assert keys.get(key) == rec["size_bytes"] > 0
        out = tmp_path / f"{rid}.{fmt}"
        headers = fetch(status["download_url"], out)
        # Named after the source, "cfr2997.cut.mp4" (the stored object keeps the render id's key).
        name = f"{media['cfr2997'].stem}.{'full' if cut is None else 'cut'}.{fmt}"
        assert headers["content-disposition"] == f'attachment; filename="{name}"'
        check_output(out, media, fmt, cut)
    assert len(keys) == len(ids)

    # Exactly one signed render.completed per render, verified by the reference library.
    wait_for(lambda: len(webhook_receiver.received) >= len(ids), 30, "the webhooks")
    wait_for(lambda: rig.pending(rig.webhook_queue) == 0, 30, "the webhook queue to drain")
    events = verified_events(webhook_receiver)
    assert sorted(events) == sorted(ids)
    for rid, evs in events.items():
        assert len(evs) == 1, evs
        assert evs[0]["type"] == "render.completed" and evs[0]["data"] == {
            "entity_id": rid,
            "asset_id": records[rid]["asset_id"],
        }


def test_presigned_url_works_until_it_expires(
    rig: Farm, media: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s3rver refuses expired SigV4 URLs (moto would not), so expiry is really tested here."""
    rig.start_worker()
    rid = rig.enqueue(rig.upload(media["audio_wav"]), "mp3", segments=[(1.0, 3.0)])
    assert rig.wait_record(rid)["state"] == "completed"

    # The library call behind `render-cli status`, in this process (boto3 takes the AWS_* credentials).
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, rig.env()[name])
    record = read_status(rid, rig.settings())
    assert record is not None and record["state"] == "completed" and record["download_url"]
    assert http_status(record["download_url"]) == 200
    assert read_status("rnd_nonexistent", rig.settings()) is None
    expiry_s = 3
    url = rig.status(rid, url_expiry_s=expiry_s)["download_url"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["X-Amz-Expires"] == [str(expiry_s)]
    headers = fetch(url, tmp_path / "out.mp3")  # good while fresh: not refused before it expires
    assert headers["content-disposition"] == f'attachment; filename="{media["audio_wav"].stem}.cut.mp3"'
    assert (tmp_path / "out.mp3").stat().st_size > 0
    wait_for(lambda: http_status(url) == 403, expiry_s + 10, "the URL to expire", interval_s=0.25)
    # A freshly read record carries a fresh URL that works again.
    assert http_status(rig.status(rid)["download_url"]) == 200


def test_duplicate_delivery_renders_once(rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver) -> None:
    """The same job message delivered twice (and a third time after completion) renders once.

    "Attempts counted truthfully": ``attempts`` counts renders that really started.
    A duplicate delivered while the first delivery renders finds the lease taken,
    does no work and is put back on the queue for later (no attempt, and no retry
    spent); when it comes back the record is terminal and it changes nothing. A
    duplicate after completion also changes nothing. So: attempts == 1, one
    object, one webhook.
    """
    import json

    # Two threads, so the duplicate is picked up while the original renders; a short
    # lease, so the duplicate is asked to come back in seconds rather than 30 s.
    rig.start_worker(threads=2, lease_ttl_s=2)
    uri = rig.upload(media["cfr30"])
    rid = rig.enqueue(uri, "mp4", segments=[(5.0, 25.0), (40.0, 60.0)], webhook=webhook_receiver, smart=False)
    # The message exactly as render-cli sent it, read back from the broker.
    raw = wait_for(lambda: rig.redis.hvals(f"dramatiq:{rig.queue}.msgs"), 10, "the message")
    message = json.loads(raw[0])["args"][0]
    assert message["render_id"] == rid
    rig.wait_record(rid, lambda r: r["state"] == "processing" and r["progress"] > 0, timeout_s=30)
    rig.send(message)

    rec = rig.wait_record(rid, timeout_s=60)
    assert rec["state"] == "completed"
    # The duplicate saw the lease taken while the original was rendering...
    wait_for(lambda: "is being rendered by another worker" in rig.logs(), 10, "the duplicate to find the lease")
    # ...and comes back after the render finished; wait until every message is done.
    wait_for(lambda: rig.pending() == 0 and rig.pending(rig.webhook_queue) == 0, 30, "the queues to drain")
    after_first = rig.records.get_raw(rid)
    keys = rig.objects()

    rig.send(message)  # and once more, long after completion
    wait_for(lambda: rig.pending() == 0 and rig.pending(rig.webhook_queue) == 0, 30, "the queues to drain")
    assert rig.records.get_raw(rid) == after_first
    assert rig.objects() == keys == {f"renders/{rid}/{rid}.mp4": rec["size_bytes"]}
    assert rec["attempts"] == 1
    assert len(deliveries(webhook_receiver, rid)) == 1
    assert rig.dead() == [] and "Retrying message" not in rig.logs()  # no retry was spent on duplicates


def test_bad_input_fails_at_once_and_the_worker_keeps_serving(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver
) -> None:
    rig.start_worker()
    good_uri = rig.upload(media["cfr2997"])
    cases: dict[str, tuple[dict[str, Any], str]] = {}

    def case(code: str, **kw: Any) -> None:
        msg = rig.message(kw.pop("uri", good_uri), kw.pop("fmt", "m4a"), webhook=webhook_receiver, **kw)
        cases[msg["render_id"]] = (msg, code)

    case("source_not_found", uri=f"s3://{rig.source_bucket}/assets/missing.mp4")
    case("source_unreadable", uri=rig.upload(media["corrupt"]))
    case("source_no_video", uri=rig.upload(media["audio_wav"]), fmt="mp4")
    case("source_no_audio", uri=rig.upload(media["noaudio"]), fmt="mp3")
    case("invalid_job", segments=[(0.0, 1.0), (300.0, 301.0)])  # past the end of a 20 s source
    case("invalid_job", segments=[(3.0, 4.0), (1.0, 2.0)])  # not sorted
    bad_output = rig.message(good_uri, "m4a", webhook=webhook_receiver)
    bad_output["output"]["format"] = "avi"
    cases[bad_output["render_id"]] = (bad_output, "invalid_job")

    # Messages with no render id: nothing to record, nowhere to report; dead-lettered.
    no_id = rig.message(good_uri, "m4a", webhook=webhook_receiver)
    del no_id["render_id"]
    garbage_ids = [rig.send("garbage"), rig.send(["not", "a", "dict"]), rig.send(no_id)]
    for msg, _ in cases.values():
        rig.submit(msg)
    good = rig.enqueue(good_uri, "m4a", segments=[(1.0, 2.0)], webhook=webhook_receiver)

    assert rig.wait_record(good)["state"] == "completed"  # served after all of the bad ones
    for rid, (_, code) in cases.items():
        rec = rig.wait_record(rid)
        assert (rec["state"], rec["error_code"]) == ("failed", code), rec
        assert rec["error_message"] and rec["attempts"] <= 1
    wait_for(lambda: len(rig.dead()) == 3, 10, "the dead-lettered messages")
    assert sorted(m["message_id"] for m in rig.dead()) == sorted(garbage_ids)
    wait_for(lambda: rig.pending() == 0 and rig.pending(rig.webhook_queue) == 0, 30, "the queues to drain")
    assert rig.delayed() == [] and "Retrying message" not in rig.logs()  # Dramatiq retried nothing
    log = rig.logs()
    assert log.count("dead-lettered") == 3 and "has no usable render_id" in log
    assert SECRET.removeprefix("whsec_") not in log  # Dramatiq logs the failed messages, secrets redacted

    events = verified_events(webhook_receiver)
    assert sorted(events) == sorted([*cases, good])
    for rid, (_, code) in cases.items():
        assert [(e["type"], e["data"]["error_code"]) for e in events[rid]] == [("render.failed", code)]
        assert events[rid][0]["data"]["error_message"]
    assert [e["type"] for e in events[good]] == ["render.completed"]
    assert list(rig.objects()) == [f"renders/{good}/{good}.m4a"]  # failures wrote nothing


def test_a_busy_worker_does_not_hoard_queued_jobs(rig: Farm, media: dict[str, Path]) -> None:
    """A one-thread worker holds only the job it renders; the next waits in Redis for any idle worker."""
    uri = rig.upload(media["cfr30"])
    first = rig.enqueue(uri, "mp4", segments=[(0.0, 100.0)], smart=False)  # ~10 s of encoding on two cores
    second = rig.enqueue(uri, "m4a", segments=[(1.0, 2.0)])
    rig.start_worker()  # both are queued when it boots: it may take only one
    rig.wait_record(first, lambda r: r["state"] == "processing" and r["progress"] > 0, timeout_s=30)
    waiting = rig.record(second)
    assert waiting is not None and waiting["state"] == "pending"
    assert len(rig.queue_ids()) == 1  # still in Redis, not in the busy worker's memory
    rig.start_worker()
    done = rig.wait_record(second, timeout_s=30)
    still = rig.record(first)
    assert done["state"] == "completed" and still is not None and still["state"] == "processing", still
