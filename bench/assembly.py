"""Benchmark: the assembly step of a chunked render (issue 11) for a one-hour output.

Run by hand, never as a timed test::

    .venv/bin/python bench/assembly.py [--minutes 60] [--resolution 1080p] [--repeats 3]
                                       [--work bench/results/assembly-cache] [--check-stand-in] [--rerender]

The goal measured: "Assembly of a one-hour output takes seconds, not minutes: it is a stream copy".

The source (cached in ``--work``): one 60 s unit of ``testsrc2`` with temporal grain
(``noise=alls=8:allf=t``, so the encoder works as on a camera's picture) at 30 fps, exactly 1800 frames,
libx264 ``veryfast`` CRF 22 (about 23 Mb/s at 1080p, above the 10 Mb/s the 1080p output gets; CRF 18 on this
grain gave about 100 Mb/s, a 44 GB hour), a keyframe every 2 s (``-g 60``, no scene-cut keyframes), concatenated
``--minutes`` times by stream copy (concat demuxer, each unit's duration stated, so the timestamps run on
without a step), muxed with ``--minutes`` of pink-noise AAC (stereo, 48 kHz, 192 kb/s). The audio is one
continuous encode, not 60 concatenated ones: 60 s of 48 kHz is not a whole number of AAC frames, so joined
60 s AAC files would carry a gap or an overlap at every join, which the audio render would then decode.

The render: ``plan_render(src, [Segment(0, minutes * 60)], OutputSpec("mp4", resolution=...))`` and
``chunk_plan_for(plan, Settings(chunk_s=60, chunk_min_s=60))``: ``--minutes`` chunks of exactly 1800 frames,
each starting on a unit boundary.

**Stand-in pieces.** Only two chunks are encoded for real (``render_chunk``, the CPU preset):

* chunk 0 (no pre-roll);
* chunk 1, whose encoder first sees the last 2 s of unit 0 (its pre-roll) and then all of unit 1.

Every later chunk k sees the last 2 s of unit k-1 and then unit k: the same source packets as chunk 1 (the
units are stream copies of one file, every seek lands on a keyframe), so the same pictures. The other pieces
(2.., or 3.. with ``--check-stand-in``) are therefore byte copies of piece 1 (real copies, not links: the join
reads ``--minutes`` distinct files, as after downloading them). They are not what a real render would hold
byte for byte: with ``--check-stand-in``, chunk 2's piece has the same number of packets as chunk 1's, each
with the same pts, dts and keyframe flag, and shows the same pictures, but x264 coded them differently (1080p:
total size 0.001 % apart; 720p, 3 minutes: 0.09 %, the first frames 42.8 dB apart; the cause was not looked
into). That does not change the assembly's work: ``assemble`` never decodes; it copies each piece's packets,
whose timestamps start at 0 in every piece (``_drop_preroll`` moves them there), and places piece k on the
output clock only from the concat list's stated durations (``piece_durations_us``). So the cost is set by the
number of pieces, packets and bytes, which a copy reproduces. ``--check-stand-in`` renders chunk 2 too and
compares with piece 1 what the join reads: frame count, each packet's pts, dts and keyframe flag, and the
total bytes. The joined file is verified as any other (every frame counted, durations, one audio track, a
keyframe first).

Measured, ``--repeats`` times, medians reported:

* ``assemble`` (concat-demuxer stream copy of the pieces, mux of the audio, ``+faststart``, then
  ``verify_assembled``), in a child process whose only child is ffmpeg, so its CPU time
  (``getrusage(RUSAGE_CHILDREN)``) and peak RSS (``VmHWM``, see :class:`ChildPeak`) are ffmpeg's own. Three
  ways per repetition, in rotating order: *warm* (the pieces in the page cache, as right after the queue's
  assembly downloaded them), *cold* (pieces and audio fsynced and dropped from the page cache with
  ``posix_fadvise(DONTNEED)`` first, so they are read from disk) and *bare* (warm, and only the same ffmpeg
  stream copy, ``assembly_args`` on the same list, without ``+faststart`` and without the verification).
  The child also times ``verify_assembled`` once more on its own, to show its share.
* ``render_audio`` of the whole output (in the queue path the assembly message does this too, but it is an
  encode, not a stream copy), timed apart.
* For scale, the wall time of encoding one chunk (chunk 1, with its pre-roll) and of chunk 0. The pieces
  are kept in ``--work`` with these times, and a rerun reuses them (it says so) unless ``--rerender``.

Not measured: the downloads of the pieces and the upload of the output in the queue path.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker import ffmpeg  # noqa: E402
from worker.chunks import ChunkPlan, assembly_args, concat_list, piece_durations_us, piece_name  # noqa: E402
from worker.output import OutputSpec  # noqa: E402
from worker.plan import Segment  # noqa: E402
from worker.planner import Plan, chunk_plan_for, plan_render  # noqa: E402
from worker.presets import load_preset  # noqa: E402
from worker.render.parts import assemble, render_audio, render_chunk, verify_assembled  # noqa: E402
from worker.settings import Settings  # noqa: E402

UNIT_S = 60  # one unit of the source, and one chunk: 1800 frames at 30 fps
RATE = 30
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
# The chunk length the project ships (RENDER_CHUNK_S); stated here so a changed default cannot shift the
# chunk boundaries off the unit boundaries the stand-in pieces rely on.
SETTINGS = Settings(chunk_s=float(UNIT_S), chunk_min_s=float(UNIT_S))


def _ff(*args: str) -> None:
    subprocess.run([ffmpeg.resolve_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def make_unit(path: Path, resolution: str) -> None:
    if path.exists():
        return
    w, h = SIZES[resolution]
    tmp = path.with_name(path.name + ".partial.mp4")
    # -sc_threshold 0: keyframes exactly every 60 frames, so every chunk's pre-roll starts on one.
    _ff("-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={RATE}:duration={UNIT_S},noise=alls=8:allf=t",
        "-frames:v", str(UNIT_S * RATE), "-an",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "22", "-g", "60", "-keyint_min", "60",
        "-sc_threshold", "0", "-pix_fmt", "yuv420p", str(tmp))  # fmt: skip
    tmp.rename(path)


def make_source(work: Path, resolution: str, minutes: int) -> Path:
    unit = work / f"unit-{resolution}-{UNIT_S}s.mp4"
    make_unit(unit, resolution)
    src = work / f"source-{resolution}-{minutes}min.mp4"
    if src.exists():
        return src
    seconds = minutes * UNIT_S
    audio = work / f"audio-{minutes}min.m4a"
    if not audio.exists():
        tmp_a = audio.with_name(audio.name + ".partial.m4a")
        _ff("-f", "lavfi", "-i", f"anoisesrc=r=48000:d={seconds}:c=pink:seed=7:a=0.2",
            "-ac", "2", "-c:a", "aac", "-b:a", "192k", str(tmp_a))  # fmt: skip
        tmp_a.rename(audio)
    units = work / f"units-{minutes}.ffconcat"
    # The stated duration places unit k at exactly k * 60 s (the mp4's own duration could be a tick off).
    units.write_text("ffconcat version 1.0\n" + f"file '{unit.name}'\nduration {UNIT_S}\n" * minutes, encoding="utf-8")
    tmp = src.with_name(src.name + ".partial.mp4")
    _ff("-f", "concat", "-safe", "1", "-i", str(units), "-i", str(audio),
        "-map", "0:v:0", "-map", "1:a:0", "-c", "copy", str(tmp))  # fmt: skip
    units.unlink()
    tmp.rename(src)
    return src


def plan_for(src: Path, minutes: int, resolution: str) -> Plan:
    return plan_render(src, [Segment(0, minutes * UNIT_S)], OutputSpec("mp4", resolution=resolution))


def _children() -> resource.struct_rusage:
    return resource.getrusage(resource.RUSAGE_CHILDREN)


def _layout(path: Path) -> tuple[list[tuple[int | None, int | None, bool]], int]:
    """What the join reads of a piece: each video packet's (pts, dts, keyframe), and the bytes of them all."""
    import av

    packets, size = [], 0
    with av.open(str(path)) as c:
        for p in c.demux(c.streams.video[0]):
            if p.size:  # not the demuxer's flush packet
                packets.append((p.pts, p.dts, bool(p.is_keyframe)))
                size += p.size
    return packets, size


def compare_stand_in(one: Path, two: Path) -> dict[str, Any]:
    """Piece 2 (real) against piece 1 (the stand-in for every later piece), as the assembly sees them."""
    (a, size_a), (b, size_b) = _layout(one), _layout(two)
    with one.open("rb") as f1, two.open("rb") as f2:
        same_bytes = f1.read() == f2.read()
    return {
        "frames": [len(a), len(b)],
        "same_timestamps": [(x[0], x[1]) for x in a] == [(y[0], y[1]) for y in b],
        "same_keyframes": [x[2] for x in a] == [y[2] for y in b],
        "starts_at_0_on_a_keyframe": a[0][0] == 0 == b[0][0] and a[0][2] and b[0][2],
        "bytes": [size_a, size_b],
        "bytes_ratio": round(size_b / size_a, 5),
        "byte_identical": same_bytes,
    }


def drop_from_cache(paths: list[Path]) -> None:
    """Write back and evict ``paths`` from the page cache (no root needed), so the next read hits the disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)  # DONTNEED skips dirty pages: the fresh copies must reach the disk first
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class ChildPeak:
    """ffmpeg's own peak RSS: its ``VmHWM``, sampled every 20 ms while it runs.

    Not ``getrusage(RUSAGE_CHILDREN).ru_maxrss``: ffmpeg is started by fork then exec, and the kernel keeps
    the forked copy's high-water mark (this Python process's RSS) across the exec, so that figure is
    max(Python's RSS, ffmpeg's). ``VmHWM`` belongs to the process's new memory map after exec: ffmpeg's own.
    The last sample before ffmpeg exits can miss a peak in its final 20 ms, so this is a lower bound.
    """

    def __init__(self) -> None:
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            for children in Path("/proc/self/task").glob("*/children"):
                for pid in children.read_text().split():
                    try:
                        status = Path(f"/proc/{pid}/status").read_text()
                    except OSError:
                        continue  # it has just exited
                    for line in status.splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def __enter__(self) -> ChildPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def assemble_child(src: Path, minutes: int, resolution: str, pieces_dir: Path, out: Path, bare: bool) -> dict[str, Any]:
    """In the child process: one ``assemble`` timed, then ``verify_assembled`` alone; ffmpeg's peak RSS.

    ``bare``: only the ffmpeg stream copy ``assemble`` runs, on the same list and inputs, but without
    ``+faststart`` (the second pass that moves the index to the front) and without the verification: what
    is left of the assembly's time once those two are taken out.
    """
    plan = plan_for(src, minutes, resolution)
    cplan = chunk_plan_for(plan, SETTINGS)
    pieces = [pieces_dir / piece_name(c.index, "mp4") for c in cplan.chunks]
    before = _children()
    t0 = time.monotonic()
    with ChildPeak() as peak:
        _join(plan, cplan, pieces, pieces_dir, out, bare)
    wall = time.monotonic() - t0
    after = _children()
    t1 = time.monotonic()
    if not bare:
        verify_assembled(out, plan)
    verify = time.monotonic() - t1
    return {
        "wall_s": wall,
        "verify_s": verify,
        "ffmpeg_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "ffmpeg_peak_rss_mib": peak.peak_kib / 1024,
        # For reference (see ChildPeak): max of this process's RSS at the fork and ffmpeg's peak.
        "children_ru_maxrss_mib": after.ru_maxrss / 1024,
        "python_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _join(plan: Plan, cplan: ChunkPlan, pieces: list[Path], pieces_dir: Path, out: Path, bare: bool) -> None:
    if bare:
        listed = pieces_dir / ".pieces.ffconcat"
        listed.write_text(concat_list([p.name for p in pieces], piece_durations_us(cplan)), encoding="utf-8")
        muxer = load_preset("mp4", "cpu").muxer
        ffmpeg.run(assembly_args(str(listed), str(pieces_dir / "audio.m4a"), str(out), muxer=muxer))
        listed.unlink()
    else:
        assemble(plan, cplan, pieces, pieces_dir / "audio.m4a", out)


def run_assembly(src: Path, args: argparse.Namespace, pieces_dir: Path, out: Path, mode: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "_assemble", str(src), str(args.minutes), args.resolution, str(pieces_dir)]
    got = subprocess.run([*cmd, str(out), mode], check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(got.stdout.strip().splitlines()[-1])
    return result


def render_pieces(
    src: Path, args: argparse.Namespace, pieces_dir: Path
) -> tuple[Plan, dict[str, float], dict[str, Any], dict[str, str]]:
    plan = plan_for(src, args.minutes, args.resolution)
    cplan = chunk_plan_for(plan, SETTINGS)
    frames = UNIT_S * RATE
    if len(cplan.chunks) != args.minutes or any(
        c.start != c.index * frames or c.frames != frames for c in cplan.chunks
    ):
        raise SystemExit("the chunks are not the 60 s units of the source: the stand-in pieces would be wrong")
    real = [0, 1, 2] if args.check_stand_in else [0, 1]
    real = [k for k in real if k < len(cplan.chunks)]
    record = pieces_dir / "rendered.json"
    times: dict[str, float] = {}
    at: dict[str, str] = {}  # chunk index -> when its piece was encoded
    if not args.rerender and record.exists():
        # The encodes are the slow part: a rerun (after a crash in the assembly, or with --check-stand-in)
        # reuses the pieces already encoded for real, and says when they were.
        kept: dict[str, Any] = json.loads(record.read_text())
        for k in kept["real"]:
            if k in real and (pieces_dir / piece_name(k, "mp4")).exists():
                at[str(k)] = kept["at"] if isinstance(kept["at"], str) else kept["at"][str(k)]
                for key in (f"chunk{k}_wall_s", f"chunk{k}_cpu_s"):
                    times[key] = kept["times"][key]
        if at:
            print(json.dumps({"pieces_reused": at}), flush=True)
    else:
        shutil.rmtree(pieces_dir, ignore_errors=True)
    pieces_dir.mkdir(parents=True, exist_ok=True)
    for k in real:
        if str(k) in at:
            continue
        cpu0, t0 = _children(), time.monotonic()
        render_chunk(plan, cplan, k, pieces_dir / piece_name(k, "mp4"))  # replaces a copy left there by an earlier run
        cpu1 = _children()
        times[f"chunk{k}_wall_s"] = time.monotonic() - t0
        times[f"chunk{k}_cpu_s"] = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
        at[str(k)] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(json.dumps({"rendered": piece_name(k, "mp4"), "wall_s": round(times[f"chunk{k}_wall_s"], 2)}), flush=True)
        record.write_text(json.dumps({"real": [int(x) for x in at], "times": times, "at": at}), encoding="utf-8")
    check = _check(pieces_dir, real)
    stand_in = pieces_dir / piece_name(1, "mp4")
    for c in cplan.chunks[len(real) :]:
        copy = pieces_dir / piece_name(c.index, "mp4")
        if not copy.exists() or copy.stat().st_size != stand_in.stat().st_size:
            shutil.copyfile(stand_in, copy)
    # Only the pieces encoded for real in this layout: a real piece 2 of an earlier run is a copy now.
    record.write_text(json.dumps({"real": [int(x) for x in at], "times": times, "at": at}), encoding="utf-8")
    return plan, times, check, at


def _check(pieces_dir: Path, real: list[int]) -> dict[str, Any]:
    if 2 not in real:
        return {}
    check = compare_stand_in(pieces_dir / piece_name(1, "mp4"), pieces_dir / piece_name(2, "mp4"))
    print(json.dumps({"stand_in_check": check}), flush=True)
    if check["frames"][0] != check["frames"][1] or not check["starts_at_0_on_a_keyframe"]:
        raise SystemExit("chunk 2's piece is not laid out as chunk 1's: copies of piece 1 are no stand-in")
    return check


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_assemble":
        a = sys.argv[2:]
        print(json.dumps(assemble_child(Path(a[0]), int(a[1]), a[2], Path(a[3]), Path(a[4]), a[5:] == ["bare"])))
        return 0
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--minutes", type=int, default=60, help="output length, in 60 s chunks")
    ap.add_argument("--resolution", default="1080p", choices=sorted(SIZES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "assembly-cache")
    ap.add_argument("--rerender", action="store_true", help="encode the pieces again even if --work has them")
    ap.add_argument("--check-stand-in", action="store_true", help="render chunk 2 too and compare it with piece 1")
    args = ap.parse_args()
    if args.minutes < 2:
        raise SystemExit("--minutes must be at least 2 (chunk 1 is the stand-in for the later chunks)")
    command = " ".join(["bench/assembly.py", *sys.argv[1:]])
    load_before = os.getloadavg()
    print(json.dumps({"load_before": load_before, "cores": os.cpu_count()}), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    src = make_source(args.work, args.resolution, args.minutes)
    print(json.dumps({"source": src.name, "bytes": src.stat().st_size, "prep_s": round(time.monotonic() - t0, 1)}))
    run_dir = args.work / f"run-{args.resolution}-{args.minutes}min"
    pieces_dir = run_dir / "pieces"
    plan, chunk_times, check, encoded_at = render_pieces(src, args, pieces_dir)
    print(json.dumps({"output_s": plan.timeline.duration, "frames": plan.timeline.total_units}), flush=True)

    cplan = chunk_plan_for(plan, SETTINGS)
    pieces = [pieces_dir / piece_name(c.index, "mp4") for c in cplan.chunks]
    audio = pieces_dir / "audio.m4a"
    out = run_dir / "out.mp4"
    audio_walls = []
    runs: dict[str, list[dict[str, Any]]] = {"warm": [], "cold": [], "bare": []}
    modes = list(runs)
    for r in range(args.repeats):
        audio.unlink(missing_ok=True)
        t = time.monotonic()
        render_audio(plan, audio)
        audio_walls.append(time.monotonic() - t)
        print(json.dumps({"run": r, "step": "render_audio", "wall_s": round(audio_walls[-1], 2)}), flush=True)
        # The order rotates every repetition, so a drift in the machine's load falls on each alike.
        for mode in modes[r % 3 :] + modes[: r % 3]:
            out.unlink(missing_ok=True)
            if mode == "cold":
                drop_from_cache([*pieces, audio])
            else:
                for p in [*pieces, audio]:  # read once, so they are in the page cache as after a download
                    with p.open("rb") as f:
                        while f.read(1 << 24):
                            pass
            res = run_assembly(src, args, pieces_dir, out, mode)
            runs[mode].append(res)
            print(json.dumps({"run": r, "step": f"assemble ({mode})", **{k: round(v, 2) for k, v in res.items()}}))

    out_bytes = out.stat().st_size
    out.unlink()  # an hour of output is GBs; its size is all the report needs
    pieces_bytes = sum(p.stat().st_size for p in pieces)
    load_after = os.getloadavg()
    hour_s = plan.timeline.duration
    chunk_wall = chunk_times["chunk1_wall_s"]

    def med(mode: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[mode])

    summary: dict[str, Any] = {
        "command": ".venv/bin/python " + command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "load_before": load_before,
        "load_after": load_after,
        "minutes": args.minutes,
        "resolution": args.resolution,
        "repeats": args.repeats,
        "output_s": hour_s,
        "output_frames": plan.timeline.total_units,
        "chunks": len(cplan.chunks),
        "video_bps": plan.encode.video_bps,
        "output_bytes": out_bytes,
        "pieces_bytes": pieces_bytes,
        "pieces_rendered": sorted(int(k[5:].split("_")[0]) for k in chunk_times if k.endswith("_wall_s")),
        "identity_check": check,
        "chunk_encode": chunk_times,
        "chunk_encoded_at": encoded_at,
        "render_audio_wall_s": audio_walls,
        "assemble": runs,
    }
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "assembly.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    gib = 1024**3
    print()
    print(f"Command: `.venv/bin/python {command}`, {summary['date']}, {os.cpu_count()} cores.")
    print(f"Load average (1, 5, 15 min) before: {load_before}, after: {tuple(round(x, 2) for x in load_after)}.")
    print(
        f"Output: {hour_s:.0f} s, {plan.timeline.total_units} frames, {len(cplan.chunks)} chunks, "
        f"{out_bytes / gib:.2f} GiB ({out_bytes * 8 / hour_s / 1e6:.1f} Mb/s); pieces {pieces_bytes / gib:.2f} GiB."
    )
    print(f"Pieces encoded for real at: {encoded_at}.")
    print()
    print("| step | wall (median) | ÷ one chunk's encode | ÷ output duration | ffmpeg CPU | ffmpeg peak RSS |")
    print("|---|---|---|---|---|---|")
    for mode in ("warm", "cold"):
        w = med(mode, "wall_s")
        print(
            f"| assemble, pieces {'in page cache' if mode == 'warm' else 'read from disk'} | {w:.1f} s | "
            f"{w / chunk_wall:.3f} | {w / hour_s:.5f} | {med(mode, 'ffmpeg_cpu_s'):.1f} s | "
            f"{med(mode, 'ffmpeg_peak_rss_mib'):.0f} MiB |"
        )
    print(f"| of which verify_assembled (alone, warm) | {med('warm', 'verify_s'):.1f} s | | | | |")
    b = med("bare", "wall_s")
    print(
        f"| ffmpeg stream copy alone (no +faststart, no verify; warm) | {b:.1f} s | {b / chunk_wall:.3f} | "
        f"{b / hour_s:.5f} | {med('bare', 'ffmpeg_cpu_s'):.1f} s | {med('bare', 'ffmpeg_peak_rss_mib'):.0f} MiB |"
    )
    aw = statistics.median(audio_walls)
    print(f"| render_audio (whole output; an encode) | {aw:.1f} s | {aw / chunk_wall:.3f} | {aw / hour_s:.5f} | | |")
    print(f"| render_chunk, chunk 1 (60 s + 2 s pre-roll) | {chunk_wall:.1f} s | 1.000 | | "
          f"{chunk_times['chunk1_cpu_s']:.1f} s | |")  # fmt: skip
    print(f"| render_chunk, chunk 0 (60 s, no pre-roll) | {chunk_times['chunk0_wall_s']:.1f} s | "
          f"{chunk_times['chunk0_wall_s'] / chunk_wall:.3f} | | {chunk_times['chunk0_cpu_s']:.1f} s | |")  # fmt: skip
    print()
    print(
        f"Stand-in: pieces {', '.join(map(str, summary['pieces_rendered']))} encoded for real"
        + (
            f"; pieces {len(summary['pieces_rendered'])}..{len(cplan.chunks) - 1} are byte copies of piece 1"
            if len(cplan.chunks) > len(summary["pieces_rendered"])
            else ""
        )
        + (f"; piece 2 against piece 1: {json.dumps(check)}." if check else ".")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
