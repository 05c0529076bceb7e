"""Benchmark: smart render against a full re-encode and against the stream-copy bound (issue 20).

Contenders, interleaved in one run on one machine, the same 40-piece filler cut (about 80 % kept) of an H.264
source written as a camera writes (1 s closed GOPs, two B-frames, sensor grain, AAC audio):

* ``no-smart``: ``output.smart = false``, every kept frame encoded (today's render);
* ``smart``: as shipped: whole GOPs copied, the frames around each cut encoded, the track spliced and checked;
* ``copy``: the stream-copy bound: one ffmpeg, the concat demuxer with ``inpoint``/``outpoint`` on the source
  and ``-c copy``: each piece starts at the keyframe before its cut (frames the plan drops are shown, and
  the audio is not cut with the picture), so it is not exact, only the floor of what copying can cost.

The report gives each median, smart's speed-up over ``no-smart`` and its ratio to ``copy``, and the share of
frames smart copied::

    python bench/smart.py [--seconds 300] [--rounds 3] [--height 720|1080 ...]
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
from worker import planner  # noqa: E402
from worker.output import OutputSpec  # noqa: E402
from worker.plan import Segment  # noqa: E402
from worker.render import render  # noqa: E402

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def make_source(path: Path, height: int, seconds: int) -> None:
    """A camera's recording: moving detail with temporal grain, 1 s closed GOPs with B-frames, AAC."""
    width = height * 16 // 9
    # Inside the tier's Auto bitrate (5 Mb/s at 720p, 10 at 1080p), as a copy must be: a camera's or a phone's
    # "standard" quality setting.
    rate = {720: "4M", 1080: "8M"}.get(height, "8M")
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y"]
        + ["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=30:duration={seconds}"]
        + ["-f", "lavfi", "-i", f"anoisesrc=color=pink:amplitude=0.2:duration={seconds}:sample_rate=48000"]
        + ["-vf", "noise=alls=8:allf=t", "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "30"]
        + ["-keyint_min", "30", "-sc_threshold", "0", "-b:v", rate, "-pix_fmt", "yuv420p"]
        + ["-c:a", "aac", "-b:a", "128k", "-ac", "2", str(path)],
        check=True,
    )


def copy_bound(src: Path, segments: list[Segment], out: Path) -> None:
    """Keyframe-aligned stream copy of the same pieces (not exact): the floor of what copying costs."""
    listing = out.with_suffix(".ffconcat")
    lines = ["ffconcat version 1.0"]
    for s in segments:
        lines += [f"file '{src}'", f"inpoint {s.start:.6f}", f"outpoint {s.end:.6f}"]
    listing.write_text("\n".join(lines) + "\n")
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing)]
        + ["-c", "copy", "-movflags", "+faststart", str(out)],
        check=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--height", type=int, nargs="+", default=[720, 1080])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-smart-") as tmp:
        work = Path(tmp)
        for height in args.height:
            src = work / f"camera-{height}p.mp4"
            make_source(src, height, args.seconds)
            segments = make_plan(40, float(args.seconds), 0.8, seed=20)
            strategy = planner.strategy_for(planner.plan_render(src, segments, OutputSpec("mp4")))
            print(json.dumps({"height": height, "strategy": strategy.kind, "not_smart": strategy.not_smart}))
            walls: dict[str, list[float]] = {"no-smart": [], "smart": [], "copy": []}
            copied = encoded = 0
            for r in range(args.rounds):
                order = list(walls) if r % 2 == 0 else list(reversed(walls))
                for name in order:
                    out = work / f"{name}.mp4"
                    t0 = time.monotonic()
                    if name == "copy":
                        copy_bound(src, segments, out)
                    else:
                        result = render(src, segments, OutputSpec("mp4", smart=name == "smart"), out)
                        if name == "smart":
                            copied, encoded = result.copied_frames, result.encoded_frames
                    walls[name].append(time.monotonic() - t0)
                    out.unlink()
                    print(
                        json.dumps(
                            {"height": height, "round": r, "contender": name, "wall_s": round(walls[name][-1], 2)}
                        ),
                        flush=True,
                    )
            med = {k: statistics.median(v) for k, v in walls.items()}
            print(
                json.dumps(
                    {
                        "source": f"{height}p30 H.264, 1 s GOPs, {args.seconds} s; 40 pieces keeping 80 %",
                        **{f"{k}_median_s": round(v, 2) for k, v in med.items()},
                        "speedup_vs_no_smart": round(med["no-smart"] / med["smart"], 2),
                        "ratio_to_copy_bound": round(med["smart"] / med["copy"], 2),
                        "copied_share": round(copied / max(1, copied + encoded), 3),
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
