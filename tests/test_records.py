"""Render records and their guarded transitions, against a real redis-server and the in-memory twin.

Every behaviour the pipeline relies on is checked on both stores (``MemoryRecordStore``
backs ``render-cli`` and the pipeline's unit tests, so it must not drift from Redis).
Only lease *expiry* is Redis-only: memory leases never lapse by design.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import redis
from farm import wait_for

from worker.records import MemoryRecordStore, RecordStore, RedisRecordStore, StartResult, decode_record

if TYPE_CHECKING:
    from services import RedisServer

DEFAULTS = {"asset_id": "ast_1", "cut_id": None, "output": {"format": "m4a", "resolution": None}}


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.services), "memory"])
def store(request: pytest.FixtureRequest) -> Iterator[RecordStore]:
    if request.param == "memory":
        yield MemoryRecordStore()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url, decode_responses=True)
    # A prefix of its own per test: the session's Redis is shared.
    yield RedisRecordStore(client, ttl_s=600, prefix=f"t{uuid.uuid4().hex[:8]}")
    client.close()


@pytest.fixture
def redis_store(redis_server: RedisServer) -> Iterator[RedisRecordStore]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield RedisRecordStore(client, ttl_s=600, prefix=f"t{uuid.uuid4().hex[:8]}")
    client.close()


def rid() -> str:
    return f"rnd_{uuid.uuid4().hex[:12]}"


def test_create_start_progress_complete(store: RecordStore) -> None:
    r = rid()
    assert store.create(r, {**DEFAULTS, "created_at": "2024-01-01T00:00:00.000Z"})
    rec = store.get(r)
    assert rec is not None
    assert (rec["state"], rec["attempts"], rec["progress"]) == ("pending", 0, 0.0)
    assert rec["output"] == DEFAULTS["output"] and rec["cut_id"] is None

    started = store.start(r, "tok-a", 30, DEFAULTS)
    assert (started.status, started.attempts, started.state) == ("started", 1, "processing")
    assert store.progress(r, "tok-a", 0.25, 30)
    rec = store.get(r)
    assert rec is not None
    assert rec["state"] == "processing" and rec["progress"] == 0.25 and rec["started_at"]

    assert store.complete(r, {"size_bytes": 1234, "duration_s": 4.5, "encoder": "cpu", "output_key": "k/r.m4a"})
    rec = store.get(r)
    assert rec is not None
    assert rec["state"] == "completed" and rec["progress"] == 1.0 and rec["attempts"] == 1
    assert (rec["size_bytes"], rec["duration_s"], rec["encoder"], rec["output_key"]) == (1234, 4.5, "cpu", "k/r.m4a")
    assert rec["created_at"] == "2024-01-01T00:00:00.000Z" and rec["completed_at"] >= rec["started_at"]
    assert rec["error_code"] is None and rec["error_message"] is None


def test_create_is_once_only(store: RecordStore) -> None:
    r = rid()
    assert store.create(r, DEFAULTS)
    assert not store.create(r, {**DEFAULTS, "asset_id": "ast_other"})
    rec = store.get(r)
    assert rec is not None and rec["asset_id"] == "ast_1"


def test_start_without_a_record_creates_it_from_defaults(store: RecordStore) -> None:
    r = rid()
    assert store.start(r, "tok", 30, DEFAULTS).status == "started"
    rec = store.get(r)
    assert rec is not None
    assert rec["id"] == r and rec["asset_id"] == "ast_1" and rec["created_at"] and rec["attempts"] == 1


def test_lease_busy_for_another_token(store: RecordStore) -> None:
    r = rid()
    store.create(r, DEFAULTS)
    assert store.start(r, "tok-a", 30, DEFAULTS).status == "started"
    busy = store.start(r, "tok-b", 30, DEFAULTS)
    assert (busy.status, busy.state) == ("busy", "processing")
    assert not store.progress(r, "tok-b", 0.5, 30)  # a stranger cannot write progress
    rec = store.get(r)
    assert rec is not None and rec["attempts"] == 1  # a busy start is not an attempt


def test_release_keeps_processing_and_frees_the_lease(store: RecordStore) -> None:
    r = rid()
    store.create(r, DEFAULTS)
    store.start(r, "tok-a", 30, DEFAULTS)
    store.release(r, "tok-a", {"error_message": "retrying after: storage_failed: 503"})
    rec = store.get(r)
    assert rec is not None
    assert rec["state"] == "processing" and rec["error_message"] == "retrying after: storage_failed: 503"
    assert not store.progress(r, "tok-a", 0.5, 30)  # the lease is gone
    again = store.start(r, "tok-b", 30, DEFAULTS)
    assert (again.status, again.attempts) == ("started", 2)
    rec = store.get(r)
    assert rec is not None and rec["error_message"] is None  # a new attempt starts clean


def test_release_by_a_stranger_leaves_the_lease(store: RecordStore) -> None:
    r = rid()
    store.start(r, "tok-a", 30, DEFAULTS)
    store.release(r, "tok-b")
    assert store.start(r, "tok-c", 30, DEFAULTS).status == "busy"
    assert store.progress(r, "tok-a", 0.1, 30)


def test_fail_from_pending(store: RecordStore) -> None:
    r = rid()
    store.create(r, DEFAULTS)
    assert store.fail(r, "invalid_job", "segments[0] is bad", DEFAULTS)
    rec = store.get(r)
    assert rec is not None
    assert (rec["state"], rec["error_code"], rec["error_message"]) == ("failed", "invalid_job", "segments[0] is bad")
    assert rec["attempts"] == 0 and rec["completed_at"] and rec["asset_id"] == "ast_1"


def test_fail_without_a_record_creates_one(store: RecordStore) -> None:
    r = rid()
    assert store.fail(r, "invalid_job", "bad", {"asset_id": "ast_9"})
    rec = store.get(r)
    assert rec is not None
    assert rec["state"] == "failed" and rec["asset_id"] == "ast_9" and rec["created_at"] and rec["attempts"] == 0


def test_fail_while_processing_drops_the_lease(store: RecordStore) -> None:
    r = rid()
    store.start(r, "tok-a", 30, DEFAULTS)
    assert store.fail(r, "storage_failed", "gave up", DEFAULTS)
    assert not store.progress(r, "tok-a", 0.9, 30)
    assert store.start(r, "tok-b", 30, DEFAULTS).status == "terminal"


@pytest.mark.parametrize("final", ["completed", "failed"])
def test_terminal_records_are_immutable(store: RecordStore, final: str) -> None:
    r = rid()
    store.create(r, DEFAULTS)
    store.start(r, "tok-a", 30, DEFAULTS)
    if final == "completed":
        assert store.complete(r, {"size_bytes": 10, "output_key": "k"})
    else:
        assert store.fail(r, "encode_failed", "ffmpeg exited 1", DEFAULTS)
    before = store.get_raw(r)

    again = store.start(r, "tok-b", 30, DEFAULTS)
    assert (again.status, again.state) == ("terminal", final)
    assert store.start(r, "tok-a", 30, DEFAULTS).status != "started"  # not even for the old holder
    assert not store.progress(r, "tok-a", 0.5, 30)
    assert not store.complete(r, {"size_bytes": 99, "output_key": "other"})
    assert not store.fail(r, "timeout", "late", DEFAULTS)
    store.release(r, "tok-a")
    assert store.get_raw(r) == before


def test_complete_needs_processing(store: RecordStore) -> None:
    r = rid()
    store.create(r, DEFAULTS)
    assert not store.complete(r, {"size_bytes": 1})  # pending: never started
    assert not store.complete(rid(), {"size_bytes": 1})  # no record at all
    rec = store.get(r)
    assert rec is not None and rec["state"] == "pending"


def test_event_mark(store: RecordStore) -> None:
    r = rid()
    store.create(r, DEFAULTS)
    assert not store.event_marked(r)
    store.mark_event(r)
    assert store.event_marked(r)
    assert not store.event_marked(rid())


def test_get_missing(store: RecordStore) -> None:
    assert store.get(rid()) is None and store.get_raw(rid()) is None


# -- Redis only: time -------------------------------------------------------------------------------------------


@pytest.mark.services
def test_lease_expiry_lets_another_worker_take_over(redis_store: RedisRecordStore) -> None:
    r = rid()
    redis_store.create(r, DEFAULTS)
    t0 = time.monotonic()
    assert redis_store.start(r, "dead-worker", 1.0, DEFAULTS).status == "started"
    assert redis_store.start(r, "new-worker", 1.0, DEFAULTS).status == "busy"

    def take_over() -> StartResult | None:
        result = redis_store.start(r, "new-worker", 30, DEFAULTS)
        return result if result.status == "started" else None

    took = wait_for(take_over, 10, "the lease to lapse", interval_s=0.02)
    assert time.monotonic() - t0 >= 0.9  # not before its TTL
    assert took.attempts == 2
    # The old holder wakes up: its progress is refused, so it knows it lost the render.
    assert not redis_store.progress(r, "dead-worker", 0.9, 1.0)
    assert redis_store.progress(r, "new-worker", 0.1, 30)


@pytest.mark.services
def test_progress_renews_the_lease(redis_store: RedisRecordStore) -> None:
    r = rid()
    redis_store.start(r, "live", 0.5, DEFAULTS)
    assert redis_store.progress(r, "live", 0.5, 30)  # renewed for 30 s
    lease = f"{redis_store.prefix}:{r}:lease"
    assert redis_store.r.pttl(lease) > 10_000
    time.sleep(0.6)  # past the first TTL
    assert redis_store.start(r, "other", 30, DEFAULTS).status == "busy"


@pytest.mark.services
def test_records_expire(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    store = RedisRecordStore(client, ttl_s=120, prefix=f"t{uuid.uuid4().hex[:8]}")
    r = rid()
    store.create(r, DEFAULTS)
    assert 0 < client.ttl(f"{store.prefix}:{r}") <= 120
    store.start(r, "tok", 30, DEFAULTS)
    store.fail(r, "timeout", "slow", DEFAULTS)
    assert 0 < client.ttl(f"{store.prefix}:{r}") <= 120
    client.close()


def test_redis_down_is_a_transient_storage_error() -> None:
    from services import free_port

    from worker.errors import StorageError

    store = RedisRecordStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StorageError) as info:
        store.start(rid(), "tok", 30, DEFAULTS)
    assert info.value.transient


def test_decode_record_types() -> None:
    raw = {"id": "r", "state": "completed", "attempts": "2", "progress": "1", "size_bytes": "5", "output": '{"a":1}'}
    rec = decode_record(raw)
    assert rec["attempts"] == 2 and rec["progress"] == 1.0 and rec["size_bytes"] == 5 and rec["output"] == {"a": 1}
    assert rec["error_code"] is None and rec["output_key"] is None
