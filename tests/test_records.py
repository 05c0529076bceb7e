"""Render records: one contract, run against both stores (a real redis-server, and the in-memory twin).

``MemoryRecordStore`` backs ``render-cli`` and the pipeline's unit tests, so it must
not drift from Redis: every test here that takes the ``kit`` fixture runs on both.
A lease lapses on Redis when its key expires and in memory when the store's clock
passes its deadline; :meth:`Kit.lapse` makes that happen on either, so the lease
rules are part of the shared contract too. Only the real-time expiry of a Redis key
has a Redis-only test.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
import redis
from farm import wait_for

from worker.records import (
    MAX_REASON_CHARS,
    CancelResult,
    MemoryRecordStore,
    RecordStore,
    RedisRecordStore,
    StartResult,
    decode_record,
)

if TYPE_CHECKING:
    from services import RedisServer

DEFAULTS = {"asset_id": "ast_1", "cut_id": None, "output": {"format": "m4a", "resolution": None}}
DONE = {"size_bytes": 1234, "duration_s": 4.5, "encoder": "cpu", "output_key": "k/r.m4a"}


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Kit:
    """A store plus the means to let one of its leases lapse, whichever store it is."""

    store: RecordStore
    clock: Clock = field(default_factory=Clock)
    client: redis.Redis | None = None

    def lapse(self, render_id: str) -> None:
        if isinstance(self.store, RedisRecordStore):
            assert self.client is not None
            key = f"{self.store.prefix}:{render_id}:lease"
            self.client.pexpire(key, 1)  # what a lease TTL running out does, without the wait
            wait_for(lambda: not self.client.exists(key), 5, "the lease key to expire", interval_s=0.005)
        else:
            self.clock.now += 3600


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.services), "memory"])
def kit(request: pytest.FixtureRequest) -> Iterator[Kit]:
    if request.param == "memory":
        clock = Clock()
        yield Kit(MemoryRecordStore(clock=clock), clock)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url, decode_responses=True)
    # A prefix of its own per test: the session's Redis is shared.
    yield Kit(RedisRecordStore(client, ttl_s=600, prefix=f"t{uuid.uuid4().hex[:8]}"), client=client)
    client.close()


@pytest.fixture
def store(kit: Kit) -> RecordStore:
    return kit.store


@pytest.fixture
def redis_store(redis_server: RedisServer) -> Iterator[RedisRecordStore]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield RedisRecordStore(client, ttl_s=600, prefix=f"t{uuid.uuid4().hex[:8]}")
    client.close()


def rid() -> str:
    return f"rnd_{uuid.uuid4().hex[:12]}"


def started(store: RecordStore, token: str = "tok-a") -> str:
    r = rid()
    assert store.create(r, DEFAULTS)
    assert store.start(r, token, 30, DEFAULTS).status == "started"
    return r


# -- the happy path and creation -------------------------------------------------------------------------------


def test_create_start_progress_complete(store: RecordStore) -> None:
    r = rid()
    assert store.create(r, {**DEFAULTS, "created_at": "2024-01-01T00:00:00.000Z"})
    rec = store.get(r)
    assert rec is not None
    assert (rec["state"], rec["attempts"], rec["progress"]) == ("pending", 0, 0.0)
    assert rec["output"] == DEFAULTS["output"] and rec["cut_id"] is None

    s = store.start(r, "tok-a", 30, DEFAULTS)
    assert (s.status, s.attempts, s.state) == ("started", 1, "processing")
    assert store.progress(r, "tok-a", 0.25, 30)
    rec = store.get(r)
    assert rec is not None
    assert rec["state"] == "processing" and rec["progress"] == 0.25 and rec["started_at"]

    assert store.complete(r, "tok-a", DONE)
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


def test_only_create_start_and_fail_create_records(store: RecordStore) -> None:
    """A release (or progress, complete, cancel, event mark) for an unknown id leaves no record behind: on Redis
    such a record would have no TTL and never expire."""
    r = rid()
    assert store.release(r, "tok", {"error_message": "retrying after: x"}) is False
    assert not store.progress(r, "tok", 0.5, 30)
    assert not store.complete(r, "tok", DONE)
    assert store.cancel(r, "no such render") == CancelResult("missing")
    store.mark_event(r)
    assert store.get_raw(r) is None and store.state(r) is None


def test_get_missing(store: RecordStore) -> None:
    assert store.get(rid()) is None and store.get_raw(rid()) is None


# -- the lease token ----------------------------------------------------------------------------------------------


def test_lease_busy_for_another_token(store: RecordStore) -> None:
    r = started(store)
    busy = store.start(r, "tok-b", 30, DEFAULTS)
    assert (busy.status, busy.state) == ("busy", "processing")
    assert not store.progress(r, "tok-b", 0.5, 30)  # a stranger cannot write progress
    rec = store.get(r)
    assert rec is not None and rec["attempts"] == 1  # a busy start is not an attempt


def test_complete_needs_the_lease_token(store: RecordStore) -> None:
    r = started(store, "tok-a")
    before = store.get_raw(r)
    assert not store.complete(r, "tok-b", {**DONE, "output_key": "stranger"})
    assert store.get_raw(r) == before  # still processing, nothing of the stranger's written
    assert store.complete(r, "tok-a", DONE)


def test_fail_needs_the_lease_token(store: RecordStore) -> None:
    r = started(store, "tok-a")
    assert not store.fail(r, "tok-b", "timeout", "a stranger's verdict", DEFAULTS)
    assert not store.fail(r, None, "internal_error", "no token at all", DEFAULTS)
    rec = store.get(r)
    assert rec is not None and rec["state"] == "processing"
    assert store.fail(r, "tok-a", "encode_failed", "ffmpeg exited 1", DEFAULTS)


def test_a_taken_over_lease_refuses_its_old_holder(kit: Kit) -> None:
    """The worker that stalled past its lease comes back after another took over: every write of its is refused."""
    store = kit.store
    r = started(store, "stalled")
    kit.lapse(r)
    took = store.start(r, "new", 30, DEFAULTS)
    assert (took.status, took.attempts) == ("started", 2)
    assert not store.progress(r, "stalled", 0.9, 30)
    assert not store.complete(r, "stalled", DONE)
    assert not store.fail(r, "stalled", "timeout", "late", DEFAULTS)
    assert store.release(r, "stalled", {"error_message": "stale"}) is False
    rec = store.get(r)
    assert rec is not None and rec["state"] == "processing" and rec["error_message"] is None
    assert store.progress(r, "new", 0.1, 30) and store.complete(r, "new", DONE)


def test_a_lapsed_lease_nobody_took_is_still_its_holders(kit: Kit) -> None:
    """A holder whose renewals stalled (a Redis blip) but whom nobody replaced may carry on and finish."""
    store = kit.store
    r = started(store, "tok-a")
    kit.lapse(r)
    assert store.progress(r, "tok-a", 0.5, 30)  # renewing takes the lease back
    assert store.start(r, "tok-b", 30, DEFAULTS).status == "busy"
    kit.lapse(r)
    assert store.complete(r, "tok-a", DONE)


def test_release_keeps_processing_and_frees_the_lease(store: RecordStore) -> None:
    r = started(store, "tok-a")
    assert store.release(r, "tok-a", {"error_message": "retrying after: storage_failed: 503"})
    rec = store.get(r)
    assert rec is not None
    assert rec["state"] == "processing" and rec["error_message"] == "retrying after: storage_failed: 503"
    again = store.start(r, "tok-b", 30, DEFAULTS)
    assert (again.status, again.attempts) == ("started", 2)
    assert not store.progress(r, "tok-a", 0.5, 30)  # the lease is tok-b's now
    rec = store.get(r)
    assert rec is not None and rec["error_message"] is None  # a new attempt starts clean


def test_release_by_a_stranger_changes_nothing(store: RecordStore) -> None:
    r = started(store, "tok-a")
    before = store.get_raw(r)
    assert store.release(r, "tok-b", {"error_message": "a stranger's note"}) is False
    assert store.get_raw(r) == before
    assert store.start(r, "tok-c", 30, DEFAULTS).status == "busy"  # the lease stays tok-a's
    assert store.progress(r, "tok-a", 0.1, 30)


def test_release_of_a_pending_record_changes_nothing(store: RecordStore) -> None:
    r = rid()
    store.create(r, DEFAULTS)
    before = store.get_raw(r)
    assert store.release(r, "tok", {"error_message": "never started"}) is False
    assert store.get_raw(r) == before


# -- failing and terminal records ------------------------------------------------------------------------------


def test_fail_from_pending(store: RecordStore) -> None:
    r = rid()
    store.create(r, DEFAULTS)
    assert store.fail(r, None, "invalid_job", "segments[0] is bad", DEFAULTS)
    rec = store.get(r)
    assert rec is not None
    assert (rec["state"], rec["error_code"], rec["error_message"]) == ("failed", "invalid_job", "segments[0] is bad")
    assert rec["attempts"] == 0 and rec["completed_at"] and rec["asset_id"] == "ast_1"


def test_fail_without_a_record_creates_one(store: RecordStore) -> None:
    r = rid()
    assert store.fail(r, None, "invalid_job", "bad", {"asset_id": "ast_9"})
    rec = store.get(r)
    assert rec is not None
    assert rec["state"] == "failed" and rec["asset_id"] == "ast_9" and rec["created_at"] and rec["attempts"] == 0


def test_fail_while_processing_drops_the_lease(store: RecordStore) -> None:
    r = started(store, "tok-a")
    assert store.fail(r, "tok-a", "storage_failed", "gave up", DEFAULTS)
    assert not store.progress(r, "tok-a", 0.9, 30)
    assert store.start(r, "tok-b", 30, DEFAULTS).status == "terminal"


@pytest.mark.parametrize("final", ["completed", "failed", "cancelled"])
def test_terminal_records_are_immutable(store: RecordStore, final: str) -> None:
    r = started(store, "tok-a")
    if final == "completed":
        assert store.complete(r, "tok-a", {"size_bytes": 10, "output_key": "k"})
    elif final == "failed":
        assert store.fail(r, "tok-a", "encode_failed", "ffmpeg exited 1", DEFAULTS)
    else:
        assert store.cancel(r, "wrong cut").changed
    store.mark_event(r)
    before = store.get_raw(r)

    again = store.start(r, "tok-b", 30, DEFAULTS)
    assert (again.status, again.state) == ("terminal", final)
    assert store.start(r, "tok-a", 30, DEFAULTS).status != "started"  # not even for the old holder
    for token in ("tok-a", "tok-b"):
        assert not store.progress(r, token, 0.5, 30)
        assert not store.complete(r, token, {"size_bytes": 99, "output_key": "other"})
        assert not store.fail(r, token, "timeout", "late", DEFAULTS)
        # A release with a note, from the old holder or a stranger, cannot rewrite the outcome.
        assert store.release(r, token, {"state": "processing", "error_message": "retrying after: x"}) is False
    assert not store.fail(r, None, "invalid_job", "late", DEFAULTS)
    assert not store.create(r, DEFAULTS)
    # Cancelling an ended render changes nothing and says so, with the state it found.
    again_cancel = store.cancel(r, "too late")
    assert (again_cancel.status, again_cancel.state, again_cancel.changed) == ("terminal", final, False)
    assert again_cancel.record is not None and again_cancel.record["state"] == final
    assert store.get_raw(r) == before


def test_complete_needs_processing(store: RecordStore) -> None:
    r = rid()
    store.create(r, DEFAULTS)
    assert not store.complete(r, "tok", {"size_bytes": 1})  # pending: never started
    assert not store.complete(rid(), "tok", {"size_bytes": 1})  # no record at all
    rec = store.get(r)
    assert rec is not None and rec["state"] == "pending"


def test_event_mark(store: RecordStore) -> None:
    r = rid()
    store.create(r, DEFAULTS)
    assert not store.event_marked(r)
    store.mark_event(r)
    assert store.event_marked(r)
    assert not store.event_marked(rid())


# -- cancel ------------------------------------------------------------------------------------------------------


def test_cancel_a_pending_render_and_it_never_starts(store: RecordStore) -> None:
    r = rid()
    assert store.create(r, DEFAULTS)
    res = store.cancel(r, "wrong cut")
    assert (res.status, res.state, res.changed) == ("cancelled", "pending", True)
    assert res.record is not None and res.record["state"] == "cancelled" and res.record["cancel_reason"] == "wrong cut"
    assert res.record["cancelled_at"] and res.record["started_at"] is None
    # The queued message is picked up later: the start is refused, and nothing of a start is written.
    assert store.start(r, "tok-a", 30, DEFAULTS) == StartResult("terminal", 0, "cancelled")
    rec = store.get(r)
    assert rec is not None and rec["state"] == "cancelled" and rec["started_at"] is None and rec["attempts"] == 0
    assert store.state(r) == "cancelled"


def test_cancel_a_processing_render_locks_its_worker_out(store: RecordStore) -> None:
    r = started(store, "tok-a")
    assert store.progress(r, "tok-a", 0.4, 30)
    res = store.cancel(r, None)
    assert (res.status, res.state) == ("cancelled", "processing")
    before = store.get_raw(r)
    # The worker rendering it can no longer renew, complete, fail or release it, and a new delivery cannot start it.
    assert not store.progress(r, "tok-a", 0.9, 30)
    assert not store.complete(r, "tok-a", DONE)
    assert not store.fail(r, "tok-a", "encode_failed", "ffmpeg was killed", DEFAULTS)
    assert store.release(r, "tok-a", {"state": "processing"}) is False
    assert store.start(r, "tok-b", 30, DEFAULTS).status == "terminal"
    assert store.get_raw(r) == before
    rec = store.get(r)
    assert rec is not None
    assert rec["state"] == "cancelled" and rec["cancel_reason"] is None and rec["progress"] == 0.4
    assert rec["completed_at"] is None and rec["cancelled_at"] >= rec["started_at"]


def test_cancel_a_render_waiting_for_its_retry(store: RecordStore) -> None:
    """Released for a retry (processing, no lease): the cancel lands, and the retry finds it ended."""
    r = started(store, "tok-a")
    assert store.release(r, "tok-a", {"error_message": "retrying after: storage_failed: S3 down"})
    assert store.cancel(r, "credits ran out").changed
    assert store.start(r, "tok-b", 30, DEFAULTS) == StartResult("terminal", 0, "cancelled")
    rec = store.get(r)
    assert rec is not None and rec["state"] == "cancelled" and rec["attempts"] == 1
    assert rec["error_code"] is None and rec["error_message"] is None  # the retry note does not read as a failure


def test_cancel_drops_the_lease(kit: Kit) -> None:
    r = started(kit.store, "tok-a")
    assert kit.store.cancel(r).changed
    if isinstance(kit.store, RedisRecordStore):
        assert kit.client is not None and not kit.client.exists(f"{kit.store.prefix}:{r}:lease")
    else:
        assert r not in kit.store._leases


def test_cancel_reason_is_printable_bounded_and_secret_free(store: RecordStore) -> None:
    r = rid()
    store.create(r, DEFAULTS)
    secret = "whsec_" + "A" * 40
    raw = "ops:\tjane\r\nFAKE LOG LINE\u202e\x00 key " + secret + " " + "x" * 5000
    rec = store.cancel(r, raw).record
    assert rec is not None
    reason = rec["cancel_reason"]
    assert reason.startswith("ops: jane FAKE LOG LINE key whsec_<redacted> xxx")
    assert len(reason) == MAX_REASON_CHARS and reason.endswith("…")
    assert reason.isprintable() and secret[6:] not in reason


def test_cancel_racing_with_completion_ends_in_one_terminal_state(kit: Kit) -> None:
    """The worker's complete and the API's cancel at the same instant, many times: one wins, the other is told.

    A barrier releases both threads together; the store's guard is all that decides.
    """
    import threading

    store = kit.store
    wins = {"completed": 0, "cancelled": 0}
    for i in range(150):
        r = started(store, "tok-a")
        barrier = threading.Barrier(2)
        got: dict[str, object] = {}

        def do_complete(r: str = r, barrier: threading.Barrier = barrier, got: dict = got) -> None:
            barrier.wait()
            got["complete"] = store.complete(r, "tok-a", DONE)

        def do_cancel(r: str = r, barrier: threading.Barrier = barrier, got: dict = got) -> None:
            barrier.wait()
            got["cancel"] = store.cancel(r, "race")

        threads = [threading.Thread(target=do_complete), threading.Thread(target=do_cancel)]
        if i % 2:
            threads.reverse()  # neither side always gets the head start
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cancel = got["cancel"]
        assert isinstance(cancel, CancelResult)
        state = store.state(r)
        # Exactly one of them changed the record, and each caller was told the truth.
        assert got["complete"] != cancel.changed
        assert state == ("cancelled" if cancel.changed else "completed")
        if not cancel.changed:
            assert (cancel.status, cancel.state) == ("terminal", "completed")
        rec = store.get(r)
        assert rec is not None and (rec["cancelled_at"] is None) == (state == "completed")
        assert (rec["size_bytes"] is None) == (state == "cancelled")
        wins[str(state)] += 1
    print(f"\ncancel vs complete, 150 races: {wins}")


# -- Redis only: real time and real keys ---------------------------------------------------------------------------


@pytest.mark.services
def test_lease_expiry_lets_another_worker_take_over(redis_store: RedisRecordStore) -> None:
    r = rid()
    redis_store.create(r, DEFAULTS)
    assert redis_store.start(r, "dead-worker", 1.0, DEFAULTS).status == "started"
    assert redis_store.start(r, "new-worker", 1.0, DEFAULTS).status == "busy"
    assert 0 < redis_store.r.pttl(f"{redis_store.prefix}:{r}:lease") <= 1000  # the key carries the TTL asked for

    def take_over() -> StartResult | None:
        result = redis_store.start(r, "new-worker", 30, DEFAULTS)
        return result if result.status == "started" else None

    took = wait_for(take_over, 10, "the lease to lapse", interval_s=0.02)
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
    assert redis_store.start(r, "other", 30, DEFAULTS).status == "busy"


@pytest.mark.services
def test_records_expire(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    store = RedisRecordStore(client, ttl_s=120, prefix=f"t{uuid.uuid4().hex[:8]}")
    r = rid()
    store.create(r, DEFAULTS)
    assert 0 < client.ttl(f"{store.prefix}:{r}") <= 120
    store.start(r, "tok", 30, DEFAULTS)
    store.fail(r, "tok", "timeout", "slow", DEFAULTS)
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


# --- chunked renders: part leases and the stored-chunk barrier (both stores) ---------------------------------


def test_part_lease_is_held_by_one_token_and_lapses(kit: Kit) -> None:
    store, render_id = kit.store, rid()
    assert store.part_lease(render_id, "chunk-0", "a", 30)
    assert store.part_lease(render_id, "chunk-0", "a", 30)  # renewal by the holder
    assert not store.part_lease(render_id, "chunk-0", "b", 30)  # a duplicate delivery waits
    assert store.part_lease(render_id, "chunk-1", "b", 30)  # another chunk is another lease
    store.part_release(render_id, "chunk-0", "b")  # not the holder: nothing
    assert not store.part_lease(render_id, "chunk-0", "b", 30)
    store.part_release(render_id, "chunk-0", "a")
    assert store.part_lease(render_id, "chunk-0", "b", 30)
    # A holder that stops renewing (a killed worker) loses the lease after its TTL.
    assert store.part_lease(render_id, "assembly", "a", 0.05)
    if isinstance(store, MemoryRecordStore):
        kit.clock.now += 1
    else:
        time.sleep(0.2)
    assert store.part_lease(render_id, "assembly", "b", 30)


def test_chunk_barrier_counts_distinct_chunks_and_progress_sums(store: RecordStore) -> None:
    render_id = rid()
    assert store.chunk_stored(render_id, 0) == 1
    assert store.chunk_stored(render_id, 0) == 1  # stored twice (a duplicate delivery) counts once
    assert store.chunk_stored(render_id, 2) == 2
    assert store.chunk_progress(render_id, 0, 100) == 100
    assert store.chunk_progress(render_id, 1, 40) == 140
    assert store.chunk_progress(render_id, 1, 50) == 150  # a chunk's progress replaces its earlier value
    store.part_lease(render_id, "chunk-1", "a", 30)
    store.chunks_clear(render_id)
    assert store.chunk_stored(render_id, 1) == 1
    assert store.chunk_progress(render_id, 1, 5) == 5
    assert store.part_lease(render_id, "chunk-1", "b", 30)
