"""How filtering cost grows with the number of cuts: segment/asegment against split + trim.

Filtering only (decode + graph, ``-f null``, no encoder), so the graph's own cost is
what is measured. Source: the 200 s 320x180 30 fps test fixture (barcoded video,
noise audio). Run by hand: ``.venv/bin/python bench/graph_scaling.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import make_plan, naive_graph  # noqa: E402
from fixtures import generate as gen  # noqa: E402
from worker import ffmpeg  # noqa: E402
from worker.output import OutputSpec  # noqa: E402
from worker.planner import plan_render  # noqa: E402
from worker.presets import load_preset  # noqa: E402
from worker.render import command_for  # noqa: E402


def filter_only(args: list[str]) -> list[str]:
    i = args.index("-map")
    return [*args[:i], "-map", "[vout]", "-map", "[aout]", "-f", "null", "-"]


def timed(argv: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def main() -> int:
    counts = [int(x) for x in sys.argv[1:]] or [10, 150, 1000]
    with tempfile.TemporaryDirectory() as tmp:
        src = gen.make("cfr30", gen.cache_dir() or tmp)
        preset = load_preset("mp4")
        rows = []
        for n in counts:
            segs = make_plan(n, 199.0, 0.6, seed=n)
            plan = plan_render(src, segs, OutputSpec("mp4"))
            assert plan.info.video and plan.info.audio
            ours = Path(tmp) / "ours.txt"
            ours.write_text(plan.graph(preset))
            naive = Path(tmp) / "naive.txt"
            naive.write_text(naive_graph(segs, plan.info.video.index, plan.info.audio.index))
            exe = ffmpeg.resolve_ffmpeg()
            t_ours = timed([exe, *filter_only(command_for(plan, preset, str(ours), "x.mp4"))])
            t_naive = timed([exe, *filter_only(command_for(plan, preset, str(naive), "x.mp4"))])
            row = {"segments": n, "output_s": round(plan.timeline.duration, 2), "segment_graph_s": round(t_ours, 2),
                   "split_trim_graph_s": round(t_naive, 2), "ratio": round(t_naive / t_ours, 1)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
