"""Benchmark: the exact renderer against a naive cut graph and the no-cut floor.

Run by hand (``make bench``), never as a timed test. Contenders run side by
side, interleaved, in one run on one machine, and the report gives ratios to
the floor rather than absolute times, because the machines are shared and noisy.

Contenders, all with the same encoder settings (the mp4 CPU preset):

* ``render-cli``: the real command line, Python start-up and probe included;
* ``naive``: split + trim/atrim in seconds + concat, one ffmpeg run;
* ``floor``: an encode of the same output duration with no cutting at all,
  which no re-encoding renderer can beat.

Peak RSS is the peak of the *sum* over the process tree (render-cli's Python
process plus its ffmpeg), sampled every 20 ms from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import imageio_ffmpeg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.device_check import source_args  # noqa: E402
from worker.output import OutputSpec  # noqa: E402
from worker.plan import Segment  # noqa: E402
from worker.planner import plan_render  # noqa: E402
from worker.presets import load_preset  # noqa: E402
from worker.render import command_for  # noqa: E402

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
RESULTS = ROOT / "bench" / "results"


def make_source(path: Path, seconds: int) -> None:
    if not path.exists():
        subprocess.run(source_args(FFMPEG, str(path), seconds), check=True)


def make_plan(n: int, duration: float, keep: float, seed: int) -> list[Segment]:
    """``n`` sorted segments keeping about ``keep`` of ``duration``, irregular lengths."""
    rng = random.Random(seed)
    weights = [rng.uniform(0.5, 1.5) for _ in range(2 * n + 1)]
    scale = duration / sum(weights)
    spans = [w * scale for w in weights]
    kept = spans[1::2]
    dropped = spans[0::2]
    # rescale so kept/dropped match the wanted ratio
    k = keep * duration / sum(kept)
    d = (1 - keep) * duration / sum(dropped)
    segs, t = [], 0.0
    for i in range(n):
        t += dropped[i] * d
        start = t
        t += kept[i] * k
        segs.append(Segment(round(start, 3), round(min(t, duration - 0.01), 3)))
    return segs


class TreeRss:
    """Peak of the summed RSS of a process and all its descendants."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> int:
        parents: dict[int, int] = {}
        rss: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
                rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError, ValueError):
                continue
        tree = {self.pid}
        changed = True
        while changed:
            changed = False
            for pid, ppid in parents.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    changed = True
        return sum(rss.get(p, 0) for p in tree)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(0.02)


def timed(argv: list[str]) -> tuple[float, int]:
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with TreeRss(proc.pid) as rss:
        _, err = proc.communicate()
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed: {argv[:6]}...\n{err.decode()[-2000:]}")
    return wall, rss.peak


def naive_graph(segs: list[Segment], v: int, a: int) -> str:
    n = len(segs)
    lines = [
        f"[0:{v}]split={n}" + "".join(f"[vs{i}]" for i in range(n)),
        f"[0:{a}]asplit={n}" + "".join(f"[as{i}]" for i in range(n)),
    ]
    for i, s in enumerate(segs):
        lines.append(f"[vs{i}]trim=start={s.start}:end={s.end},setpts=PTS-STARTPTS[v{i}]")
        lines.append(f"[as{i}]atrim=start={s.start}:end={s.end},asetpts=PTS-STARTPTS[a{i}]")
    lines.append("".join(f"[v{i}][a{i}]" for i in range(n)) + f"concat=n={n}:v=1:a=1[vc][aout]")
    lines.append("[vc]format=yuv420p[vout]")
    return ";\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=150, help="source length (>= 120)")
    ap.add_argument("--segments", type=int, nargs="+", default=[30, 150])
    ap.add_argument("--keep", type=float, default=0.8, help="fraction of the source the plans keep")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    src = RESULTS / f"source-720p30-{args.seconds}s.mp4"
    make_source(src, args.seconds)
    preset = load_preset("mp4", "cpu")
    cli = str(Path(sys.executable).with_name("render-cli"))
    report: dict[str, object] = {"source": str(src), "seconds": args.seconds, "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.segments:
            segs = make_plan(n, float(args.seconds), args.keep, seed=n)
            plan = plan_render(src, segs, OutputSpec("mp4"))
            assert plan.info.video and plan.info.audio
            plan_file = Path(tmp) / f"plan{n}.json"
            plan_file.write_text(json.dumps({"segments": [s.__dict__ for s in segs]}))
            naive_file = Path(tmp) / f"naive{n}.txt"
            naive_file.write_text(naive_graph(segs, plan.info.video.index, plan.info.audio.index))
            floor_file = Path(tmp) / "floor.txt"
            floor_file.write_text(
                f"[0:{plan.info.video.index}]format=yuv420p[vout];[0:{plan.info.audio.index}]anull[aout]\n"
            )
            out = str(Path(tmp) / "out.mp4")
            ours = [cli, "render", str(src), "--cut", str(plan_file), "--format", "mp4", "--quiet", "-o", out]
            naive = [FFMPEG, *command_for(plan, preset, str(naive_file), out)]
            floor_args = command_for(plan, preset, str(floor_file), out)
            i = floor_args.index("-i")
            floor = [FFMPEG, *floor_args[:i], "-t", f"{plan.timeline.duration:.6f}", *floor_args[i:]]
            runs: dict[str, list[tuple[float, int]]] = {"render-cli": [], "naive": [], "floor": []}
            for rep in range(args.repeats):
                order = list(runs.items())
                if rep % 2:
                    order.reverse()  # alternate the order so drift in machine load spreads evenly
                for name, _ in order:
                    argv = {"render-cli": ours, "naive": naive, "floor": floor}[name]
                    runs[name].append(timed(argv))
                    w, r = runs[name][-1]
                    print(f"segments={n} rep={rep} {name:10s} wall={w:7.2f}s peak_rss={r / 2**20:7.1f} MiB", flush=True)
            med = {k: (statistics.median(w for w, _ in v), statistics.median(r for _, r in v)) for k, v in runs.items()}
            case = {
                "segments": n,
                "output_s": plan.timeline.duration,
                "median_wall_s": {k: round(v[0], 2) for k, v in med.items()},
                "median_peak_rss_mib": {k: round(v[1] / 2**20, 1) for k, v in med.items()},
                "wall_ratio_to_floor": {k: round(v[0] / med["floor"][0], 3) for k, v in med.items()},
                "rss_ratio_to_floor": {k: round(v[1] / med["floor"][1], 3) for k, v in med.items()},
            }
            report["cases"].append(case)  # type: ignore[union-attr]
            print(json.dumps(case, indent=2), flush=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
