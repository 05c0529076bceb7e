"""Benchmark: chunked renders through the queue (issue 11, queue half) against the whole render.

Run by hand on a quiet machine, never as a timed test::

    .venv/bin/python bench/queue_chunks.py [--repeats 3] [--seconds 90]

End to end, as in production: ``render-cli enqueue`` → ``render-worker`` processes → Redis → S3 → the record
``completed``. The servers are the test suite's own (``tests/services.py``: ``redis-server`` and ``s3rver``)
and the workers are started as ``tests/farm.py`` starts them, each a real ``render-worker --processes 1
--threads 1`` pinned to its own core with ``taskset`` (one machine each, as in a farm):

* ``whole``: one worker on core 0, ``RENDER_CHUNK_MIN_S`` = 86400 so the render is never split;
* ``chunked``: two workers on cores 0 and 1 with the default ``RENDER_CHUNK_S`` / ``RENDER_CHUNK_MIN_S``
  (worker/settings.py), so the worker that takes the message plans the chunks, any worker renders them and
  the assembly joins them. ``--chunk-s`` / ``--chunk-min-s`` override them, for exploration only.

Time to result: from just before ``render-cli enqueue`` starts to the first poll (every 0.1 s) that sees the
record ``completed``. CPU time: user + system of every process descended from the workers (Dramatiq's parent,
its worker processes, their ffmpeg), read from /proc just before the enqueue and again at completion, while
the workers still run; the workers' boot is therefore not counted, and their idle polling while the render
runs is. Redis and s3rver are reported apart (``services_cpu_s``): they are the farm's, not a worker's.

Each output is downloaded and checked: record ``completed``, its video and the record's ``duration_s`` within
a frame of the cut. Runs alternate their order each repetition (whole first, then chunked first) so drifting
load hits both alike; the report gives medians, ratios (chunked ÷ whole) and every run, with the load average
before and after. Raw JSON lines are appended to ``bench/results/queue-chunks.jsonl`` (not committed).

The source and the cut are bench/chunks.py's: 1280x720 30 fps grainy ``testsrc2``, 9 pieces keeping
``--seconds``; output mp4 720p.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # farm.py and services.py are top-level modules there, as under pytest

from farm import BIN, Farm, WorkerProcess, processes, ts  # noqa: E402
from services import RedisServer, S3Server  # noqa: E402

from bench.chunks import cut_plan, make_source  # noqa: E402
from worker.errors import ConfigError  # noqa: E402
from worker.settings import Settings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "queue-chunks.jsonl"
RATE = 30  # the source's frame rate (make_source)
NO_SPLIT_S = 86400  # RENDER_CHUNK_MIN_S for the whole render: longer than any cut here
TICK = os.sysconf("SC_CLK_TCK")


# --- CPU time from /proc ----------------------------------------------------------------------------------------


def _stat_table() -> dict[int, tuple[int, float]]:
    """pid → (ppid, own CPU + CPU of its reaped children, in seconds) of every process, zombies included.

    Zombies count: an ffmpeg that has exited but is not reaped yet still holds CPU time that no parent's
    cutime/cstime has taken over.
    """
    # Fields after "(comm)": state ppid pgrp ... utime=11 stime=12 cutime=13 cstime=14.
    return {pid: (int(f[1]), sum(int(x) for x in f[11:15]) / TICK) for pid, _, f in processes(zombies=True)}


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds of ``roots`` and all their live descendants.

    By ppid, not by process group: ffmpeg runs in a session of its own (worker/ffmpeg.py), outside the worker's
    group. A live process's cutime/cstime hold only its already reaped children, and those are no longer in
    /proc, so nothing is counted twice.
    """
    table = _stat_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children.get(pid, []))
    return total


def _pin_all_threads(pid: int, cores: str) -> None:
    # -a: every thread (node's libuv pool already exists when we get here); sched_setaffinity would pin one.
    subprocess.run(["taskset", "-a", "-p", "-c", cores, str(pid)], check=True, capture_output=True)


# --- one run ----------------------------------------------------------------------------------------------------


def video_duration(path: Path) -> tuple[float, int]:
    """(seconds, frames) of the first video stream, from the container's own counts."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.duration is not None and s.time_base is not None
        return float(s.duration * s.time_base), s.frames


def run_once(
    name: str,
    redis_server: RedisServer,
    s3: S3Server,
    source_uri: str,
    segments: list[tuple[float, float]],
    root: Path,
    chunk_settings: dict[str, float],
    cores: list[int],
    timeout_s: float,
) -> dict[str, Any]:
    # A farm per run: a fresh queue and output bucket, so nothing a failed run left behind is taken by the next.
    farm = Farm(redis_server, s3, root)
    workers: list[WorkerProcess] = []
    try:
        env = farm.env(**chunk_settings)
        for core in cores:
            argv = ["taskset", "-c", str(core), str(BIN / "render-worker"), "--processes", "1", "--threads", "1"]
            worker = WorkerProcess(argv, env, root / f"worker-core{core}.log")
            workers.append(worker)
            farm.workers.append(worker)  # so farm.close() kills it if anything below fails
        for worker in workers:
            worker.wait_ready(1, timeout_s=60)
        roots = [w.proc.pid for w in workers]  # taskset execs render-worker: same pid
        services = [p.pid for p in (redis_server.proc, s3.proc) if p is not None]
        load_before = os.getloadavg()
        cpu0, svc0 = tree_cpu(roots), tree_cpu(services)
        t0 = time.monotonic()
        rid = farm.enqueue(source_uri, "mp4", segments=segments)
        rec = farm.wait_record(rid, timeout_s=timeout_s)
        wall = time.monotonic() - t0
        # Read before stopping: a graceful stop reaps the processes and their CPU would leave /proc with them.
        cpu, svc = tree_cpu(roots) - cpu0, tree_cpu(services) - svc0
        load_after = os.getloadavg()
        raw = farm.records.get_raw(rid) or {}
        for worker in workers:
            worker.stop()
        if rec["state"] != "completed":
            raise SystemExit(f"{name}: render {rid} ended {rec['state']}: {rec}\n{farm.logs(tail=3000)}")
        out = farm.download(rec["output_key"], root / f"{rid}.mp4")
        dur, frames = video_duration(out)
        expected = sum(b - a for a, b in segments)
        ok = abs(dur - expected) <= 1 / RATE and abs(float(rec["duration_s"]) - expected) <= 1 / RATE
        if not ok:
            raise SystemExit(f"{name}: output {dur:.3f} s (record {rec['duration_s']}), cut {expected:.3f} s")
        out.unlink()
        # Which worker stored which chunk (their logs say "render <id>: chunk k of K stored"): a chunked run in
        # which one worker did everything measures nothing.
        stored = [
            sorted(int(k) for k in re.findall(rf"render {rid}: chunk (\d+) of \d+ stored", w.log())) for w in workers
        ]
        return {
            "contender": name,
            "render_id": rid,
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "services_cpu_s": round(svc, 2),
            "record_s": round(ts(rec["completed_at"]) - ts(rec["created_at"]), 2),
            "chunks": int(raw.get("chunks") or 1),
            "chunks_stored_by_worker": stored,
            "output_s": round(dur, 3),
            "output_frames": frames,
            "size_bytes": rec["size_bytes"],
            "cores": cores,
            "settings": chunk_settings,
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in load_after],
        }
    finally:
        farm.close()


# --- report -----------------------------------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["contender"], []).append(r)
    base_wall = statistics.median(r["wall_s"] for r in by["whole"])
    base_cpu = statistics.median(r["cpu_s"] for r in by["whole"])
    rows = []
    for name, rs in by.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        cpu = statistics.median(r["cpu_s"] for r in rs)
        rows.append(
            {
                "contender": name,
                "workers": len(rs[0]["cores"]),
                "chunks": sorted({r["chunks"] for r in rs}),
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "speedup": round(base_wall / wall, 2),
                "cpu_ratio": round(cpu / base_cpu, 3),
                "services_cpu_s": round(statistics.median(r["services_cpu_s"] for r in rs), 2),
            }
        )
    return rows


def per_run_pairs(runs: list[dict[str, Any]]) -> list[str]:
    """Speed-up / CPU ratio of each repetition's chunked run against the same repetition's whole run."""
    whole = {r["repeat"]: r for r in runs if r["contender"] == "whole"}
    return [
        f"{whole[r['repeat']]['wall_s'] / r['wall_s']:.2f} / {r['cpu_s'] / whole[r['repeat']]['cpu_s']:.3f}"
        for r in runs
        if r["contender"] == "chunked" and r["repeat"] in whole
    ]


def markdown(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    n = len({r["repeat"] for r in runs})
    lines = [
        f"| contender | time to result (median of {n}) | speed-up | CPU time (median) | CPU ÷ whole "
        "| Redis + S3 CPU (median) | per run: speed-up / CPU ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        chunks = "/".join(str(c) for c in row["chunks"])
        who = f"{row['workers']} worker{'s' if row['workers'] > 1 else ''} on {row['workers']} core"
        who += "s" if row["workers"] > 1 else ""
        pairs = "—" if row["contender"] == "whole" else ", ".join(per_run_pairs(runs))
        lines.append(
            f"| {row['contender']} ({chunks} chunk{'s' if chunks != '1' else ''}), {who} | {row['wall_s']:.1f} s "
            f"| {row['speedup']:.2f} | {row['cpu_s']:.1f} s | {row['cpu_ratio']:.3f} | {row['services_cpu_s']:.1f} s "
            f"| {pairs} |"
        )
    return "\n".join(lines)


# --- entry point ------------------------------------------------------------------------------------------------


def main() -> int:
    defaults = Settings()
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=90.0, help="output length kept by the cut")
    ap.add_argument("--chunk-s", type=float, default=defaults.chunk_s, help="chunked contender's RENDER_CHUNK_S")
    ap.add_argument(
        "--chunk-min-s", type=float, default=defaults.chunk_min_s, help="chunked contender's RENDER_CHUNK_MIN_S"
    )
    ap.add_argument(
        "--service-cores",
        default="auto",
        help="cores for redis-server and s3rver (taskset list); auto: 2 to the last core when there are more "
        "than 2, else unpinned (they then share the workers' cores)",
    )
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds a render may take before the run fails")
    args = ap.parse_args()
    # Refuse values a worker would refuse at startup, before minutes go into the source and the servers.
    try:
        Settings(chunk_s=args.chunk_s, chunk_min_s=args.chunk_min_s)  # validates on construction
    except ConfigError as err:
        ap.error(str(err))
    cache = ROOT / ".fixtures-cache"
    cache.mkdir(exist_ok=True)
    src = cache / f"bench-720p-{args.seconds + 8.4:g}s.mp4"  # bench/chunks.py's name: one cache for both
    make_source(src, args.seconds + 8.4)
    segments = [(s.start, s.end) for s in cut_plan(args.seconds)]
    ncpu = os.cpu_count() or 1
    service_cores = args.service_cores
    if service_cores == "auto":
        service_cores = f"2-{ncpu - 1}" if ncpu > 2 else ""
    contenders: dict[str, tuple[dict[str, float], list[int]]] = {
        "whole": ({"chunk_min_s": NO_SPLIT_S}, [0]),
        "chunked": ({"chunk_s": args.chunk_s, "chunk_min_s": args.chunk_min_s}, [0, 1]),
    }
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    header = {
        "started": started,
        "cores": ncpu,
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "seconds": args.seconds,
        "repeats": args.repeats,
        "service_cores": service_cores or None,
        "source": src.name,
    }
    print(json.dumps(header), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-queue-chunks-") as tmp_s,
        RedisServer() as redis_server,
        S3Server("s3rver") as s3,
        RESULTS.open("a") as results,
    ):
        tmp = Path(tmp_s)
        if service_cores:
            for proc in (redis_server.proc, s3.proc):
                assert proc is not None
                _pin_all_threads(proc.pid, service_cores)
        # Upload once; every run's farm reads the same object (one S3 server, one set of credentials).
        uploader = Farm(redis_server, s3, tmp / "upload")
        source_uri = uploader.upload(src, f"bench/{src.name}")
        uploader.close()
        results.write(json.dumps({"header": header}) + "\n")
        for r in range(args.repeats):
            order = ["whole", "chunked"] if r % 2 == 0 else ["chunked", "whole"]
            for name in order:
                settings, cores = contenders[name]
                row = run_once(
                    name, redis_server, s3, source_uri, segments, tmp / f"{r}-{name}", settings, cores, args.timeout
                )
                row = {"started": started, "repeat": r, **row}
                runs.append(row)
                results.write(json.dumps(row) + "\n")
                results.flush()
                print(json.dumps(row), flush=True)
        rows = summarize(runs)
        footer = {"started": started, "summary": rows, "load_after": [round(x, 2) for x in os.getloadavg()]}
        results.write(json.dumps(footer) + "\n")
    for row in rows:
        print(json.dumps(row))
    print()
    print(
        f"{args.seconds:g} s of output, mp4 720p; {ncpu} cores; load average before "
        f"{', '.join(f'{x:.2f}' for x in header['load_before'])}, after "
        f"{', '.join(f'{x:.2f}' for x in footer['load_after'])}"
    )
    print()
    print(markdown(rows, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
