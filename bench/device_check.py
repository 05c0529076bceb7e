"""Checks on a lent GPU machine: NVENC probe and fallback, CUDA decode, scaling on many cores.

Two steps, because the GPU machine has no PyAV and no package index:

* ``prepare`` (here): generate a small reference source, probe it with the
  worker's own probe, and write the exact ffmpeg argument lists for each
  contender to ``.devcarry/device_plan.json``;
* ``run`` (there): regenerate the same source with the same ffmpeg binary, run
  the worker's real NVENC probe, drive the worker's real fallback loop
  (``encoders.encode_with_fallback``) with the NVENC and CPU argument lists,
  time CUDA against CPU decoding, and time render vs naive vs floor.

Results go to stdout as JSON lines; BENCHMARKS.md quotes them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CARRY = ROOT / ".devcarry"
SECONDS = 120


def source_args(ffmpeg: str, out: str, seconds: int = SECONDS) -> list[str]:
    """The benchmark source: 1280x720 30 fps test pattern (H.264 6 Mb/s) with pink-noise AAC stereo."""
    return [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=30:duration={seconds}",
        "-f", "lavfi", "-i", f"anoisesrc=r=48000:d={seconds}:c=pink:seed=7:a=0.2",
        "-ac", "2", "-c:v", "libx264", "-preset", "veryfast", "-b:v", "6M",
        "-c:a", "aac", "-b:a", "192k", "-shortest", out,
    ]  # fmt: skip


def prepare() -> None:
    import imageio_ffmpeg

    from bench.run import make_plan, naive_graph
    from worker.output import OutputSpec
    from worker.planner import plan_render
    from worker.presets import load_preset
    from worker.render import command_for

    CARRY.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = str(Path(tmp) / "src.mp4")
        subprocess.run(source_args(imageio_ffmpeg.get_ffmpeg_exe(), src), check=True)
        cases = {}
        for n in (30, 150):
            segs = make_plan(n, float(SECONDS), 0.8, seed=n)
            plan = plan_render(src, segs, OutputSpec("mp4"))
            assert plan.info.video and plan.info.audio
            floor_graph = f"[0:{plan.info.video.index}]format=yuv420p[vout];[0:{plan.info.audio.index}]anull[aout]\n"
            case = {"output_s": plan.timeline.duration, "graphs": {}, "args": {}}
            for variant in ("cpu", "nvenc"):
                preset = load_preset("mp4", variant)
                case["graphs"][variant] = plan.graph(preset)
                case["args"][variant] = command_for(plan, preset, "{GRAPH}", "{OUT}")
            cpu = load_preset("mp4", "cpu")
            case["graphs"]["naive"] = naive_graph(segs, plan.info.video.index, plan.info.audio.index)
            case["args"]["naive"] = command_for(plan, cpu, "{GRAPH}", "{OUT}")
            case["graphs"]["floor"] = floor_graph
            floor = command_for(plan, cpu, "{GRAPH}", "{OUT}")
            i = floor.index("-i")
            case["args"]["floor"] = floor[:i] + ["-t", f"{plan.timeline.duration:.6f}"] + floor[i:]
            cases[str(n)] = case
    (CARRY / "device_plan.json").write_text(json.dumps({"seconds": SECONDS, "cases": cases}))
    print(f"wrote {CARRY / 'device_plan.json'}")


def run(ffmpeg: str) -> None:
    from worker import ffmpeg as runner
    from worker.encoders import encode_with_fallback, probe_nvenc, variant_order

    def emit(**kw: object) -> None:
        print(json.dumps(kw), flush=True)

    emit(step="gpu", nvidia_smi=subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip(),
         cores=os.cpu_count())  # fmt: skip
    status = probe_nvenc(ffmpeg_path=ffmpeg, timeout_s=30)
    emit(step="nvenc_probe", available=status.available, reason=status.reason, seconds=round(status.seconds, 2))
    plan = json.loads((CARRY / "device_plan.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        src = str(Path(tmp) / "src.mp4")
        t0 = time.monotonic()
        subprocess.run(source_args(ffmpeg, src), check=True)
        emit(step="source", seconds=round(time.monotonic() - t0, 1))

        def args_for(case: dict, name: str, out: str) -> list[str]:
            graph = Path(tmp) / f"{name}.txt"
            graph.write_text(case["graphs"][name])
            args = [{"{GRAPH}": str(graph), "{OUT}": out}.get(a, a) for a in case["args"][name]]
            return [src if a.endswith(".mp4") and args[i - 1] == "-i" else a for i, a in enumerate(args)]

        # The real fallback loop, told NVENC works (as a probe on a GPU with NVENC would).
        case = plan["cases"]["30"]
        out = str(Path(tmp) / "fallback.mp4")
        tried: list[str] = []

        def attempt(variant: str) -> None:
            tried.append(variant)
            runner.run(args_for(case, variant, out), ffmpeg=ffmpeg)

        order = variant_order(True, status) if status.available else ["nvenc", "cpu"]
        used, why = encode_with_fallback(order, attempt)
        emit(step="fallback", order=order, tried=tried, used=used, reason=why, output_bytes=os.path.getsize(out))

        # CUDA (NVDEC) decode against CPU decode of the same source.
        for hw in ([], ["-hwaccel", "cuda"]):
            t0 = time.monotonic()
            done = subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", *hw, "-i", src, "-f", "null", "-"],
                                  capture_output=True, text=True)  # fmt: skip
            emit(step="decode", hwaccel=hw[1] if hw else "none", rc=done.returncode,
                 seconds=round(time.monotonic() - t0, 2), err=done.stderr[-300:])  # fmt: skip

        # Render vs naive vs floor on all cores.
        for n, case in plan["cases"].items():
            times = {}
            for name in ("floor", "cpu", "naive"):
                t0 = time.monotonic()
                runner.run(args_for(case, name, str(Path(tmp) / f"{name}.mp4")), ffmpeg=ffmpeg)
                times[name] = round(time.monotonic() - t0, 2)
            emit(step="scaling", segments=int(n), output_s=case["output_s"], wall_s=times,
                 ratio_to_floor={k: round(v / times["floor"], 3) for k, v in times.items()})  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["prepare"]:
        prepare()
    else:
        run(sys.argv[2] if len(sys.argv) > 2 else "/tmp/ffmpeg")
