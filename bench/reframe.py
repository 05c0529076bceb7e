"""Benchmark: what following the speaker adds to a 1080p render (issue 22: at most 10 % of the wall time).

Contenders, interleaved in one run on one machine, the same 20-piece cut (80 % kept) of a 1920x1080 30 fps
source (fixtures/faces.py's walking astronaut, or with ``--scene face_talking`` its seated talking head,
looped to ``--seconds`` and encoded as a camera would: 1 s GOPs with B-frames, 12 Mb/s):

* ``centred``: ``aspect="9:16"`` with the face search switched off (the centred crop): the encode alone;
* ``following``: ``aspect="9:16"`` as shipped: the face search over the kept pieces, then the same encode.

The report gives the ratio of the medians, the face search's own time (timed inside the ``following`` runs)
as a share of the centred render, and the worker's peak RSS. The two renders encode different pictures (a
still set against one that pans with the speaker), so the ratio also holds the encoder's cost of the panning;
the search's own share is the cost the issue bounds::

    python bench/reframe.py [--seconds 32] [--rounds 3] [--resolution 1080p|""] [--grain 8] [--scene face_talking]
"""

from __future__ import annotations

import argparse
import json
import resource
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
from fixtures import faces as scene  # noqa: E402
from worker.output import OutputSpec  # noqa: E402
from worker.render import faces, render  # noqa: E402

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--resolution", default="1080p", help="the output's tier (1080p: 1080x1920, what platforms want)")
    ap.add_argument("--grain", type=int, default=0, help="temporal sensor noise in the source (ffmpeg noise alls)")
    ap.add_argument(
        "--scene",
        default="face_moving",
        choices=("face_moving", "face_talking"),
        help="the walk (moving most of the time, a cut every 8 s) or a seated talking head (shifts once in 8 s)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-reframe-") as tmp:
        work = Path(tmp)
        one = scene.make(args.scene, work)
        src = work / "long.mp4"
        loops = max(0, -(-args.seconds // scene.SECONDS) - 1)
        # Re-encoded as a camera writes (1 s closed GOPs, B-frames, deblocking), not as the fixture's ultrafast.
        subprocess.run(
            [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-stream_loop", str(loops), "-i", str(one)]
            + ["-t", str(args.seconds)]
            + (["-vf", f"noise=alls={args.grain}:allf=t"] if args.grain else [])
            + ["-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "30"]
            + ["-b:v", "12M", "-pix_fmt", "yuv420p", str(src)],
            check=True,
        )
        segments = make_plan(20, float(args.seconds) - 0.5, 0.8, seed=22)
        spec = OutputSpec("mp4", aspect="9:16", resolution=args.resolution or None)
        real = faces.sightings
        detect: list[float] = []

        def timed(plan: object, **kw: object) -> object:
            t0 = time.monotonic()
            try:
                return real(plan, **kw)  # type: ignore[arg-type]
            finally:
                detect.append(time.monotonic() - t0)

        walls: dict[str, list[float]] = {"centred": [], "following": []}
        for r in range(args.rounds):
            for name in ("centred", "following") if r % 2 == 0 else ("following", "centred"):
                faces.sightings = timed if name == "following" else (lambda plan, **kw: [])  # type: ignore[assignment]
                t0 = time.monotonic()
                render(src, segments, spec, work / f"{name}.mp4")
                walls[name].append(time.monotonic() - t0)
                print(json.dumps({"round": r, "contender": name, "wall_s": round(walls[name][-1], 2)}), flush=True)
        faces.sightings = real
        centred, following = statistics.median(walls["centred"]), statistics.median(walls["following"])
        detection = statistics.median(detect)
        print(
            json.dumps(
                {
                    "source": f"{args.scene}, 1920x1080 30 fps, {args.seconds} s, 20 pieces keeping 80 %",
                    "output": f"9:16 at {args.resolution or 'the crop size (608x1080)'}",
                    "grain": args.grain,
                    "centred_median_s": round(centred, 2),
                    "following_median_s": round(following, 2),
                    "ratio": round(following / centred, 3),
                    "detection_median_s": round(detection, 2),
                    "detection_share_of_centred": round(detection / centred, 3),
                    "peak_rss_worker_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
