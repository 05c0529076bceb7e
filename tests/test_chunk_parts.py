"""The parts of a chunked render, one delivery at a time: ``pipeline.process`` and ``pipeline.process_part``.

In-memory storage and records and the real renderer; the "queue" is a list the pipeline's ``dispatch``
appends to, drained by the test in order. What Dramatiq does with these messages (two worker processes,
kill -9, SIGTERM, a stalled chunk) is checked over real Redis and the S3 server in test_chunks_queue.py;
here the contract is the messages themselves and RENDER_TIME_LIMIT_S over the render as a whole.
"""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest
from farm import SECRET

from worker import planner
from worker.errors import RenderTimeout, StorageError
from worker.pipeline import FAILED, Deps, Outcome, process, process_part
from worker.pipeline.chunked import part_deadline
from worker.records import MemoryRecordStore
from worker.render import parts
from worker.scratch import OWNER_FILE
from worker.settings import Settings
from worker.source_cache import SourceCache
from worker.storage import MemoryStorage

SOURCE = "s3://media/assets/ast_1/source.mp4"
HOOK = {"url": "http://127.0.0.1:9/hook", "secret": SECRET}
#: 15 s of output from the 200 s cfr30 source: with chunks of 5 s (the validated minimum), three chunks.
CUT = [{"start": 10.0, "end": 17.5}, {"start": 150.0, "end": 157.5}]
CHUNKS = 3
LIMIT_S = 600.0


class Queue:
    """What the pipeline sends: ``(kind, body)`` in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, kind: str, body: dict[str, Any]) -> None:
        self.sent.append((kind, body))

    def take(self, kind: str) -> list[dict[str, Any]]:
        bodies = [b for k, b in self.sent if k == kind]
        self.sent = [(k, b) for k, b in self.sent if k != kind]
        return bodies


class Events:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, event_type: str, render_id: str, asset_id: str, webhook: Any, extra: Any) -> None:
        self.sent.append((event_type, render_id, dict(extra)))


@pytest.fixture
def queue() -> Queue:
    return Queue()


@pytest.fixture
def deps(media: dict[str, Path], tmp_path: Path, queue: Queue) -> Deps:
    storage = MemoryStorage(output_bucket="out", attempts=1, base_delay_s=0.0, max_delay_s=0.0)
    storage.seed(SOURCE, media["cfr30"].read_bytes())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    settings = Settings(
        chunk_s=5,
        chunk_min_s=10,
        time_limit_s=LIMIT_S,
        webhook_allow_private=True,  # HOOK is loopback; never called here (events are recorded, not sent)
        work_dir=str(scratch),
    )
    return Deps(
        settings=settings,
        records=MemoryRecordStore(),
        storage=storage,
        send_event=Events(),
        dispatch=queue,
    )


def job(render_id: str = "rnd_1") -> dict[str, Any]:
    return {
        "version": 1,
        "render_id": render_id,
        "asset_id": "ast_1",
        "cut_id": "cut_1",
        "source": {"uri": SOURCE},
        "segments": CUT,
        # Every frame encoded: these tests are about the chunk protocol (cfr30's GOPs would be copied whole).
        "output": {"format": "mp4", "resolution": None, "video_bitrate": None, "audio_bitrate": None, "smart": False},
        "webhook": HOOK,
    }


def events(deps: Deps) -> list[tuple[str, str, dict[str, Any]]]:
    assert isinstance(deps.send_event, Events)
    return deps.send_event.sent


def keys(deps: Deps) -> set[str]:
    assert isinstance(deps.storage, MemoryStorage)
    return {f"{bucket}/{key}" for bucket, key in deps.storage.objects}


def pieces(deps: Deps) -> list[str]:
    return sorted(k for k in keys(deps) if k.startswith("out/tmp/"))


def test_the_coordinator_sends_every_chunk_with_the_renders_deadline(deps: Deps, queue: Queue) -> None:
    before = time.time()
    assert process(job(), deps, last_attempt=False) is Outcome.DISPATCHED
    after = time.time()
    chunks = queue.take("chunk")
    (audio,) = queue.take("audio")
    assert [b["index"] for b in chunks] == list(range(CHUNKS)) and {b["count"] for b in chunks} == {CHUNKS}
    assert audio["part"] == "audio" and "index" not in audio
    # The barrier waits for the chunks and the audio.
    assert {b["parts"] for b in [*chunks, audio]} == {CHUNKS + 1}
    # One deadline for the whole render: the coordinator's start plus the limit, the same in every part.
    deadlines = {b["deadline"] for b in [*chunks, audio]}
    assert len(deadlines) == 1
    assert before + LIMIT_S - 0.01 <= deadlines.pop() <= after + LIMIT_S + 0.01
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "processing"


def test_parts_render_assemble_and_complete_in_any_order(
    deps: Deps, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert process(job(), deps, last_attempt=False) is Outcome.DISPATCHED
    chunks = queue.take("chunk")
    (audio,) = queue.take("audio")
    for body in [chunks[2], audio, chunks[1], chunks[0]]:  # any worker, any order
        assert queue.take("assembly") == []  # not before every part is stored
        assert process_part(body, deps, last_attempt=False) is Outcome.STORED
    assert sorted(pieces(deps))[0].endswith("/rnd_1/audio.m4a") and len(pieces(deps)) == CHUNKS + 1
    # A duplicate delivery of a stored chunk renders nothing; it passes the barrier again.
    assert process_part(chunks[0], deps, last_attempt=False) is Outcome.DUPLICATE
    assemblies = queue.take("assembly")
    assert len(assemblies) == 2  # the last chunk stored, then the duplicate: a second assembly is harmless
    # The assembly carries the render's deadline on, and everything but the index.
    assert all(a == {k: v for k, v in chunks[0].items() if k != "index"} for a in assemblies)
    # The assembly is a stream copy of the stored pieces: it encodes no audio of its own.
    monkeypatch.setattr(parts, "render_audio", _no_audio)
    assert process_part(assemblies[0], deps, last_attempt=False) is Outcome.COMPLETED
    assert process_part(assemblies[1], deps, last_attempt=False) is Outcome.DUPLICATE
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "completed" and rec["progress"] == 1
    assert pieces(deps) == []
    assert [e[0] for e in events(deps)] == ["render.completed"]


def test_a_render_too_short_to_split_probes_its_source_once(
    deps: Deps, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first worker plans to count chunks; a render of one chunk is rendered from that plan, not a second."""
    planned: list[Any] = []
    real = planner.plan_render

    def counting(*args: Any, **kwargs: Any) -> Any:
        planned.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(planner, "plan_render", counting)
    short = {**job(), "segments": [{"start": 10.0, "end": 14.0}]}  # under RENDER_CHUNK_MIN_S
    assert process(short, deps, last_attempt=False) is Outcome.COMPLETED
    assert queue.sent == [] and len(planned) == 1


def _no_audio(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the assembly rendered the audio")


def test_an_assembly_sent_before_the_audio_part_existed_renders_the_audio(deps: Deps, queue: Queue) -> None:
    """Parts sent by a worker from before the audio had a part of its own carry no ``parts``: their assembly
    encodes the audio itself (a rolling deploy finishes the renders in flight)."""
    assert process(job(), deps, last_attempt=False) is Outcome.DISPATCHED
    queue.take("audio")  # an older coordinator sent none
    for body in queue.take("chunk"):
        old = {k: v for k, v in body.items() if k not in ("parts", "source_version", "deadline")}
        assert process_part(old, deps, last_attempt=False) is Outcome.STORED
    (assembly,) = queue.take("assembly")
    assert process_part(assembly, deps, last_attempt=False) is Outcome.COMPLETED
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "completed"
    assert pieces(deps) == []


def test_a_chunk_taken_after_the_renders_deadline_fails_the_render_once(deps: Deps, queue: Queue) -> None:
    """RENDER_TIME_LIMIT_S bounds the render as a whole, not each chunk: chunks that waited on the queue or
    ran after others past the coordinator's start + the limit stop it, though each is well inside the limit."""
    assert process(job(), deps, last_attempt=False) is Outcome.DISPATCHED
    chunks = queue.take("chunk")
    assert process_part(chunks[0], deps, last_attempt=False) is Outcome.STORED
    assert len(pieces(deps)) == 1
    late = {**chunks[1], "deadline": time.time() - 1}  # the same message, its render's time spent
    assert process_part(late, deps, last_attempt=False) is Outcome.FAILED
    rec = deps.records.get("rnd_1")
    assert rec is not None and (rec["state"], rec["error_code"]) == ("failed", "timeout"), rec
    assert pieces(deps) == []  # the stored piece went with the failure
    # The remaining chunk finds the render failed: nothing rendered, no second event.
    assert process_part(chunks[2], deps, last_attempt=False) is Outcome.DUPLICATE
    assert queue.take("assembly") == []
    assert [(e[0], e[2].get("error_code")) for e in events(deps)] == [(FAILED, "timeout")]


def test_an_assembly_after_the_deadline_fails_and_deletes_the_pieces(deps: Deps, queue: Queue) -> None:
    assert process(job(), deps, last_attempt=False) is Outcome.DISPATCHED
    for body in [*queue.take("audio"), *queue.take("chunk")]:
        assert process_part(body, deps, last_attempt=False) is Outcome.STORED
    (assembly,) = queue.take("assembly")
    assert len(pieces(deps)) == CHUNKS + 1
    assert process_part({**assembly, "deadline": time.time() - 1}, deps, last_attempt=False) is Outcome.FAILED
    rec = deps.records.get("rnd_1")
    assert rec is not None and (rec["state"], rec["error_code"]) == ("failed", "timeout"), rec
    assert keys(deps) == {"media/assets/ast_1/source.mp4"}  # no piece, no output
    assert [e[0] for e in events(deps)] == [FAILED]


def test_a_part_is_never_given_more_than_the_limit() -> None:
    """A deadline far off (a wrong clock, a forged message) still leaves each part only RENDER_TIME_LIMIT_S,
    and a message without one (sent by an older worker) gets exactly that."""
    settings = Settings(time_limit_s=LIMIT_S)
    for body in ({"deadline": time.time() + 86400}, {}, {"deadline": True}, {"deadline": "soon"}):
        left = part_deadline(body, settings) - time.monotonic()
        assert LIMIT_S - 1 < left <= LIMIT_S, (body, left)
    left = part_deadline({"deadline": time.time() + 30}, settings) - time.monotonic()
    assert 29 < left <= 30
    with pytest.raises(RenderTimeout):
        part_deadline({"deadline": time.time() - 0.001}, settings)


# -- the source cache: one download per worker process and render ----------------------------------------------


@pytest.fixture
def cached(deps: Deps, tmp_path: Path) -> SourceCache:
    deps.sources = SourceCache(tmp_path / "work")
    return deps.sources


def cache_files(cache: SourceCache) -> list[Path]:
    """The sources in the cache (not its owner file, worker/scratch.py)."""
    return sorted(p for p in cache.dir.iterdir() if p.name != OWNER_FILE) if cache.dir.exists() else []


def test_one_worker_downloads_the_source_once_for_all_its_parts(deps: Deps, queue: Queue, cached: SourceCache) -> None:
    assert process(job(), deps, last_attempt=False) is Outcome.DISPATCHED
    assert cached.downloads == 1 and len(cache_files(cached)) == 1  # kept for the chunks this worker takes
    for body in [*queue.take("audio"), *queue.take("chunk")]:
        assert process_part(body, deps, last_attempt=False) is Outcome.STORED
    (assembly,) = queue.take("assembly")
    assert process_part(assembly, deps, last_attempt=False) is Outcome.COMPLETED
    # The coordinator's download served the audio, the three chunks and the assembly.
    assert (cached.downloads, cached.hits) == (1, CHUNKS + 2)
    assert cache_files(cached) == []  # the assembly freed the disk once the audio was rendered
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "completed"


def test_a_source_replaced_mid_render_fails_it_instead_of_mixing_recordings(
    deps: Deps, queue: Queue, cached: SourceCache, media: dict[str, Path]
) -> None:
    assert process(job(), deps, last_attempt=False) is Outcome.DISPATCHED
    chunks = queue.take("chunk")
    assert {b["source_version"] for b in chunks} == {deps.storage.stat(SOURCE).version}
    assert process_part(chunks[0], deps, last_attempt=False) is Outcome.STORED
    assert isinstance(deps.storage, MemoryStorage)
    deps.storage.seed(SOURCE, media["cfr30"].read_bytes() + b"\0")  # the same URI, other bytes
    assert process_part(chunks[1], deps, last_attempt=False) is Outcome.FAILED
    rec = deps.records.get("rnd_1")
    assert rec is not None and (rec["state"], rec["error_code"]) == ("failed", "source_unreadable"), rec
    assert "replaced" in rec["error_message"]
    assert pieces(deps) == []
    assert [e[0] for e in events(deps)] == [FAILED]
    assert not cached.dir.exists()  # the failed render's cached source went with it


def test_a_cancelled_render_leaves_nothing_in_the_cache(deps: Deps, queue: Queue, cached: SourceCache) -> None:
    assert process(job(), deps, last_attempt=False) is Outcome.DISPATCHED
    assert len(cache_files(cached)) == 1
    assert deps.records.cancel("rnd_1", "changed my mind").status == "cancelled"
    # The next part this process takes finds the render over: it renders nothing and drops the copy.
    assert process_part(queue.take("chunk")[0], deps, last_attempt=False) is Outcome.CANCELLED
    assert not cached.dir.exists()


def test_a_whole_render_leaves_nothing_in_the_cache(deps: Deps, cached: SourceCache) -> None:
    short = {**job(), "segments": [{"start": 10.0, "end": 14.0}]}  # under RENDER_CHUNK_MIN_S: rendered whole
    assert process(short, deps, last_attempt=False) is Outcome.COMPLETED
    assert cached.downloads == 1 and not cached.dir.exists()


def test_a_failed_whole_render_leaves_nothing_in_the_cache(deps: Deps, cached: SourceCache) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RenderTimeout("the render ran past its time limit")

    deps.renderer = broken
    short = {**job(), "segments": [{"start": 10.0, "end": 14.0}]}
    assert process(short, deps, last_attempt=False) is Outcome.FAILED
    assert cached.downloads == 1 and not cached.dir.exists()
    assert list(Path(deps.settings.work_dir).iterdir()) == []


def test_the_cache_holds_one_source_and_shares_it_between_threads(tmp_path: Path) -> None:
    cache = SourceCache(tmp_path)
    calls: list[str] = []
    gate = threading.Event()

    def slow_download(dest: Path) -> None:
        calls.append(dest.name)
        gate.wait(5)
        dest.write_bytes(b"A")

    got: list[Path | None] = []

    def user() -> None:
        with cache.use("s3://b/a.mp4", "v1", ".mp4", slow_download) as path:
            got.append(path)

    threads = [threading.Thread(target=user) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(5)
    assert len(calls) == 1 and len(got) == 2 and got[0] == got[1] is not None  # one download, both served
    assert got[0] is not None and got[0].read_bytes() == b"A"
    # In use, the entry is never dropped; another source then goes to the caller's own scratch (None).
    with cache.use("s3://b/a.mp4", "v1", ".mp4", slow_download) as path:
        cache.drop_idle()
        assert path is not None and path.exists()
        with cache.use("s3://b/other.mp4", "v1", ".mp4", slow_download) as other:
            assert other is None
    # A new version of the same URI is downloaded again, and replaces the old file.
    with cache.use("s3://b/a.mp4", "v2", ".mp4", lambda d: d.write_bytes(b"B")) as path:
        assert path is not None and path.read_bytes() == b"B"
    assert [p.read_bytes() for p in cache_files(cache)] == [b"B"]
    cache.drop_idle()
    assert cache_files(cache) == []


def test_a_failed_download_leaves_nothing_cached(tmp_path: Path) -> None:
    cache = SourceCache(tmp_path)

    def broken(dest: Path) -> None:
        dest.write_bytes(b"half")
        raise StorageError("connection reset")

    with pytest.raises(StorageError), cache.use("s3://b/a.mp4", "v1", ".mp4", broken):
        pass
    assert cache_files(cache) == []
    with cache.use("s3://b/a.mp4", "v1", ".mp4", lambda d: d.write_bytes(b"A")) as path:
        assert path is not None and path.read_bytes() == b"A"
    assert (cache.downloads, cache.hits) == (1, 0)


def test_caches_of_dead_processes_are_removed(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid names no process now
    stale = tmp_path / f"sources-{gone.pid}"
    stale.mkdir()
    (stale / "x.mp4").write_bytes(b"old")
    live = tmp_path / f"sources-{os.getppid()}"
    live.mkdir()
    SourceCache(tmp_path)
    assert not stale.exists() and live.exists()


def _through_the_queue(deps: Deps, queue: Queue, **output: Any) -> dict[str, Any]:
    """A chunked job with these output options, every part run and the assembly: the completed record."""
    msg = {**job(), "output": {**job()["output"], **output}}
    assert process(msg, deps, last_attempt=False) is Outcome.DISPATCHED
    for body in [*queue.take("audio"), *queue.take("chunk")]:
        assert process_part(body, deps, last_attempt=False) is Outcome.STORED
    (assembly,) = queue.take("assembly")
    assert process_part(assembly, deps, last_attempt=False) is Outcome.COMPLETED
    rec = deps.records.get("rnd_1")
    assert rec is not None and rec["state"] == "completed"
    return rec


def test_a_chunked_render_through_the_queue_measures_its_loudness_once(deps: Deps, queue: Queue) -> None:
    """The audio part measures all the kept audio and applies one gain; the assembly's record carries it."""
    rec = _through_the_queue(deps, queue, loudness="broadcast")
    report = rec["loudness"]
    assert report["target"] == "broadcast" and report["mode"] in ("linear", "limited")
    assert abs(report["output"]["integrated"] + 23) <= 0.2
    assert rec["output"]["loudness"] == "broadcast"


def test_a_reframed_render_through_the_queue_crops_every_chunk(deps: Deps, queue: Queue) -> None:
    rec = _through_the_queue(deps, queue, aspect="9:16")
    assert rec["output"]["aspect"] == "9:16"
    assert isinstance(deps.storage, MemoryStorage)
    data = deps.storage.get(str(rec["output_key"])).data
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (102, 180)


def test_the_coordinator_plans_the_crop_path_once_and_sends_it(
    deps: Deps, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The faces are looked for once, by the coordinator; every chunk crops along the path its message carries."""
    from worker.render import faces

    looked: list[int] = []
    real = faces.sightings

    def counting(plan: Any, **kw: Any) -> Any:
        looked.append(1)
        return real(plan, **kw)

    monkeypatch.setattr(faces, "sightings", counting)
    framed = {**job(), "output": {**job()["output"], "aspect": "9:16"}}
    assert process(framed, deps, last_attempt=False) is Outcome.DISPATCHED
    chunks = queue.take("chunk")
    assert len(looked) == 1 and all(body["crop_path"] == [[0, 108]] for body in chunks)
    for body in [*chunks, *queue.take("audio")]:
        assert process_part(body, deps, last_attempt=False) is Outcome.STORED
    assert len(looked) == 1


def test_a_smart_render_through_the_queue_copies_inside_every_chunk(deps: Deps, queue: Queue, tmp_path: Path) -> None:
    """``smart`` on (the default): each chunk copies the 2 s GOPs it keeps whole; the assembly writes one track."""
    import mediacheck as mc
    from test_render_exact import check_frames
    from test_smart import packet_times

    from worker.plan import Segment

    rec = _through_the_queue(deps, queue, smart=True)
    frames = rec["frames"]
    total = frames["copied"] + frames["encoded"]
    assert total == 450 and frames["copied"] >= 180, frames  # two 7.5 s pieces, three chunks
    assert isinstance(deps.storage, MemoryStorage)
    out = tmp_path / "out.mp4"
    out.write_bytes(deps.storage.get(str(rec["output_key"])).data)
    check_frames(out, [Segment(c["start"], c["end"]) for c in CUT], Fraction(30), frames=6000)
    pts, dts, tb = packet_times(out)
    assert {b - a for a, b in zip(dts, dts[1:], strict=False)} == {int(1 / (30 * tb))}  # across the chunks' joins
    assert mc.stream_durations(out)["video_frames"] == total
