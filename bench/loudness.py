"""Benchmark: what loudness normalisation adds to a video render (issue 21: at most 15 % of the wall time).

Two contenders, interleaved in one run on one machine, the same cut of the same 1080p30 source:

* ``plain``: ``render(..., OutputSpec("mp4"))``, as today;
* ``loudness``: the same with ``loudness="podcast"``: the measuring passes (audio only) and the gain.

The source's audio is quiet noise in bursts with loud clicks, so the gain needs the limiter and the longest
path (up to four measuring passes) is the one timed. The report gives the ratio of the medians, not absolute times::

    python bench/loudness.py [--seconds 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import make_plan  # noqa: E402
from worker.output import OutputSpec  # noqa: E402
from worker.render import render  # noqa: E402

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def make_source(path: Path, seconds: int) -> None:
    """1920x1080 30 fps test pattern (H.264) with quiet, bursty noise and loud clicks (AAC)."""
    # Quiet noise in bursts (about -35 LUFS) and a 10 ms tone at -2 dBFS every 2.3 s: raised to -16 LUFS, the
    # tones would peak far over the ceiling, so the limiter runs and so do all the measuring passes.
    audio = (
        f"aevalsrc=exprs='0.03*(2*random(0)-1)*gt(sin(12*t),0)+0.8*sin(2*PI*700*t)*lt(mod(t,2.3),0.01)'"
        f":s=48000:d={seconds}"
    )
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y"]
        + ["-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=30:duration={seconds}"]
        + ["-f", "lavfi", "-i", audio, "-ac", "2", "-c:v", "libx264", "-preset", "veryfast", "-b:v", "8M"]
        + ["-c:a", "aac", "-b:a", "192k", "-shortest", str(path)],
        check=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-loudness-") as tmp:
        work = Path(tmp)
        src = work / "source.mp4"
        make_source(src, args.seconds)
        segments = make_plan(20, float(args.seconds), 0.8, seed=21)
        walls: dict[str, list[float]] = {"plain": [], "loudness": []}
        mode = None
        for r in range(args.rounds):
            for name in ("plain", "loudness") if r % 2 == 0 else ("loudness", "plain"):
                spec = OutputSpec("mp4", loudness="podcast" if name == "loudness" else None)
                t0 = time.monotonic()
                result = render(src, segments, spec, work / f"{name}.mp4")
                walls[name].append(time.monotonic() - t0)
                if result.loudness is not None:
                    mode = result.loudness["mode"]
                print(json.dumps({"round": r, "contender": name, "wall_s": round(walls[name][-1], 2)}), flush=True)
        plain, loud = statistics.median(walls["plain"]), statistics.median(walls["loudness"])
        print(
            json.dumps(
                {
                    "source": f"1920x1080 30 fps, {args.seconds} s, 20 pieces keeping 80 %",
                    "loudness_mode": mode,
                    "plain_median_s": round(plain, 2),
                    "loudness_median_s": round(loud, 2),
                    "ratio": round(loud / plain, 3),
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
