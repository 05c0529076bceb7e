"""Peak memory of a render whose frames grow mid-stream, with and without the pixel limit.

The crafted source (fixtures/generate.py, ``grow_frames``) starts with 16x16
frames and then switches to 16000x16000. With the default
``RENDER_MAX_SOURCE_PIXELS`` ffmpeg's decoder refuses the big frames and the
render fails ``source_too_large``; with a limit above them, the same render
decodes them. Both run side by side, each in a fresh interpreter, and the
report gives the ratio of their peaks.

Run: ``.venv/bin/python bench/decode_limits.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fixtures import generate as gen  # noqa: E402
from worker.settings import Settings  # noqa: E402

# The render runs in a child so its peak is its own. VmHWM of the child (its
# own mm, unlike ru_maxrss, which a vfork'd exec inherits from the parent) plus
# ffmpeg's ru_maxrss from RUSAGE_CHILDREN bound the pair's peak from above.
_CHILD = """
import json, resource, sys
from pathlib import Path
from worker.errors import RenderError
from worker.output import OutputSpec
from worker.render import render
from worker.settings import Settings
source, out, limit = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
code = "completed"
try:
    render(source, None, OutputSpec("mp4"), out, settings=Settings(nvenc="off", max_source_pixels=limit))
except RenderError as exc:
    code = exc.code.value
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": code, "peak_mib": (hwm + kids) / 1024}))
"""


def run_once(source: Path, limit: int, work: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(source), str(work / "out.mp4"), str(limit)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    default = Settings().max_source_pixels
    big_w, big_h = gen.VARIANTS["grow_frames"].extra["big_size"]
    contenders = {"default limit": default, "limit above the big frames": big_w * big_h + 1}
    peaks: dict[str, list[float]] = {name: [] for name in contenders}
    codes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        source = gen.make("grow_frames", tmp)
        names = list(contenders)
        for rep in range(args.repeats):
            for name in names if rep % 2 == 0 else reversed(names):  # interleaved, order flips
                work = Path(tmp) / f"{rep}-{len(peaks[name])}-{name.split()[0]}"
                work.mkdir()
                got = run_once(source, contenders[name], work)
                peaks[name].append(got["peak_mib"])
                codes[name] = got["code"]
    base = statistics.median(peaks["default limit"])
    print(f"source: grow_frames (16x16, then {big_w}x{big_h}), {args.repeats} repeats, medians")
    print("| contender | outcome | peak RSS (median) | ÷ default limit |")
    print("|---|---|---|---|")
    for name in contenders:
        med = statistics.median(peaks[name])
        print(f"| {name} | {codes[name]} | {med:.0f} MiB | {med / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
