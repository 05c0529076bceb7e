"""Benchmark: chunked renders (issue 11) against the whole render, and picture quality at the joins.

Run by hand, never as a timed test::

    .venv/bin/python bench/chunks.py [--repeats 3] [--chunks 2 6] [--seconds 90]

Each worker is a process pinned to its own core with ``taskset`` (one machine each, as in a farm):

* ``whole``: today's render (``worker.render.render``), one worker on core 0;
* ``chunked K``: K chunks shared by 2 workers on cores 0 and 1 (worker w takes chunks w, w+2, ...; the
  audio goes to the worker with fewer frames), then the assembly (a stream copy) on core 0. The time is
  from the first worker's start to the assembled file: time to result.

CPU time is user + system of every process involved (workers, their ffmpeg, the assembly), from
``getrusage(RUSAGE_CHILDREN)``. Runs are interleaved, ``--repeats`` times, and the report gives medians
and ratios, because the machine is shared: the load average before and after is printed with them.

Quality at the joins: luma PSNR of each output frame against the source frame it shows (the source is
720p, so no scaling), for the chunked and the whole render, in windows of 15 frames either side of each
join, and the PSNR of the chunked render against the whole one there. With ``--vmaf``, the same windows'
VMAF (the bundled ffmpeg's libvmaf, its default model) against the source frames they show.

The source: 1280x720 30 fps ``testsrc2`` with temporal grain (so the encoder works as on a camera's
picture), keyframes every 2 s, pink-noise AAC; cut into 9 pieces that keep ``--seconds`` of it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker import ffmpeg  # noqa: E402
from worker.chunks import piece_name  # noqa: E402
from worker.output import OutputSpec  # noqa: E402
from worker.plan import Segment  # noqa: E402
from worker.planner import chunk_plan_for, plan_render  # noqa: E402
from worker.render import render  # noqa: E402
from worker.render.parts import assemble, render_audio, render_chunk  # noqa: E402

SPEC = OutputSpec("mp4", resolution="720p")
WINDOW = 15  # frames either side of a join whose PSNR is reported


def make_source(path: Path, seconds: float) -> None:
    if path.exists():
        return
    tmp = path.with_suffix(".partial.mp4")
    subprocess.run(
        [ffmpeg.resolve_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=30:duration={seconds},noise=alls=8:allf=t",
         "-f", "lavfi", "-i", f"anoisesrc=r=48000:d={seconds}:c=pink:seed=7:a=0.2",
         "-ac", "2", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-g", "60", "-keyint_min", "60",
         "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "192k", "-shortest", str(tmp)],
        check=True,
    )  # fmt: skip
    tmp.rename(path)


def cut_plan(seconds: float) -> list[Segment]:
    """9 pieces keeping ``seconds`` of a source ``seconds + 8.4`` long (cuts of 0.3 to 1.5 s)."""
    gaps = [0.3, 1.5, 0.7, 1.1, 0.4, 1.3, 0.9, 0.6]
    piece = seconds / 9
    segs, t = [], 0.2
    for i in range(9):
        segs.append(Segment(round(t, 4), round(t + piece, 4)))
        t += piece + (gaps[i] if i < len(gaps) else 0)
    return segs


def _pinned(core: int, *args: str) -> list[str]:
    return ["taskset", "-c", str(core), sys.executable, __file__, *args]


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_whole(src: Path, segs_file: Path, out: Path) -> tuple[float, float]:
    cpu0, t0 = _cpu_children(), time.monotonic()
    subprocess.run(_pinned(0, "_whole", str(src), str(segs_file), str(out)), check=True)
    return time.monotonic() - t0, _cpu_children() - cpu0


def run_chunked(src: Path, segs_file: Path, out: Path, chunks: int, workers: int, tmp: Path) -> tuple[float, float]:
    segs = load_segs(segs_file)
    plan = plan_render(src, segs, SPEC)
    cplan = chunk_plan_for(plan, count=chunks)
    jobs: list[list[str]] = [[] for _ in range(workers)]
    frames = [0] * workers
    for c in cplan.chunks:
        jobs[c.index % workers].append(str(c.index))
        frames[c.index % workers] += c.frames
    jobs[frames.index(min(frames))].append("audio")
    work = tmp / f"pieces-{chunks}"
    work.mkdir(exist_ok=True)
    cpu0, t0 = _cpu_children(), time.monotonic()
    procs = [
        subprocess.Popen(_pinned(w, "_chunks", str(src), str(segs_file), str(work), str(chunks), *jobs[w]))
        for w in range(workers)
    ]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a chunk worker failed ({p.args!r})")
    subprocess.run(_pinned(0, "_assemble", str(src), str(segs_file), str(work), str(chunks), str(out)), check=True)
    return time.monotonic() - t0, _cpu_children() - cpu0


def load_segs(path: Path) -> list[Segment]:
    return [Segment(**s) for s in json.loads(path.read_text())]


# --- quality at the joins ---------------------------------------------------------------------------------------


def _luma_frames(path: Path, wanted: set[int]) -> dict[int, object]:
    import av

    got: dict[int, object] = {}
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        for k, frame in enumerate(c.decode(s)):
            if k in wanted:
                got[k] = frame.to_ndarray(format="gray").astype("float64")
            if k > max(wanted):
                break
    return got


def _psnr(a: object, b: object) -> float:
    import numpy as np

    mse = float(np.mean((np.asarray(a) - np.asarray(b)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _vmaf(distorted: Path, first: int, src: Path, src_frames: list[int], tmp: Path) -> list[float]:
    """Per-frame VMAF (libvmaf's default model) of ``distorted``'s frames ``first``... against the source frames
    they show, in order. The source here is CFR, so its frames are picked by their decode index."""
    log = tmp / f"vmaf-{distorted.stem}-{first}.json"
    picks = "+".join(f"eq(n,{i})" for i in src_frames)
    graph = tmp / "vmaf-graph.txt"
    graph.write_text(
        f"[0:v]trim=start_frame={first}:end_frame={first + len(src_frames)},setpts=N/30/TB[d];"
        f"[1:v]select='{picks}',setpts=N/30/TB[r];"
        f"[d][r]libvmaf=log_fmt=json:log_path={log}:n_threads={os.cpu_count() or 1}"
    )
    subprocess.run(
        [ffmpeg.resolve_ffmpeg(), "-hide_banner", "-loglevel", "error", "-i", str(distorted), "-i", str(src),
         "-/filter_complex", str(graph), "-f", "null", "-"],
        check=True,
    )  # fmt: skip
    frames = json.loads(log.read_text())["frames"]
    return [float(f["metrics"]["vmaf"]) for f in frames]


def _joins(src: Path, segs: list[Segment], chunks: int) -> tuple[list[int], list[int]]:
    """The source frame each output frame shows, and the output frames that start chunks 1.. (the joins)."""
    plan = plan_render(src, segs, SPEC)
    cplan = chunk_plan_for(plan, count=chunks)
    shown = [p.src + i for p in plan.timeline.pieces for i in range(p.length)]
    return shown, [c.start for c in cplan.chunks[1:]]


def join_vmaf(src: Path, segs: list[Segment], whole: Path, chunked: Path, chunks: int, tmp: Path) -> dict[str, object]:
    """VMAF of the frames around each join, chunked and whole, each against the source frames shown."""
    shown, joins = _joins(src, segs, chunks)
    rows = []
    for j in joins:
        window = [shown[k] for k in range(j - WINDOW, j + WINDOW)]
        vc = _vmaf(chunked, j - WINDOW, src, window, tmp)
        vw = _vmaf(whole, j - WINDOW, src, window, tmp)
        rows.append(
            {
                "join": j,
                "chunked_mean": round(statistics.mean(vc), 2),
                "whole_mean": round(statistics.mean(vw), 2),
                "chunked_min": round(min(vc), 2),
                "whole_min": round(min(vw), 2),
                "step_chunked": round(vc[WINDOW] - vc[WINDOW - 1], 2),
                "step_whole": round(vw[WINDOW] - vw[WINDOW - 1], 2),
            }
        )
    return {"chunks": chunks, "vmaf_joins": rows}


def join_quality(src: Path, segs: list[Segment], whole: Path, chunked: Path, chunks: int) -> dict[str, object]:
    shown, joins = _joins(src, segs, chunks)
    out_frames = {k for j in joins for k in range(j - WINDOW, j + WINDOW)}
    src_frames = {shown[k] for k in out_frames}
    ref = _luma_frames(src, src_frames)
    a = _luma_frames(chunked, out_frames)
    b = _luma_frames(whole, out_frames)
    rows = []
    for j in joins:
        ks = range(j - WINDOW, j + WINDOW)
        pc = [_psnr(a[k], ref[shown[k]]) for k in ks]
        pw = [_psnr(b[k], ref[shown[k]]) for k in ks]
        cw = [_psnr(a[k], b[k]) for k in ks]
        rows.append(
            {
                "join": j,
                "chunked_vs_source_mean_db": round(statistics.mean(pc), 2),
                "whole_vs_source_mean_db": round(statistics.mean(pw), 2),
                "chunked_min_db": round(min(pc), 2),
                "whole_min_db": round(min(pw), 2),
                # the step: the first frame after the join against the last before it, chunked and whole
                "step_chunked_db": round(pc[WINDOW] - pc[WINDOW - 1], 2),
                "step_whole_db": round(pw[WINDOW] - pw[WINDOW - 1], 2),
                "chunked_vs_whole_min_db": round(min(cw), 2),
            }
        )
    # For scale: the same step at the whole render's own keyframes (an I frame is sharper than the P and B
    # frames around it in any x264 encode; a join's IDR frame is one more such keyframe).
    whole_keys = [k for k in _keyframes(whole) if k > 0 and all(abs(k - j) > WINDOW for j in joins)][:10]
    wk = {k for key in whole_keys for k in (key - 1, key)}
    ref2 = _luma_frames(src, {shown[k] for k in wk})
    b2 = _luma_frames(whole, wk)
    steps = [round(_psnr(b2[k], ref2[shown[k]]) - _psnr(b2[k - 1], ref2[shown[k - 1]]), 2) for k in whole_keys]
    return {"chunks": chunks, "joins": rows, "whole_keyframe_steps_db": steps}


def _keyframes(path: Path) -> list[int]:
    """Output frame numbers of the keyframes of ``path``."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.time_base is not None and s.average_rate is not None
        rate = s.average_rate
        return sorted(
            round(p.pts * s.time_base * rate) for p in c.demux(s) if p.size and p.is_keyframe and p.pts is not None
        )


# --- entry points -----------------------------------------------------------------------------------------------


def worker_main(argv: list[str]) -> int:
    """The pinned processes: ``_whole``, ``_chunks`` (some chunk indices and/or "audio"), ``_assemble``."""
    cmd, src, segs_file = argv[0], Path(argv[1]), Path(argv[2])
    plan = plan_render(src, load_segs(segs_file), SPEC)
    if cmd == "_whole":
        render(src, load_segs(segs_file), SPEC, argv[3])
        return 0
    work, chunks = Path(argv[3]), int(argv[4])
    cplan = chunk_plan_for(plan, count=chunks)
    if cmd == "_chunks":
        for job in argv[5:]:
            if job == "audio":
                render_audio(plan, work / "audio.m4a")
            else:
                render_chunk(plan, cplan, int(job), work / piece_name(int(job), "mp4"))
        return 0
    if cmd == "_assemble":
        pieces = [work / piece_name(c.index, "mp4") for c in cplan.chunks]
        assemble(plan, cplan, pieces, work / "audio.m4a", argv[5])
        return 0
    raise SystemExit(f"unknown command {cmd}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        return worker_main(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunks", type=int, nargs="+", default=[2, 6])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--quality-only", action="store_true", help="render once, unpinned, and measure the joins")
    ap.add_argument("--vmaf", action="store_true", help="with --quality-only: VMAF around the joins too (libvmaf)")
    args = ap.parse_args()
    cache = ROOT / ".fixtures-cache"
    cache.mkdir(exist_ok=True)
    src = cache / f"bench-720p-{args.seconds + 8.4:g}s.mp4"
    make_source(src, args.seconds + 8.4)
    segs = cut_plan(args.seconds)
    print(json.dumps({"load_before": os.getloadavg(), "cores": os.cpu_count()}), flush=True)
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-chunks-") as tmp_s:
        tmp = Path(tmp_s)
        segs_file = tmp / "segs.json"
        segs_file.write_text(json.dumps([s.__dict__ for s in segs]))
        plan = plan_render(src, segs, SPEC)
        print(json.dumps({"output_s": round(plan.timeline.duration, 3), "frames": plan.timeline.total_units}))
        if args.quality_only:
            render(src, segs, SPEC, tmp / "whole.mp4")
            for k in args.chunks:
                render(src, segs, SPEC, tmp / f"chunked-{k}.mp4", chunks=k)
                print(json.dumps(join_quality(src, segs, tmp / "whole.mp4", tmp / f"chunked-{k}.mp4", k)))
                if args.vmaf:
                    print(json.dumps(join_vmaf(src, segs, tmp / "whole.mp4", tmp / f"chunked-{k}.mp4", k, tmp)))
            return 0
        for r in range(args.repeats):  # interleaved, so drifting load hits every contender alike
            wall, cpu = run_whole(src, segs_file, tmp / "whole.mp4")
            results.setdefault("whole", []).append((wall, cpu))
            print(json.dumps({"run": r, "contender": "whole", "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}))
            for k in args.chunks:
                out = tmp / f"chunked-{k}.mp4"
                wall, cpu = run_chunked(src, segs_file, out, k, args.workers, tmp)
                results.setdefault(f"chunked {k}", []).append((wall, cpu))
                row = {"run": r, "contender": f"chunked {k}", "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
                print(json.dumps(row), flush=True)
        base_wall = statistics.median(w for w, _ in results["whole"])
        base_cpu = statistics.median(c for _, c in results["whole"])
        summary = []
        for name, runs in results.items():
            wall = statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            summary.append(
                {
                    "contender": name,
                    "wall_s": round(wall, 2),
                    "cpu_s": round(cpu, 2),
                    "speedup": round(base_wall / wall, 2),
                    "cpu_ratio": round(cpu / base_cpu, 3),
                }
            )
        for row in summary:
            print(json.dumps(row))
        for k in args.chunks:
            q = join_quality(src, segs, tmp / "whole.mp4", tmp / f"chunked-{k}.mp4", k)
            print(json.dumps(q))
    print(json.dumps({"load_after": os.getloadavg()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
