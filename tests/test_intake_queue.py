"""Malformed job messages on the real services: the record fails as invalid_job, once, briefly, with no secret.

Two layers, both against a real redis-server and a loopback webhook receiver:

* :func:`worker.pipeline.process` with the Redis record store and an event
  sender that delivers at once through :func:`worker.webhooks.deliver_once`
  (loopback allowed explicitly), for a table of malformed messages;
* the whole worker (``render-worker`` subprocess, Dramatiq, the S3 server,
  the webhook queue) for a webhook object hiding a secret in an extra key,
  read back with ``render-cli status`` as an operator would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from farm import SECRET, Farm, deliveries, farm, verified_events, wait_for

from worker import webhooks
from worker.errors import ErrorCode, UnrecordableJob
from worker.jobs import Webhook
from worker.pipeline import Deps, Outcome, process
from worker.records import RedisRecordStore, now_iso
from worker.settings import Settings
from worker.storage import MemoryStorage

if TYPE_CHECKING:
    from services import RedisServer, S3Server, WebhookReceiver

pytestmark = pytest.mark.services

SECRET_BODY = SECRET[len("whsec_") :]
MAX_MESSAGE = 300


def no_secret(text: str) -> bool:
    """No part of a secret: neither the test secret's body nor any whsec_ value."""
    return SECRET_BODY[:16] not in text and "whsec_c" not in text


class DirectSender:
    """Delivers each event at once (what the webhook actor does, without the queue); refuses to lose one."""

    def __call__(
        self, event_type: str, render_id: str, asset_id: str, webhook: Webhook | None, extra: Mapping[str, Any]
    ) -> None:
        if webhook is None:
            return
        body = webhooks.build_event(event_type, render_id, asset_id, extra)
        msg_id = webhooks.event_id(render_id, event_type)
        # The receiver is on loopback: allowed here explicitly, as RENDER_WEBHOOK_ALLOW_PRIVATE does.
        result = webhooks.deliver_once(webhook.url, webhook.secret, msg_id, body, 5.0, allow_private=True)
        assert result.delivered, result.reason


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisRecordStore]:
    records = RedisRecordStore.from_url(redis_server.url, ttl_s=600)
    yield records


@pytest.fixture
def deps(store: RedisRecordStore) -> Deps:
    return Deps(
        settings=Settings(source_buckets="media", webhook_allow_private=True),
        records=store,
        storage=MemoryStorage(output_bucket="out", attempts=1, base_delay_s=0, max_delay_s=0),
        send_event=DirectSender(),
    )


def message(render_id: str, receiver: WebhookReceiver) -> dict[str, Any]:
    return {
        "version": 1,
        "render_id": render_id,
        "asset_id": "ast_" + render_id[4:],
        "cut_id": None,
        "source": {"uri": "s3://media/assets/a/source.mp4"},
        "segments": None,
        "output": {"format": "mp4", "resolution": None, "video_bitrate": None, "audio_bitrate": None},
        "webhook": {"url": receiver.url, "secret": SECRET},
    }


Change = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Change:
    def change(msg: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = msg
        for part in parents:
            target = target[part]
        target[last] = value

    return change


# (name, change, what the error names, whether render.failed can be delivered)
CASES: list[tuple[str, Change, str, bool]] = [
    ("s3-colon", _set("source.uri", "s3:"), "source.uri must look like s3://bucket/key", True),
    ("resolution-object", _set("output.resolution", {}), "output.resolution", True),
    ("secret-in-extra-webhook-key", _set("webhook.signing_key", SECRET), "webhook has unknown field(s)", True),
    ("asset-id-newline", _set("asset_id", "ast_1\n"), "asset_id must be an id", True),
    ("dot-dot-key", _set("source.uri", "s3://media/../renders/rnd_x/rnd_x.mp4"), "'..' path segments", True),
    ("bucket-not-allowed", _set("source.uri", "s3://uploads/assets/a.mp4"), "bucket 'uploads' is not one", True),
    ("secret-in-a-segment", _set("segments", [{"start": SECRET * 1000, "end": 1}]), "segments[0].start", True),
    ("webhook-not-http", _set("webhook.url", "ftp://example.com/" + SECRET), "webhook.url", False),
]


@pytest.mark.parametrize(("name", "change", "needle", "told"), CASES, ids=[c[0] for c in CASES])
def test_malformed_message_fails_its_record_once_briefly_and_secret_free(
    deps: Deps,
    store: RedisRecordStore,
    webhook_receiver: WebhookReceiver,
    name: str,
    change: Change,
    needle: str,
    told: bool,
) -> None:
    render_id = f"rnd_{uuid.uuid4().hex}"
    msg = message(render_id, webhook_receiver)
    change(msg)
    # What the API does before sending the job: a pending record.
    store.create(render_id, {"asset_id": "ast_" + render_id[4:], "created_at": now_iso()})

    assert process(msg, deps, last_attempt=False) is Outcome.FAILED
    rec = store.get(render_id)
    assert rec is not None
    assert (rec["state"], rec["error_code"], rec["attempts"]) == ("failed", ErrorCode.INVALID_JOB.value, 0)
    assert needle in rec["error_message"] and len(rec["error_message"]) <= MAX_MESSAGE
    assert all(no_secret(json.dumps(v)) for v in store.get_raw(render_id).values())  # type: ignore[union-attr]
    assert store.event_marked(render_id)
    assert isinstance(deps.storage, MemoryStorage) and sum(deps.storage.calls.values()) == 0  # no work started

    # A redelivery changes nothing and sends nothing more.
    assert process(msg, deps, last_attempt=False) is Outcome.FAILED
    assert store.get(render_id) == rec

    got = deliveries(webhook_receiver, render_id)
    if not told:
        assert got == []  # no usable webhook: nobody to tell, but the record failed all the same
        return
    assert len(got) == 1 and no_secret(got[0].body.decode())
    [event] = verified_events(webhook_receiver)[render_id]
    assert event["type"] == "render.failed"
    assert event["data"]["error_code"] == "invalid_job" and event["data"]["error_message"] == rec["error_message"]


def test_a_message_without_a_render_id_records_nothing_and_tells_no_one(
    deps: Deps, redis_server: RedisServer, webhook_receiver: WebhookReceiver
) -> None:
    msg = message("rnd_x", webhook_receiver)
    msg["render_id"] = "rnd_x\n" + SECRET
    with pytest.raises(UnrecordableJob) as info:
        process(msg, deps, last_attempt=False)
    assert no_secret(info.value.message) and len(info.value.message) <= MAX_MESSAGE
    assert webhook_receiver.received == []


# -- through the real worker -----------------------------------------------------------------------------


@pytest.fixture
def rig(redis_server: RedisServer, s3_server: S3Server, tmp_path: Path) -> Iterator[Farm]:
    with farm(redis_server, s3_server, tmp_path) as f:
        f.configure(source_buckets=f.source_bucket)
        yield f


def test_the_worker_fails_a_webhook_hiding_a_secret_and_status_never_shows_it(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver
) -> None:
    rig.start_worker()
    uri = rig.upload(media["audio_wav"])
    hidden = rig.message(uri, "m4a", webhook=webhook_receiver)
    hidden["webhook"]["signing_key"] = SECRET
    elsewhere = rig.message(uri.replace(rig.source_bucket, rig.output_bucket, 1), "m4a", webhook=webhook_receiver)
    for msg in (hidden, elsewhere):
        rig.submit(msg)

    for msg, needle in ((hidden, "webhook has unknown field(s)"), (elsewhere, "is not one the worker may read")):
        rid = msg["render_id"]
        rec = rig.wait_record(rid, timeout_s=60)
        assert (rec["state"], rec["error_code"]) == ("failed", "invalid_job"), rec
        status = rig.cli("status", rid)
        shown = json.loads(status.stdout)
        assert needle in shown["error_message"] and len(shown["error_message"]) <= MAX_MESSAGE
        assert no_secret(status.stdout) and no_secret(status.stderr)

    wait_for(lambda: rig.pending(rig.webhook_queue) == 0 and len(webhook_receiver.received) >= 2, 30, "the webhooks")
    events = verified_events(webhook_receiver)
    for msg in (hidden, elsewhere):
        assert [e["type"] for e in events[msg["render_id"]]] == ["render.failed"]
    assert all(no_secret(req.body.decode()) for req in webhook_receiver.received)
    assert rig.objects() == {}  # nothing was rendered, nothing stored
    assert rig.dead() == []  # failed, not dead-lettered
    assert no_secret(rig.logs())
