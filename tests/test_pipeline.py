"""``pipeline.process``: one delivery of a job, with in-memory storage and records and the real renderer.

The queue layer is not involved: what Dramatiq would do with a raised error is
decided by ``actors.py`` and checked end to end in test_queue_*.py. Here the
contract is the pipeline's own: which record, which event, raise or return.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from farm import SECRET

from worker.errors import Cancelled, ErrorCode, EventNotQueued, LeaseBusy, StorageError, UnrecordableJob
from worker.jobs import Webhook
from worker.pipeline import (
    COMPLETED,
    FAILED,
    Deps,
    Observer,
    Outcome,
    download_url,
    process,
)
from worker.records import MemoryRecordStore
from worker.render import render
from worker.settings import Settings
from worker.storage import MemoryStorage

SOURCE = "s3://media/assets/ast_1/source.wav"
HOOK = {"url": "http://127.0.0.1:9/hook", "secret": SECRET}


@dataclasses.dataclass
class Sent:
    event_type: str
    render_id: str
    asset_id: str
    webhook: Webhook | None
    extra: dict[str, Any]


class Recorder:
    """An event sender that keeps what it was handed (and can be made to fail)."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.fail_with: Exception | None = None
        self.failures = 0  # how many more calls fail with fail_with (0: every one, while it is set)

    def __call__(self, event_type: str, render_id: str, asset_id: str, webhook: Webhook | None, extra: Any) -> None:
        if self.fail_with is not None:
            error = self.fail_with
            if self.failures:
                self.failures -= 1
                if not self.failures:
                    self.fail_with = None
            raise error
        self.sent.append(Sent(event_type, render_id, asset_id, webhook, dict(extra)))


class Clock:
    """The record store's clock, moved by hand: leases lapse when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def deps(media: dict[str, Path], clock: Clock, tmp_path: Path) -> Deps:
    storage = MemoryStorage(output_bucket="out", attempts=1, base_delay_s=0.0, max_delay_s=0.0)
    storage.seed(SOURCE, media["audio_wav"].read_bytes())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return Deps(
        # HOOK is a loopback URL: allowed here explicitly, as on-premise deployments may.
        # A work dir of its own: scratch directories are named by render id, and every test uses rnd_1.
        settings=Settings(progress_interval_s=0.05, lease_ttl_s=30, webhook_allow_private=True, work_dir=str(scratch)),
        records=MemoryRecordStore(clock=clock),
        storage=storage,
        send_event=Recorder(),
    )


def sent(deps: Deps) -> list[Sent]:
    assert isinstance(deps.send_event, Recorder)
    return deps.send_event.sent


def job(render_id: str = "rnd_1", **changes: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "version": 1,
        "render_id": render_id,
        "asset_id": "ast_1",
        "cut_id": "cut_1",
        "source": {"uri": SOURCE},
        "segments": [{"start": 1.0, "end": 2.5}, {"start": 4.0, "end": 5.0}],
        "output": {"format": "m4a", "resolution": None, "video_bitrate": None, "audio_bitrate": None},
        "webhook": HOOK,
    }
    msg.update(changes)
    return msg


def test_a_job_renders_stores_completes_and_sends_one_event(deps: Deps) -> None:
    assert process(job(), deps, last_attempt=False) is Outcome.COMPLETED
    rec = deps.records.get("rnd_1")
    assert rec is not None
    assert rec["state"] == "completed" and rec["attempts"] == 1 and rec["encoder"] == "cpu"
    assert rec["output_key"] == "renders/rnd_1/rnd_1.m4a" and abs(rec["duration_s"] - 2.5) < 0.05
    assert isinstance(deps.storage, MemoryStorage)
    obj = deps.storage.get("renders/rnd_1/rnd_1.m4a")
    assert obj.content_type == "audio/mp4" and len(obj.data) == rec["size_bytes"] > 0
    assert [(e.event_type, e.render_id, e.asset_id) for e in sent(deps)] == [(COMPLETED, "rnd_1", "ast_1")]
    assert sent(deps)[0].webhook == Webhook(HOOK["url"], HOOK["secret"])
    assert deps.records.event_marked("rnd_1")
    url = download_url(deps.storage, rec, deps.settings.url_expiry_s)
    assert url is not None and "rnd_1.m4a" in url and "attachment" in url


def test_invalid_job_with_a_render_id_fails_the_record_and_sends_one_event(deps: Deps) -> None:
    msg = job(segments=[{"start": 3.0, "end": 2.0}])
    assert process(msg, deps, last_attempt=False) is Outcome.FAILED
    rec = deps.records.get("rnd_1")
    assert rec is not None
    assert rec["state"] == "failed" and rec["error_code"] == "invalid_job" and rec["attempts"] == 0
    assert "segments[0]" in rec["error_message"]
    assert rec["asset_id"] == "ast_1" and rec["output"]["format"] == "m4a"  # salvaged from the message
    assert [e.event_type for e in sent(deps)] == [FAILED]
    assert sent(deps)[0].extra["error_code"] == "invalid_job"
    assert sent(deps)[0].webhook is not None  # the webhook itself was valid, so it is told
    assert isinstance(deps.storage, MemoryStorage) and deps.storage.calls["fetch"] == 0  # no work started


def test_invalid_job_with_a_bad_webhook_still_fails_the_record(deps: Deps) -> None:
    msg = job(webhook={"url": "ftp://nope", "secret": SECRET})
    assert process(msg, deps, last_attempt=False) is Outcome.FAILED
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["error_code"] == "invalid_job" and "webhook.url" in rec["error_message"]
    assert [(e.event_type, e.webhook) for e in sent(deps)] == [(FAILED, None)]  # nowhere to deliver it


def test_a_webhook_with_an_extra_key_fails_the_record_and_is_still_told(deps: Deps) -> None:
    # The url and secret pass every check on their own, so the tenant hears about the failure;
    # the extra key's value (a secret) appears nowhere.
    msg = job(webhook={**HOOK, "signing_key": SECRET}, output={"format": "m4a", "resolution": {}, "x": SECRET})
    assert process(msg, deps, last_attempt=False) is Outcome.FAILED
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["error_code"] == "invalid_job"
    assert rec["output"] == {"format": "m4a"}  # salvaged: only what passes its own check
    assert [(e.event_type, e.webhook) for e in sent(deps)] == [(FAILED, Webhook(HOOK["url"], HOOK["secret"]))]
    stored = repr(deps.records.get_raw("rnd_1")) + repr(sent(deps)[0].extra)
    assert SECRET[6:20] not in stored


def test_salvaged_fields_are_only_valid_ones(deps: Deps) -> None:
    msg = job(asset_id="ast_1\n", cut_id="x" * 10_000, source={"uri": "s3:"}, output={"format": "webm"})
    assert process(msg, deps, last_attempt=False) is Outcome.FAILED
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "failed"
    assert rec.get("asset_id") is None and rec.get("cut_id") is None and rec.get("output") is None
    assert [(e.event_type, e.asset_id) for e in sent(deps)] == [(FAILED, "")]


def test_sources_outside_the_allowed_buckets_are_invalid_jobs(deps: Deps) -> None:
    deps.settings = deps.settings.replace(source_buckets="uploads, archive")
    assert process(job(), deps, last_attempt=False) is Outcome.FAILED
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["error_code"] == "invalid_job" and "bucket 'media'" in rec["error_message"]
    assert isinstance(deps.storage, MemoryStorage) and deps.storage.calls["size"] == deps.storage.calls["fetch"] == 0


def test_stored_error_messages_are_capped_and_redacted(deps: Deps) -> None:
    # A message from code that forgot to use excerpt(): the record and the event still get a bounded, secret-free one.
    def leaky(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("x" * 5000 + " " + SECRET)

    deps.renderer = leaky
    assert process(job(), deps, last_attempt=False) is Outcome.FAILED
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["error_code"] == "internal_error"
    assert len(rec["error_message"]) <= 300 and SECRET[6:] not in rec["error_message"]
    assert sent(deps)[0].extra["error_message"] == rec["error_message"]


@pytest.mark.parametrize(
    "raw", ["garbage", ["not", "a", "dict"], None, 42, {"version": 1}, {"render_id": "../../etc", "version": 1}]
)
def test_garbage_without_a_render_id_is_unrecordable(deps: Deps, raw: Any) -> None:
    with pytest.raises(UnrecordableJob) as info:
        process(raw, deps, last_attempt=False)
    assert info.value.code is ErrorCode.INVALID_JOB and not info.value.transient
    assert "render_id" in info.value.message
    assert sent(deps) == []
    assert isinstance(deps.records, MemoryRecordStore) and deps.records.render_ids() == []


def test_transient_storage_error_with_retries_left_raises_and_releases_the_lease(deps: Deps) -> None:
    assert isinstance(deps.storage, MemoryStorage)
    deps.storage.fail_next(1, "fetch")
    with pytest.raises(StorageError) as info:
        process(job(), deps, last_attempt=False, token="first")
    assert info.value.transient
    rec = deps.records.get("rnd_1")
    assert rec is not None
    assert rec["state"] == "processing" and rec["attempts"] == 1 and "retrying after" in rec["error_message"]
    assert sent(deps) == []
    # The lease was released: the retry (another token) starts at once instead of waiting for it to lapse.
    assert process(job(), deps, last_attempt=False, token="second") is Outcome.COMPLETED
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "completed" and rec["attempts"] == 2
    assert [e.event_type for e in sent(deps)] == [COMPLETED]


def test_transient_storage_error_on_the_last_attempt_fails_with_storage_failed(deps: Deps) -> None:
    assert isinstance(deps.storage, MemoryStorage)
    deps.storage.fail_next(1, "put")
    assert process(job(), deps, last_attempt=True) is Outcome.FAILED
    rec = deps.records.get("rnd_1")
    assert rec is not None
    assert rec["state"] == "failed" and rec["error_code"] == "storage_failed" and rec["attempts"] == 1
    assert [(e.event_type, e.extra["error_code"]) for e in sent(deps)] == [(FAILED, "storage_failed")]
    assert deps.storage.objects.keys() == {("media", "assets/ast_1/source.wav")}  # no output


def test_duplicate_of_a_completed_job_changes_nothing(deps: Deps) -> None:
    assert process(job(), deps, last_attempt=False) is Outcome.COMPLETED
    before = deps.records.get_raw("rnd_1")
    assert isinstance(deps.storage, MemoryStorage)
    fetches = deps.storage.calls["fetch"]
    assert process(job(), deps, last_attempt=False) is Outcome.DUPLICATE
    assert deps.records.get_raw("rnd_1") == before
    assert deps.storage.calls["fetch"] == fetches  # nothing was fetched or rendered again
    assert len(sent(deps)) == 1


def test_an_event_the_broker_cannot_take_yet_is_handed_over_again_in_the_same_delivery(deps: Deps) -> None:
    """The output is stored and the record completed: the event is retried in place until the broker answers."""
    recorder = deps.send_event
    assert isinstance(recorder, Recorder)
    recorder.fail_with, recorder.failures = ConnectionError("broker down"), 2
    assert process(job(), deps, last_attempt=False) is Outcome.COMPLETED
    assert [e.event_type for e in sent(deps)] == [COMPLETED] and deps.records.event_marked("rnd_1")
    assert process(job(), deps, last_attempt=False) is Outcome.DUPLICATE
    assert len(sent(deps)) == 1


def test_duplicate_of_a_finished_job_whose_event_was_lost_sends_it(deps: Deps) -> None:
    """On shutdown (or past the time limit) the event is left to the redelivery, which sends it once."""
    recorder = deps.send_event
    assert isinstance(recorder, Recorder)
    recorder.fail_with = ConnectionError("broker down")
    shutdown = threading.Event()
    threading.Timer(1.0, shutdown.set).start()
    with pytest.raises(EventNotQueued) as info:  # transient: the queue redelivers
        process(job(), deps, last_attempt=False, cancel=shutdown)
    assert info.value.transient
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "completed" and not deps.records.event_marked("rnd_1")
    recorder.fail_with = None
    assert process(job(), deps, last_attempt=False) is Outcome.DUPLICATE
    assert [e.event_type for e in sent(deps)] == [COMPLETED] and deps.records.event_marked("rnd_1")
    assert process(job(), deps, last_attempt=False) is Outcome.DUPLICATE
    assert len(sent(deps)) == 1


def test_a_render_leased_elsewhere_is_busy(deps: Deps) -> None:
    assert deps.records.start("rnd_1", "other-worker", 30, {}).status == "started"
    with pytest.raises(LeaseBusy) as info:
        process(job(), deps, last_attempt=True)
    assert info.value.transient
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["attempts"] == 1  # the other worker's attempt only
    assert sent(deps) == []


def test_permanent_source_errors_fail_at_once(deps: Deps, media: dict[str, Path]) -> None:
    assert isinstance(deps.storage, MemoryStorage)
    deps.storage.seed("s3://media/corrupt.mp4", media["corrupt"].read_bytes())
    cases = {
        "rnd_missing": (job("rnd_missing", source={"uri": "s3://media/nope.wav"}), "source_not_found"),
        "rnd_corrupt": (job("rnd_corrupt", source={"uri": "s3://media/corrupt.mp4"}), "source_unreadable"),
        "rnd_novideo": (job("rnd_novideo", output={"format": "mp4"}), "source_no_video"),
        "rnd_range": (job("rnd_range", segments=[{"start": 0, "end": 1}, {"start": 300, "end": 301}]), "invalid_job"),
    }
    for render_id, (msg, code) in cases.items():
        assert process(msg, deps, last_attempt=False) is Outcome.FAILED, render_id
        rec = deps.records.get(render_id)
        assert rec is not None and (rec["state"], rec["error_code"], rec["attempts"]) == ("failed", code, 1)
    assert sorted((e.render_id, e.extra["error_code"]) for e in sent(deps)) == sorted(
        (r, code) for r, (_, code) in cases.items()
    )


def test_cancel_releases_the_lease_and_raises_even_on_the_last_attempt(deps: Deps) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        process(job(), deps, last_attempt=True, cancel=cancel)
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "processing"
    assert deps.records.start("rnd_1", "next-worker", 30, {}).status == "started"
    assert sent(deps) == []


def test_a_shutdown_stops_the_source_download_part_way(deps: Deps) -> None:
    """SIGTERM need not wait for a large source to arrive: the download itself stops, and the render goes back
    on the queue (Cancelled) with its lease released."""
    assert isinstance(deps.storage, MemoryStorage)
    deps.storage.slow_fetch(30.0)
    shutdown = threading.Event()
    threading.Timer(0.3, shutdown.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        process(job(), deps, last_attempt=True, cancel=shutdown)
    assert time.monotonic() - started < 5  # not the 30 s the download would take
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "processing"
    assert deps.records.start("rnd_1", "next-worker", 30, {}).status == "started"
    assert sent(deps) == [] and deps.storage.calls["put"] == 0


def test_a_cancel_stops_the_source_download_part_way(deps: Deps) -> None:
    assert isinstance(deps.storage, MemoryStorage)
    deps.storage.slow_fetch(30.0)
    threading.Timer(0.3, lambda: deps.records.cancel("rnd_1", "not this one")).start()
    started = time.monotonic()
    assert process(job(), deps, last_attempt=False) is Outcome.CANCELLED
    assert time.monotonic() - started < 5  # the watch's half-second poll, not the 30 s download
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "cancelled"
    assert [e.event_type for e in sent(deps)] == ["render.cancelled"]


def test_time_limit_fails_with_timeout_and_leaves_no_output(deps: Deps, tmp_path: Path) -> None:
    # RENDER_TIME_LIMIT_S is at least 1 s (settings refuse less), so the real
    # renderer is handed a deadline that has already passed instead.
    def out_of_time(*args: Any, **kwargs: Any) -> Any:
        return render(*args, **{**kwargs, "deadline": time.monotonic()})

    deps.renderer = out_of_time
    assert process(job(), deps, last_attempt=False) is Outcome.FAILED
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["error_code"] == "timeout"
    assert isinstance(deps.storage, MemoryStorage) and deps.storage.calls["put"] == 0
    assert list(Path(deps.settings.work_dir).iterdir()) == []  # scratch files removed


def test_an_unexpected_error_fails_with_internal_error_instead_of_looping(deps: Deps) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("bug")

    deps.renderer = broken
    assert process(job(), deps, last_attempt=False) is Outcome.FAILED
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["error_code"] == "internal_error" and "ZeroDivisionError" in rec["error_message"]
    assert [e.event_type for e in sent(deps)] == [FAILED]


def test_progress_is_written_while_rendering(deps: Deps, media: dict[str, Path]) -> None:
    seen: list[float] = []
    records = deps.records
    real_progress = records.progress

    def spy(render_id: str, token: str, ratio: float, ttl: float) -> bool:
        seen.append(ratio)
        return real_progress(render_id, token, ratio, ttl)

    records.progress = spy  # type: ignore[method-assign]
    assert process(job(segments=None), deps, last_attempt=False) is Outcome.COMPLETED
    assert seen and max(seen) <= 1.0 and seen == sorted(seen)


class CountingRenderer:
    """The real renderer, counting its runs."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.runs += 1
        return render(*args, **kwargs)


def test_a_retry_after_a_failed_upload_uploads_the_output_already_rendered(deps: Deps) -> None:
    assert isinstance(deps.storage, MemoryStorage)
    renderer = deps.renderer = CountingRenderer()
    deps.storage.fail_next(1, "put")
    with pytest.raises(StorageError):
        process(job(), deps, last_attempt=False, token="first")
    assert renderer.runs == 1
    assert [p.name for p in Path(deps.settings.work_dir).iterdir()] == ["job-rnd_1"]  # kept for the retry
    assert process(job(), deps, last_attempt=False, token="second") is Outcome.COMPLETED
    assert renderer.runs == 1  # the retry did not render again
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "completed" and rec["attempts"] == 2
    obj = deps.storage.get("renders/rnd_1/rnd_1.m4a")
    assert len(obj.data) == rec["size_bytes"] > 0
    assert list(Path(deps.settings.work_dir).iterdir()) == []  # gone once the render is final


def test_a_kept_output_is_not_reused_for_a_different_job(deps: Deps) -> None:
    assert isinstance(deps.storage, MemoryStorage)
    renderer = deps.renderer = CountingRenderer()
    deps.storage.fail_next(1, "put")
    with pytest.raises(StorageError):
        process(job(), deps, last_attempt=False, token="first")
    # The same render id with another cut (a message edited by hand, say): render it afresh.
    other = job(segments=[{"start": 0.5, "end": 1.5}])
    assert process(other, deps, last_attempt=False, token="second") is Outcome.COMPLETED
    assert renderer.runs == 2
    rec = deps.records.get("rnd_1")
    assert rec is not None and abs(rec["duration_s"] - 1.0) < 0.05


def test_the_last_attempt_leaves_no_scratch_behind(deps: Deps) -> None:
    assert isinstance(deps.storage, MemoryStorage)
    deps.storage.fail_next(1, "put")
    assert process(job(), deps, last_attempt=True) is Outcome.FAILED
    assert list(Path(deps.settings.work_dir).iterdir()) == []


def test_a_lease_lost_mid_render_steps_aside_without_uploading(deps: Deps, clock: Clock) -> None:
    """This worker stalls past its lease, another takes the render over: this one must not store or finish it."""
    records = deps.records

    def stalled(*args: Any, **kwargs: Any) -> Any:
        result = render(*args, **kwargs)
        clock.now += deps.settings.lease_ttl_s + 1  # the stall: our lease lapses
        assert records.start("rnd_1", "other-worker", 30, {}).status == "started"
        time.sleep(deps.settings.progress_interval_s * 2)
        kwargs["on_progress"](1.0)  # the next progress write finds the lease gone
        return result

    deps.renderer = stalled
    assert process(job(), deps, last_attempt=False, token="stalled-worker") is Outcome.DUPLICATE
    assert isinstance(deps.storage, MemoryStorage) and deps.storage.calls["put"] == 0  # nothing stored
    rec = records.get("rnd_1")
    assert rec is not None and (rec["state"], rec["attempts"]) == ("processing", 2)  # the other worker's now
    assert sent(deps) == []  # and no event: the other worker sends it when it finishes
    assert records.start("rnd_1", "stalled-worker", 30, {}).status == "busy"


def test_missing_credentials_fail_the_job_once_as_a_configuration_error(
    deps: Deps, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No credentials is the operator's to fix: retrying (six renders' worth) cannot help."""
    from worker.storage.s3 import S3Storage

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Nothing listens there: no request is ever made, since signing fails first.
    deps.storage = S3Storage(deps.settings.replace(s3_endpoint_url="http://127.0.0.1:9"), attempts=4)
    renderer = deps.renderer = CountingRenderer()
    assert process(job(), deps, last_attempt=False) is Outcome.FAILED  # not raised: the queue does not retry
    rec = deps.records.get("rnd_1")
    assert rec is not None
    assert (rec["state"], rec["error_code"], rec["attempts"]) == ("failed", "internal_error", 1)
    assert "credentials" in rec["error_message"] and "configuration" in rec["error_message"]
    assert renderer.runs == 0
    assert [(e.event_type, e.extra["error_code"]) for e in sent(deps)] == [(FAILED, "internal_error")]


def test_the_download_is_named_after_the_source(deps: Deps, media: dict[str, Path]) -> None:
    """``<source name>.cut.<ext>`` (``.full.`` without a cut), non-ASCII kept by RFC 6266's ``filename*``."""
    import urllib.parse

    assert isinstance(deps.storage, MemoryStorage)
    uri = "s3://media/assets/ast_1/Entrevista%20%E2%80%93%20d%C3%ADa%201.wav"
    deps.storage.seed(uri, media["audio_wav"].read_bytes())
    assert process(job(source={"uri": uri}), deps, last_attempt=False) is Outcome.COMPLETED
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["download_name"] == "Entrevista – día 1.cut.m4a"
    url = download_url(deps.storage, rec, 60)
    assert url is not None
    disposition = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["response-content-disposition"][0]
    assert 'filename="Entrevista_d_a_1.cut.m4a"' in disposition
    assert urllib.parse.unquote(disposition.split("filename*=UTF-8''")[1]) == "Entrevista – día 1.cut.m4a"
    assert rec["output_key"].endswith("/rnd_1.m4a")  # the stored object keeps the render id's name
    assert process(job("rnd_2", segments=None), deps, last_attempt=False) is Outcome.COMPLETED
    assert (deps.records.get("rnd_2") or {})["download_name"] == "source.full.m4a"


def test_a_loudness_target_is_measured_applied_and_recorded(deps: Deps) -> None:
    msg = job(output={"format": "m4a", "loudness": "podcast"})
    assert process(msg, deps, last_attempt=False) is Outcome.COMPLETED
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "completed" and rec["output"]["loudness"] == "podcast"
    report = rec["loudness"]
    assert report["target"] == "podcast" and report["mode"] in ("linear", "limited")
    assert abs(report["output"]["integrated"] + 16) <= 0.2 and report["input"]["integrated"] < -16
    plain = job("rnd_2")
    assert process(plain, deps, last_attempt=False) is Outcome.COMPLETED
    rec2 = deps.records.get("rnd_2")
    assert rec2 is not None and rec2["loudness"] is None and "loudness" not in rec2["output"]


class FrameCounts(Observer):
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []

    def frames(self, fmt: str, copied: int, encoded: int) -> None:
        self.seen.append((fmt, copied, encoded))


def test_a_smart_render_records_and_counts_its_copied_and_encoded_frames(deps: Deps, media: dict[str, Path]) -> None:
    assert isinstance(deps.storage, MemoryStorage)
    uri = "s3://media/assets/ast_1/camera.mp4"
    deps.storage.seed(uri, media["cam_gop1s"].read_bytes())
    deps.observer = FrameCounts()
    cut = [{"start": 0.43, "end": 3.5}, {"start": 4.0, "end": 7.9}]
    for rid, smart in (("rnd_1", None), ("rnd_2", False)):
        output = {"format": "mp4", **({} if smart is None else {"smart": smart})}
        assert process(job(rid, source={"uri": uri}, segments=cut, output=output), deps, last_attempt=False) is (
            Outcome.COMPLETED
        )
    first, second = deps.records.get("rnd_1"), deps.records.get("rnd_2")
    assert first is not None and second is not None
    total = first["frames"]["copied"] + first["frames"]["encoded"]
    # Both pieces hold whole 1 s GOPs: 0.43-3.5 s copies 1-3 s, 4.0-7.9 s copies 4-7 s.
    assert first["frames"] == {"copied": 60 + 90, "encoded": total - 150} and first["encoder"] == "cpu"
    assert second["frames"] == {"copied": 0, "encoded": total} and second["output"]["smart"] is False
    assert "smart" not in first["output"]  # the default, absent as before the option existed
    assert deps.observer.seen == [("mp4", 150, total - 150), ("mp4", 0, total)]
