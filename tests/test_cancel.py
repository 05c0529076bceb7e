"""Cancelling a render (issue 12): the pipeline's side with in-memory collaborators, then a real farm.

The store's side (the guarded ``cancelled`` transition, the race with completion
run many times) is in test_records.py, on both stores. Here:

* unit: :func:`pipeline.process` with a cancel landing while queued, mid-render,
  after the render, during the upload, after a crash, after completion; the
  event goes out once and counts once;
* real services, on the default settings (only the farm's short backoffs):
  ``render-worker`` subprocesses, redis-server, the S3 server and a loopback
  webhook receiver; a cancel through the package function and through
  ``render-cli cancel``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from farm import Farm, WorkerProcess, alive, farm, ffmpeg_children, verified_events, wait_for

# deps (and clock, which it uses) are test_pipeline's fixtures: the same in-memory collaborators.
from test_pipeline import clock, deps, job, sent  # noqa: F401

from worker import webhooks
from worker.errors import Cancelled, StorageError
from worker.pipeline import CANCEL_POLL_S, CANCELLED, COMPLETED, Deps, Observer, Outcome, process
from worker.render import render
from worker.storage import MemoryStorage

if TYPE_CHECKING:
    from services import RedisServer, S3Server, WebhookReceiver

KEY = "renders/rnd_1/rnd_1.m4a"


class Counting(Observer):
    """The pipeline's metric hooks, counted: a cancelled render must count once, and never as a failure."""

    def __init__(self) -> None:
        self.cancels: list[str] = []
        self.failures: list[str] = []

    def cancelled(self, fmt: str) -> None:
        self.cancels.append(fmt)

    def failed(self, code: str, fmt: str) -> None:
        self.failures.append(code)


class WaitingRenderer:
    """Stands in for a long ffmpeg run: reports progress and stops only through its cancel event, as ffmpeg.run."""

    def __init__(self) -> None:
        self.runs = 0
        self.running = threading.Event()
        self.stopped_at: float | None = None

    def __call__(self, *args: Any, on_progress: Any, cancel: threading.Event, **kwargs: Any) -> Any:
        self.runs += 1
        self.running.set()
        give_up = time.monotonic() + 30
        while time.monotonic() < give_up:
            if cancel.wait(0.01):
                self.stopped_at = time.monotonic()
                raise Cancelled("the render was cancelled")
            on_progress(0.5)
        raise AssertionError("the render was never stopped")


@pytest.fixture
def counted(deps: Deps) -> Counting:  # noqa: F811 - deps is test_pipeline's fixture
    deps.observer = Counting()
    return deps.observer


def scratch_dirs(d: Deps) -> list[Path]:
    return list(Path(d.settings.work_dir).glob("job-*"))


def storage_of(d: Deps) -> MemoryStorage:
    assert isinstance(d.storage, MemoryStorage)
    return d.storage


# -- unit: pipeline.process ---------------------------------------------------------------------------------------


def test_a_render_cancelled_mid_encode_stops_within_a_second_and_uploads_nothing(
    deps: Deps,  # noqa: F811
    counted: Counting,
) -> None:
    renderer = deps.renderer = WaitingRenderer()
    got: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: got.update(outcome=process(job(), deps, last_attempt=False)))
    worker.start()
    assert renderer.running.wait(10)
    time.sleep(0.3)
    asked = time.monotonic()
    assert deps.records.cancel("rnd_1", "wrong cut").changed
    worker.join(10)
    assert got["outcome"] is Outcome.CANCELLED  # returned, not raised: the queue acknowledges it
    assert renderer.stopped_at is not None
    noticed_s = renderer.stopped_at - asked
    assert noticed_s <= CANCEL_POLL_S + 0.5, noticed_s
    rec = deps.records.get("rnd_1")
    assert rec is not None and (rec["state"], rec["cancel_reason"], rec["attempts"]) == ("cancelled", "wrong cut", 1)
    assert storage_of(deps).calls["put"] == 0 and (storage_of(deps).output_bucket, KEY) not in deps.storage.objects
    assert scratch_dirs(deps) == []
    assert [(e.event_type, e.render_id, e.asset_id, e.extra) for e in sent(deps)] == [
        (CANCELLED, "rnd_1", "ast_1", {"cancel_reason": "wrong cut"})
    ]
    assert counted.cancels == ["m4a"] and counted.failures == []


def test_a_queued_render_cancelled_is_never_started_and_its_event_goes_once(
    deps: Deps,  # noqa: F811
    counted: Counting,
) -> None:
    renderer = deps.renderer = WaitingRenderer()
    assert deps.records.create("rnd_1", {"asset_id": "ast_1", "output": {"format": "m4a"}})
    assert deps.records.cancel("rnd_1", "credits ran out").changed
    assert process(job(), deps, last_attempt=False) is Outcome.CANCELLED
    # A redelivery (or a duplicate message) of the same job: still not started, and no second event.
    assert process(job(), deps, last_attempt=False) is Outcome.CANCELLED
    assert renderer.runs == 0
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["started_at"] is None and rec["attempts"] == 0 and rec["state"] == "cancelled"
    assert [(e.event_type, e.extra) for e in sent(deps)] == [(CANCELLED, {"cancel_reason": "credits ran out"})]
    assert counted.cancels == ["m4a"]
    assert storage_of(deps).calls["fetch"] == 0 and storage_of(deps).calls["put"] == 0


def test_a_cancel_after_the_render_uploads_nothing(deps: Deps) -> None:  # noqa: F811
    """The cancel lands between the end of ffmpeg and the upload: checked once more before uploading."""

    def render_then_cancel(*args: Any, **kwargs: Any) -> Any:
        result = render(*args, **kwargs)
        assert deps.records.cancel("rnd_1", "late").changed
        return result

    deps.renderer = render_then_cancel
    assert process(job(), deps, last_attempt=False) is Outcome.CANCELLED
    assert storage_of(deps).calls["put"] == 0
    assert scratch_dirs(deps) == []  # the rendered output went with its scratch directory
    assert [e.event_type for e in sent(deps)] == [CANCELLED]


def test_a_cancel_that_wins_the_race_during_the_upload_deletes_the_object(deps: Deps) -> None:  # noqa: F811
    """The upload finished, then the cancel beat ``complete``: the record says cancelled, so no object stays."""
    storage = storage_of(deps)
    real_put = storage.put

    def put_then_cancel(path: Path, key: str, content_type: str, metadata: Any = None) -> None:
        real_put(path, key, content_type, metadata)
        assert deps.records.cancel("rnd_1", "race").changed

    storage.put = put_then_cancel  # type: ignore[method-assign]
    assert process(job(), deps, last_attempt=False) is Outcome.CANCELLED
    assert storage.calls["put"] == 1 and (storage.output_bucket, KEY) not in storage.objects
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "cancelled" and rec["size_bytes"] is None
    assert [e.event_type for e in sent(deps)] == [CANCELLED]


def test_a_cancel_after_completion_changes_nothing(deps: Deps) -> None:  # noqa: F811
    assert process(job(), deps, last_attempt=False) is Outcome.COMPLETED
    before = deps.records.get_raw("rnd_1")
    res = deps.records.cancel("rnd_1", "too late")
    assert (res.changed, res.status, res.state) == (False, "terminal", "completed")
    assert process(job(), deps, last_attempt=False) is Outcome.DUPLICATE
    assert deps.records.get_raw("rnd_1") == before
    assert storage_of(deps).get(KEY).data
    assert [e.event_type for e in sent(deps)] == [COMPLETED]


def test_a_crashed_workers_render_cancelled_meanwhile_is_not_resurrected(deps: Deps) -> None:  # noqa: F811
    """A worker started it (and even uploaded) and died; the cancel came; the redelivery only cleans up and tells."""
    renderer = deps.renderer = WaitingRenderer()
    assert deps.records.start("rnd_1", "dead-worker", 30, {"asset_id": "ast_1", "output": {"format": "m4a"}})
    storage = storage_of(deps)
    source = storage.objects[("media", "assets/ast_1/source.wav")]
    storage.seed(f"s3://{storage.output_bucket}/{KEY}", source.data, source.content_type)
    assert deps.records.cancel("rnd_1", "stop").state == "processing"
    assert process(job(), deps, last_attempt=False) is Outcome.CANCELLED
    assert renderer.runs == 0
    assert (storage.output_bucket, KEY) not in storage.objects
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "cancelled" and rec["attempts"] == 1
    assert [e.event_type for e in sent(deps)] == [CANCELLED]


def test_a_scratch_directory_kept_for_a_retry_goes_with_the_cancel(deps: Deps) -> None:  # noqa: F811
    storage_of(deps).fail_next(1, "put")
    with pytest.raises(StorageError):
        process(job(), deps, last_attempt=False)
    assert scratch_dirs(deps)  # kept: the retry would upload it without rendering again
    assert deps.records.cancel("rnd_1").changed
    assert process(job(), deps, last_attempt=False) is Outcome.CANCELLED
    assert scratch_dirs(deps) == []
    assert storage_of(deps).calls["put"] == 1  # only the failed one
    assert [e.event_type for e in sent(deps)] == [CANCELLED]


def test_shutdown_is_not_a_cancel(deps: Deps) -> None:  # noqa: F811
    """The worker's own stop event still means "requeue me": the record stays processing for another worker."""
    shutdown = threading.Event()
    shutdown.set()
    with pytest.raises(Cancelled):
        process(job(), deps, last_attempt=False, cancel=shutdown)
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "processing"
    assert sent(deps) == []


def test_the_cancelled_event_has_the_common_shape() -> None:
    body = json.loads(webhooks.build_event(CANCELLED, "rnd_1", "ast_1", {"cancel_reason": "wrong cut"}))
    assert body == {
        "type": "render.cancelled",
        "data": {"entity_id": "rnd_1", "asset_id": "ast_1", "cancel_reason": "wrong cut"},
    }
    assert webhooks.event_id("rnd_1", CANCELLED) != webhooks.event_id("rnd_1", COMPLETED)


# -- real services, default settings ------------------------------------------------------------------------------

#: The whole 200 s cfr30 source to mp4: far longer than any cancel below takes to land.
WHOLE: list[tuple[float, float]] = [(0.0, 200.0)]
#: How soon after a cancel every ffmpeg of the render must be gone ("within about a second", with slack for CI).
STOP_BOUND_S = 3.0


@pytest.fixture
def rig(redis_server: RedisServer, s3_server: S3Server, tmp_path: Path) -> Any:
    """A farm on the documented defaults: no heartbeat, sweep, lease or poll override."""
    with farm(redis_server, s3_server, tmp_path) as f:
        assert not {"RENDER_BROKER_HEARTBEAT_TIMEOUT_MS", "RENDER_BROKER_SWEEP_INTERVAL_S", "RENDER_LEASE_TTL_S"} & set(
            f.settings_env
        )
        yield f


def ffmpeg_of(worker: WorkerProcess) -> list[int]:
    return [p for pid in worker.worker_pids() for p in ffmpeg_children(pid)]


def encoding(rig: Farm, worker: WorkerProcess, rid: str) -> list[int]:
    """Wait until ffmpeg is really encoding this render; its pids."""
    rig.wait_record(rid, lambda r: r["state"] == "processing" and r["progress"] > 0, timeout_s=60)
    return wait_for(lambda: ffmpeg_of(worker), 10, "ffmpeg to run")


def settled(rig: Farm, receiver: WebhookReceiver, rid: str, timeout_s: float = 30) -> list[dict[str, Any]]:
    """Once the job is acknowledged and its webhook delivered: the verified events of ``rid``."""
    wait_for(lambda: rig.pending() == 0, timeout_s, "the job to be acknowledged")
    wait_for(lambda: rig.pending(rig.webhook_queue) == 0 and verified_events(receiver, [rid]), 30, "the webhook")
    time.sleep(1)  # room for a second event, were one on its way
    return verified_events(receiver, [rid]).get(rid, [])


def scratch_left(rig: Farm) -> list[Path]:
    return list(Path(rig.settings_env["RENDER_WORK_DIR"]).glob("job-*"))


@pytest.mark.services
def test_farm_a_processing_render_cancelled_mid_encode(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver
) -> None:
    worker = rig.start_worker()
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=WHOLE, smart=False, webhook=webhook_receiver)
    encoders = encoding(rig, worker, rid)
    asked = time.monotonic()
    res = rig.records.cancel(rid, "wrong cut")  # the package call the API makes
    assert (res.status, res.state) == ("cancelled", "processing")
    wait_for(lambda: not any(alive(p) for p in encoders), STOP_BOUND_S, "ffmpeg to be stopped", interval_s=0.01)
    stopped_s = time.monotonic() - asked
    events = settled(rig, webhook_receiver, rid)
    print(f"\ncancel → ffmpeg gone: {stopped_s * 1000:.0f} ms")
    assert ffmpeg_of(worker) == []
    assert [(e["type"], e["data"]) for e in events] == [
        ("render.cancelled", {"entity_id": rid, "asset_id": "ast_" + rid[4:], "cancel_reason": "wrong cut"})
    ]
    rec = rig.record(rid)
    assert rec is not None and (rec["state"], rec["attempts"], rec["output_key"]) == ("cancelled", 1, None)
    assert rec["started_at"] and rec["cancelled_at"] >= rec["started_at"]
    assert rig.objects() == {} and scratch_left(rig) == [] and rig.dead() == []
    assert "Retrying" not in worker.log() and "cancelled" in worker.log()


@pytest.mark.services
def test_farm_a_queued_render_cancelled_never_starts(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver
) -> None:
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=[(1.0, 3.0)], webhook=webhook_receiver)
    done = rig.cli("cancel", rid, "--reason", "picked the wrong cut\n")
    printed = json.loads(done.stdout)
    assert printed["state"] == "cancelled" and printed["cancel_reason"] == "picked the wrong cut"
    assert "cancelled render" in done.stderr and "(it was pending)" in done.stderr
    worker = rig.start_worker()
    events = settled(rig, webhook_receiver, rid)
    assert [e["type"] for e in events] == ["render.cancelled"]
    rec = rig.record(rid)
    assert rec is not None and rec["state"] == "cancelled" and rec["started_at"] is None and rec["attempts"] == 0
    assert rig.objects() == {} and rig.dead() == [] and ffmpeg_of(worker) == []


@pytest.mark.services
def test_farm_cancel_of_a_finished_render_changes_nothing_and_of_an_unknown_one_fails(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver
) -> None:
    rig.start_worker()
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=[(1.0, 3.0)], webhook=webhook_receiver)
    rec = rig.wait_record(rid)
    assert rec["state"] == "completed"
    settled(rig, webhook_receiver, rid)
    before = rig.redis.hgetall(f"render:{rid}")
    done = rig.cli("cancel", rid, "--reason", "too late")
    assert "already ended (completed): nothing changed" in done.stderr
    assert json.loads(done.stdout)["state"] == "completed"
    assert rig.redis.hgetall(f"render:{rid}") == before
    assert list(rig.objects()) == [rec["output_key"]]
    assert [e["type"] for e in verified_events(webhook_receiver, [rid])[rid]] == ["render.completed"]

    unknown = rig.cli("cancel", "rnd_NOPE", check=False)
    assert unknown.returncode == 2 and "no render record 'rnd_NOPE'" in unknown.stderr and unknown.stdout == ""
    assert rig.redis.exists("render:rnd_NOPE") == 0


@pytest.mark.services
def test_farm_cancel_racing_with_completion_ends_once(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver
) -> None:
    """The cancel is sent as the render reaches its end: whichever wins, one terminal state and its one event."""
    worker = rig.start_worker()
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=[(5.0, 25.0)], smart=False, webhook=webhook_receiver)
    rig.wait_record(rid, lambda r: r["progress"] >= 0.95 or r["state"] != "processing", timeout_s=120)
    res = rig.records.cancel(rid, "race")
    events = settled(rig, webhook_receiver, rid)
    rec = rig.record(rid)
    assert rec is not None and rec["state"] in ("completed", "cancelled")
    assert res.changed == (rec["state"] == "cancelled")
    assert [e["type"] for e in events] == [f"render.{rec['state']}"]
    assert rig.objects() == ({rec["output_key"]: rec["size_bytes"]} if rec["state"] == "completed" else {})
    assert ffmpeg_of(worker) == [] and scratch_left(rig) == []
    print(f"\ncancel at ≥95 % progress: the record ended {rec['state']}")


@pytest.mark.services
def test_farm_kill_9_after_a_cancel_still_ends_cancelled(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver
) -> None:
    """The worker dies (nothing cleans up), the cancel lands; the redelivery ~75 s later only acks and tells."""
    first = rig.start_worker()
    rid = rig.enqueue(rig.upload(media["cfr30"]), "mp4", segments=WHOLE, smart=False, webhook=webhook_receiver)
    encoders = encoding(rig, first, rid)
    first.kill_group()
    wait_for(lambda: not any(alive(p) for p in encoders), 5, "the orphaned ffmpeg to die")
    res = rig.records.cancel(rid, "stop it")
    assert (res.status, res.state) == ("cancelled", "processing")
    started_at = res.record["started_at"] if res.record else None
    assert rig.pending() == 1  # the dead worker's message, unacked

    second = rig.start_worker()
    # Requeued by the second worker's sweep once the dead one's heartbeat is 60 s old (then within 15 s).
    events = settled(rig, webhook_receiver, rid, timeout_s=60 + 15 + 45)
    assert [e["type"] for e in events] == ["render.cancelled"]
    rec = rig.record(rid)
    assert rec is not None and rec["state"] == "cancelled" and rec["attempts"] == 1 and rec["started_at"] == started_at
    assert rig.objects() == {} and rig.dead() == [] and ffmpeg_of(second) == []
    assert scratch_left(rig) == []  # the dead worker's scratch directory, removed by the redelivery on this host
    assert "cancelled" in second.log()


@pytest.mark.services
def test_farm_cancels_are_counted_once_and_never_as_failures(
    redis_server: RedisServer, s3_server: S3Server, media: dict[str, Path], tmp_path: Path
) -> None:
    """render_jobs_total{outcome="cancelled"} from a live scrape: one per cancelled render, none failed."""
    from services import free_port
    from test_metrics_live import scrape, value

    port = free_port()
    with farm(redis_server, s3_server, tmp_path, metrics_port=port) as f:
        worker = f.start_worker()

        def up() -> Any:
            try:
                return scrape(port)
            except OSError:  # the telemetry process may still be binding its port
                return None

        before = wait_for(up, 30, "the metrics endpoint")
        # From start-up, before any render: the series is there at 0.
        assert ("render_jobs_total" in before) and value(before, "render_jobs_total", outcome="cancelled") == 0
        assert any(lab.get("outcome") == "cancelled" for lab, _ in before["render_jobs_total"])
        uri = f.upload(media["cfr30"])
        running = f.enqueue(uri, "mp4", segments=WHOLE, smart=False)
        encoding(f, worker, running)
        assert f.records.cancel(running, "mid-encode").changed
        queued = f.enqueue(uri, "mp4", segments=WHOLE, smart=False)
        assert f.records.cancel(queued, "queued").changed  # whether or not a worker fetched it already
        wait_for(lambda: f.pending() == 0, 30, "both jobs to be acknowledged")

        def counted() -> Any:
            s = scrape(port)
            return s if value(s, "render_jobs_total", outcome="cancelled") == 2 else None

        s = wait_for(counted, 30, "two cancels in the scrape")
        time.sleep(1)
        s = scrape(port)
    assert value(s, "render_jobs_total", outcome="cancelled", format="mp4") == 2
    assert value(s, "render_jobs_total", outcome="failed") == 0 and value(s, "render_failures_total") == 0
    assert value(s, "render_jobs_total", outcome="completed") == 0
    assert value(s, "render_jobs_in_progress") == 0


@pytest.mark.services
def test_farm_two_copies_of_one_event_at_once_post_once(rig: Farm, webhook_receiver: WebhookReceiver) -> None:
    """Two workers that both found an event unsent hand over two copies: the receiver still gets one POST.

    The receiver answers the first attempt after 2 s, so both copies are in flight together; the second
    finds the first's claim, waits its turn, and then finds the event delivered.
    """
    from farm import SECRET

    webhook_receiver.respond((200, 2.0))
    rig.start_worker(threads=2)
    rid = "rnd_twocopies" + rig.tag
    args = ("render.cancelled", rid, "ast_1", webhook_receiver.url, SECRET, {"cancel_reason": "x"})
    for _ in range(2):
        rig.send(*args, actor="deliver_webhook", queue=rig.webhook_queue)
    wait_for(lambda: rig.pending(rig.webhook_queue) == 0, 30, "both copies to be done")
    time.sleep(0.5)
    events = verified_events(webhook_receiver)
    assert [e["type"] for e in events[rid]] == ["render.cancelled"]
    assert len(webhook_receiver.received) == 1 and rig.dead(rig.webhook_queue) == []
