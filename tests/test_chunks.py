"""Chunked renders (issue 11, local half): the chunk plan, exactness of joined chunks, assembly, --chunks.

The plan is pure and checked property-style against timelines the planner builds from random cuts. The
renders are checked against the oracle (tests/oracle.py), never against worker/plan.py: every output
frame's barcode, A/V sync in every piece, the timeline, one audio track without a gap, and a keyframe at
every join.
"""

from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

import av
import mediacheck as mc
import oracle
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures import generate as gen
from worker import chunks as ch
from worker.allowlists import FORMAT_WHITELIST
from worker.cli import main
from worker.errors import Cancelled, EncodeError
from worker.graph import build_chunk_graph, chunk_ffmpeg_args
from worker.output import OutputSpec
from worker.plan import Segment, Timeline, build_timeline
from worker.planner import chunk_plan_for, plan_render
from worker.presets import load_preset
from worker.render import parts, render

# --- the plan (pure) ------------------------------------------------------------------------------------------


def _timeline(seed: int, n: int, rate: Fraction = Fraction(30)) -> Timeline:
    """A timeline the planner builds from ``n`` random cuts of a 600 s source (irregular, some tiny)."""
    rng = random.Random(seed)
    segs, t = [], rng.uniform(0, 2)
    for _ in range(n):
        start = t
        t += rng.choice([rng.uniform(0.05, 0.2), rng.uniform(0.5, 20)])
        segs.append(Segment(start, t))
        t += rng.choice([0.0, rng.uniform(0.01, 0.5), rng.uniform(1, 30)])
    end = round(t * rate) + 10
    return build_timeline(segs, rate=rate, first_unit=0, end_unit=end, sample_rate=48000)


def _shown(timeline: Timeline) -> list[int]:
    """The source unit every output frame shows, from the timeline itself."""
    return [p.src + i for p in timeline.pieces for i in range(p.length)]


def _check_plan(timeline: Timeline, plan: ch.ChunkPlan, seek_gap: int, max_runs: int, preroll: int = 0) -> None:
    assert plan.total == timeline.total_units
    # contiguous, in order, covering every output frame exactly once, sizes within one frame of each other
    assert plan.chunks[0].start == 0 and plan.chunks[-1].end == plan.total
    for a, b in zip(plan.chunks, plan.chunks[1:], strict=False):
        assert a.end == b.start
    sizes = [c.frames for c in plan.chunks]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert [c.index for c in plan.chunks] == list(range(len(plan.chunks)))
    # the spans of each chunk show exactly the frames the timeline puts in its range, in order
    shown = _shown(timeline)
    for c in plan.chunks:
        # (after the pre-roll: the frames before the chunk's start, encoded first and dropped)
        assert c.preroll == min(preroll, c.start) and c.encoded == c.preroll + c.frames
        got = [s.src + i for s in c.spans for i in range(s.length)]
        assert got == shown[c.start - c.preroll : c.end]
        assert [s.out for s in c.spans] == sorted(s.out for s in c.spans)
        assert c.spans[0].out == c.start - c.preroll
        assert 1 <= len(c.runs) <= max_runs
        for r in c.runs:
            assert r.seek <= r.spans[0].src
            if len(c.runs) < max_runs:
                # a run decodes through no dropped stretch of seek_gap or more: those get their own seek
                for a, b in zip(r.spans, r.spans[1:], strict=False):
                    assert b.src - (a.src + a.length) < seek_gap
        # runs start where the source skips: a gap between runs is one the cut drops
        for a, b in zip(c.runs, c.runs[1:], strict=False):
            assert b.spans[0].src >= a.end


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    n=st.integers(1, 80),
    count=st.integers(1, 40),
    max_runs=st.integers(1, 6),
    preroll=st.sampled_from([0, 1, 60]),
)
def test_plan_by_count_covers_the_timeline_once(seed: int, n: int, count: int, max_runs: int, preroll: int) -> None:
    tl = _timeline(seed, n)
    plan = ch.plan_chunks(tl, count=count, seek_gap=60, max_runs=max_runs, preroll=preroll)
    assert len(plan.chunks) == min(count, tl.total_units)
    _check_plan(tl, plan, 60, max_runs, preroll)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    n=st.integers(1, 80),
    chunk_s=st.floats(5, 120),
    rate=st.sampled_from([Fraction(24), Fraction(30000, 1001), Fraction(60)]),
)
def test_plan_by_duration_sizes_near_chunk_s(seed: int, n: int, chunk_s: float, rate: Fraction) -> None:
    tl = _timeline(seed, n, rate)
    min_s = 2 * chunk_s
    plan = ch.plan_chunks(tl, chunk_s=chunk_s, min_s=min_s, seek_gap=round(2 * rate))
    _check_plan(tl, plan, round(2 * rate), ch.MAX_RUNS)
    duration = tl.total_units / rate
    if duration <= min_s:
        assert len(plan.chunks) == 1  # short outputs render whole
    else:
        k = len(plan.chunks)
        assert k >= 2
        for c in plan.chunks:
            # round(T / C) chunks: each within C / (2K) of C, give or take the frame rounding
            assert abs(Fraction(c.frames) / rate - Fraction(chunk_s)) <= Fraction(chunk_s) / (2 * k) + 1 / rate


def test_runs_seek_over_dropped_stretches_and_are_bounded() -> None:
    """A chunk never decodes a long dropped stretch; past MAX_RUNS only the smallest gaps are decoded through."""
    rate = Fraction(30)
    segs = [Segment(10.0 * i, 10.0 * i + 1) for i in range(10)]  # 1 s kept every 10 s: 9 s dropped each time
    tl = build_timeline(segs, rate=rate, first_unit=0, end_unit=3000, sample_rate=48000)
    plan = ch.plan_chunks(tl, count=1, seek_gap=60)
    assert [r.seek for r in plan.chunks[0].runs] == [300 * i for i in range(10)]
    assert all(len(r.spans) == 1 for r in plan.chunks[0].runs)
    capped = ch.plan_chunks(tl, count=1, seek_gap=60, max_runs=3)
    assert len(capped.chunks[0].runs) == 3
    with_margin = ch.plan_chunks(tl, count=1, seek_gap=60, margin=30)
    assert [r.seek for r in with_margin.chunks[0].runs][1:] == [300 * i - 30 for i in range(1, 10)]


def test_chunk_count_from_settings() -> None:
    assert ch.chunk_count(59 * 30, Fraction(30), chunk_s=30, min_s=60) == 1
    assert ch.chunk_count(61 * 30, Fraction(30), chunk_s=30, min_s=60) == 2
    assert ch.chunk_count(3600 * 30, Fraction(30), chunk_s=30, min_s=60) == 120
    assert ch.chunk_count(100 * 30, Fraction(30), chunk_s=30, min_s=60) == 3


def test_concat_list_names_only_pieces() -> None:
    text = ch.concat_list([ch.piece_name(0, "mp4"), ch.piece_name(1, "mp4")])
    assert text.splitlines() == ["ffconcat version 1.0", "file 'chunk-00000.mp4'", "file 'chunk-00001.mp4'"]
    plan = ch.ChunkPlan(
        rate=Fraction(30),
        total=2000,
        chunks=tuple(ch.Chunk(k, a, b, ()) for k, (a, b) in enumerate([(0, 997), (997, 1994), (1994, 2000)])),
    )
    durations = ch.piece_durations_us(plan)
    # each start is the exact time of its first frame, to the microsecond, however the durations round
    assert durations == [33233333, 33233334, 200000]
    assert ch.concat_list(["a.mp4"], [33233333]).splitlines()[1:] == ["file 'a.mp4'", "duration 33.233333"]
    for bad in ["/etc/passwd", "../x.mp4", "a'b.mp4", ".hidden", "", "sub/x.mp4"]:
        with pytest.raises(ValueError):
            ch.concat_list([bad])


def test_concat_is_allowed_only_for_the_workers_own_pieces() -> None:
    """The tenant-input allowlist never gains concat; only the assembly command opens it, on its own list."""
    assert "concat" not in FORMAT_WHITELIST.split(",")
    args = ch.assembly_args("/w/.pieces.ffconcat", "/w/audio.m4a", "/w/out.mp4", muxer="mp4")
    first = args.index("-i")
    assert args[first - 6 : first] == ["-format_whitelist", "concat,mov", "-f", "concat", "-safe", "1"]
    assert args[args.index("-protocol_whitelist") + 1] == "file"
    assert args.count("-protocol_whitelist") == 2 and "copy" in args


# --- the chunk command ----------------------------------------------------------------------------------------


def test_chunk_command_seeks_each_run_and_keeps_the_input_hardening(media) -> None:
    segs = [Segment(1.0, 5.0), Segment(40.0, 44.0), Segment(100.0, 130.0)]
    plan = plan_render(media["cfr30"], segs, OutputSpec("mp4", smart=False))
    cplan = chunk_plan_for(plan, count=2)
    preset = load_preset("mp4", "cpu")
    chunk = cplan.chunks[0]  # 0..19 s of output: 1-5, 40-44 and the start of 100-130
    assert [r.seek for r in chunk.runs] == [30, 1200, 3000]
    args = chunk_ffmpeg_args(
        plan.info,
        plan.timeline,
        chunk,
        preset,
        plan.encode,
        "g.txt",
        "o.mp4",
        max_pixels=plan.limits.max_source_pixels,
        muxer="mp4",
    )
    inputs = [i for i, a in enumerate(args) if a == "-i"]
    assert len(inputs) == 3
    prev = 0
    for i in inputs:
        opts = args[prev:i]
        # every open of the tenant's source keeps the allowlists, the pixel limit and the forced demuxer
        for name in ("-protocol_whitelist", "-format_whitelist", "-codec_whitelist", "-max_pixels", "-f", "-an"):
            assert name in opts, (name, opts)
        assert "concat" not in opts[opts.index("-format_whitelist") + 1]
        assert "-ss" in opts and "-t" in opts  # seeked before -i, bounded
        prev = i + 1
    ss = [float(args[i - 3]) for i in inputs]
    assert ss == pytest.approx([29.5 / 30, 1199.5 / 30, 2999.5 / 30], abs=1e-6)  # half a frame before each run
    assert "+cgop" in args and args[args.index("-force_key_frames") + 1] == "expr:eq(n,0)"
    later = cplan.chunks[1]  # encodes 2 s of chunk 0's frames first, and forces its IDR frame after them
    assert later.preroll == 60 and later.spans[0].out == later.start - 60
    args1 = chunk_ffmpeg_args(
        plan.info,
        plan.timeline,
        later,
        preset,
        plan.encode,
        "g.txt",
        "o.mp4",
        max_pixels=plan.limits.max_source_pixels,
        muxer="mp4",
    )
    assert args1[args1.index("-force_key_frames") + 1] == "expr:eq(n,60)"
    graph = build_chunk_graph(plan.info, plan.timeline, chunk, preset, plan.encode)
    assert "[0:a]" not in graph and "[1:0]" in graph and "[2:0]" in graph  # no audio; one head per run


# --- exactness of chunked renders -----------------------------------------------------------------------------


def _spread(n: int, duration: float, seed: int) -> list[Segment]:
    """``n`` segments spread over the source, about 60 % kept (irregular, not frame multiples)."""
    rng = random.Random(seed)
    cuts = sorted(rng.uniform(0.1, duration - 0.1) for _ in range(2 * n))
    return [Segment(round(cuts[2 * i], 4), round(cuts[2 * i + 1], 4)) for i in range(n)]


def _video_packets(path: Path) -> list[tuple[int, bool]]:
    """(pts in frames, keyframe flag) of every video packet, in decode order."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        rate = Fraction(s.average_rate)
        assert s.time_base is not None
        return [
            (round(p.pts * s.time_base * rate), bool(p.is_keyframe)) for p in c.demux(s) if p.size and p.pts is not None
        ]


def _audio_packets(path: Path) -> list[tuple[int, int, bytes]]:
    with av.open(str(path)) as c:
        return [(p.pts, p.duration, bytes(p)) for p in c.demux(c.streams.audio[0]) if p.size]


@pytest.mark.parametrize("n_chunks", [3, 7])
def test_chunked_render_is_exact(media, tmp_path, n_chunks: int) -> None:
    segs = _spread(20, 200.0, seed=11 * n_chunks)
    out = tmp_path / "out.mp4"
    result = render(media["cfr30"], segs, OutputSpec("mp4", smart=False), out, chunks=n_chunks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no pieces, lists or partials left
    exp = oracle.expected([(s.start, s.end) for s in segs], rate=Fraction(30), origin=Fraction(0), first=0, end=6000)
    assert abs(result.duration_s - exp.total / 30) < 1e-9

    # every output frame is the source frame the oracle puts in its slot, once, at a constant frame rate
    frames = mc.frame_indices(out)
    idx = [i for _, i in frames]
    assert len(idx) == exp.total
    bad = [(k, got, want) for k, (got, want) in enumerate(zip(idx, exp.slots(), strict=True)) if got != want]
    assert not bad, f"{len(bad)} frames off the plan, first {bad[:5]}"
    steps = {round((b - a) * 30, 3) for (a, _), (b, _) in zip(frames, frames[1:], strict=False)}
    assert steps == {1.0}, steps  # no gap or overlap at a join
    for span in exp.spans:  # the timeline: output boundaries within half a frame of the plan
        assert abs(span.out - span.planned_out) <= Fraction(1, 2)

    # A/V sync in every piece, measured against the source's own noise
    rep = oracle.measure_sync(out, exp, gen.source_audio("cfr30").mean(axis=0), 48000)
    assert rep.measured + rep.too_short == len(exp.spans) and rep.measured >= len(exp.spans) - 2
    assert rep.worst_s <= 0.001, f"A/V offset {rep.worst_s * 1000:.3f} ms"

    # one audio track, its packets back to back (no gap), lasting the planned time to a sample per piece
    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 1 and len(c.streams.video) == 1
        a = c.streams.audio[0]
        declared = round(a.duration * a.time_base * 48000)
    assert abs(declared - round(Fraction(exp.total, 30) * 48000)) <= len(exp.spans)
    packets = _audio_packets(out)
    for (pts, dur, _), (nxt, _, _) in zip(packets, packets[1:], strict=False):
        assert nxt == pts + dur

    # every join starts with a keyframe (the piece's IDR frame): the first packet of each chunk's range
    plan = plan_render(media["cfr30"], segs, OutputSpec("mp4", smart=False))
    joins = [c.start for c in chunk_plan_for(plan, count=n_chunks).chunks]
    keys = {pts for pts, key in _video_packets(out) if key}
    assert set(joins) <= keys, f"joins without a keyframe: {sorted(set(joins) - keys)}"
    # and keyframes are the exception (GOPs of up to 250 frames), so the check above could fail
    assert len(keys) <= exp.total // 100 + n_chunks


def test_chunked_audio_is_the_whole_renders_audio(media, tmp_path) -> None:
    """Audio is rendered once, whole: the chunked file's AAC is the unchunked render's, packet for packet."""
    segs = _spread(12, 20.0, seed=5)
    whole, chunked = tmp_path / "whole.mp4", tmp_path / "chunked.mp4"
    render(media["cfr2997"], segs, OutputSpec("mp4", smart=False), whole)
    render(media["cfr2997"], segs, OutputSpec("mov", smart=False), chunked.with_suffix(".mov"), chunks=3)
    assert _audio_packets(whole) == _audio_packets(chunked.with_suffix(".mov"))
    assert [i for _, i in mc.frame_indices(whole)] == [i for _, i in mc.frame_indices(chunked.with_suffix(".mov"))]


@pytest.mark.parametrize(
    ("name", "segs"),
    [
        # VFR with drops: a run's first slot repeats the frame before a drop, as the whole render does
        ("vfr", [Segment(0.3, 7.1), Segment(9.0, 19.5)]),
        # audio past the end of the video: the last chunks hold the last frame
        ("audio_tail", None),
        # the video starts 21 ms after the audio: frames are cut on their own grid
        ("offset_mkv", [Segment(0.5, 2.5), Segment(3.0, 5.9)]),
    ],
)
def test_chunked_equals_whole_on_awkward_sources(media, tmp_path, name: str, segs) -> None:
    whole, chunked = tmp_path / "whole.mp4", tmp_path / "chunked.mp4"
    render(media[name], segs, OutputSpec("mp4", smart=False), whole)
    render(media[name], segs, OutputSpec("mp4", smart=False), chunked, chunks=3)
    want = [i for _, i in mc.frame_indices(whole)]
    assert None not in want and len(want) > 90
    assert [i for _, i in mc.frame_indices(chunked)] == want
    assert _audio_packets(whole) == _audio_packets(chunked)


def test_audio_formats_and_single_chunks_render_whole(media, tmp_path) -> None:
    segs = [Segment(1.0, 3.0)]
    r = render(media["cfr30"], segs, OutputSpec("m4a"), tmp_path / "a.m4a", chunks=4)
    assert r.video_codec is None and mc.stream_durations(tmp_path / "a.m4a").get("video") is None
    r = render(media["cfr30"], segs, OutputSpec("mp4"), tmp_path / "v.mp4")  # 2 s: under RENDER_CHUNK_MIN_S
    assert [i for _, i in mc.frame_indices(tmp_path / "v.mp4")] == list(range(30, 90))


def test_cancel_stops_every_chunk_and_leaves_nothing(media, tmp_path) -> None:
    import threading

    cancel = threading.Event()
    out = tmp_path / "out.mp4"
    work = tmp_path / "work"
    work.mkdir()
    from worker.settings import Settings

    with pytest.raises(Cancelled):
        render(
            media["cfr30"],
            None,
            OutputSpec("mp4", smart=False),
            out,
            chunks=3,
            settings=Settings(work_dir=str(work)),
            on_progress=lambda r: cancel.set(),
            cancel=cancel,
        )
    assert list(tmp_path.iterdir()) == [work] and list(work.iterdir()) == []


def test_a_failed_chunk_fails_the_render_and_stops_the_rest(media, tmp_path, monkeypatch) -> None:

    real = parts.render_chunk

    def flaky(plan, chunks, index, output, **kw):
        if index == 1:
            raise EncodeError("chunk 1 broke")
        return real(plan, chunks, index, output, **kw)

    monkeypatch.setattr(parts, "render_chunk", flaky)
    with pytest.raises(EncodeError, match="chunk 1 broke"):
        render(media["cfr30"], [Segment(0, 20)], OutputSpec("mp4", smart=False), tmp_path / "o.mp4", chunks=3)
    assert list(tmp_path.iterdir()) == []


def test_assembly_refuses_a_missing_frame(media, tmp_path) -> None:
    """The assembled file is checked against the plan: a piece short of a frame fails the render."""

    segs = [Segment(0, 10)]
    plan = plan_render(media["cfr30"], segs, OutputSpec("mp4", smart=False))
    cplan = chunk_plan_for(plan, count=2)
    pieces = [parts.render_chunk(plan, cplan, k, tmp_path / ch.piece_name(k, "mp4")) for k in range(2)]
    audio = parts.render_audio(plan, tmp_path / "audio.m4a")
    # a second plan, one frame longer than the pieces hold
    longer = plan_render(media["cfr30"], [Segment(0, 10 + 1 / 30)], OutputSpec("mp4", smart=False))
    with pytest.raises(EncodeError, match="300 of 301 frames"):
        parts.assemble(longer, cplan, pieces, audio, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()
    parts.assemble(plan, cplan, pieces, audio, tmp_path / "out.mp4")
    assert [i for _, i in mc.frame_indices(tmp_path / "out.mp4")] == list(range(300))


# --- render-cli -----------------------------------------------------------------------------------------------


def test_cli_render_chunks(media, tmp_path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"segments": [{"start": 2.0, "end": 9.0}, {"start": 20.0, "end": 31.0}]}))
    out = tmp_path / "out.mp4"
    runner = CliRunner()
    args = ["render", str(media["cfr30"]), "--cut", str(plan), "--format", "mp4", "-o", str(out), "--quiet"]
    done = runner.invoke(main, [*args, "--chunks", "4"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["path"] == str(out) and result["duration_s"] == pytest.approx(18.0)
    want = list(range(60, 270)) + list(range(600, 930))
    assert [i for _, i in mc.frame_indices(out)] == want
    bad = runner.invoke(main, [*args, "--force", "--chunks", "0"])
    assert bad.exit_code == 2 and "--chunks" in bad.output


def test_cli_sigterm_mid_chunked_render_cleans_up(media, tmp_path) -> None:
    """SIGTERM during --chunks stops every chunk's ffmpeg, removes pieces and scratch, exits 143."""
    import os
    import shutil
    import signal
    import subprocess
    import sys

    exe = shutil.which("render-cli", path=str(Path(sys.executable).parent))
    assert exe
    work, out_dir = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDER_")}
    env.update({"RENDER_WORK_DIR": str(work), "RENDER_NVENC": "off"})
    proc = subprocess.Popen(
        [
            exe,
            "render",
            str(media["cfr30"]),
            "--format",
            "mp4",
            "--no-smart",
            "--chunks",
            "3",
            "-o",
            str(out_dir / "t.mp4"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the first progress line: the chunks' ffmpeg processes are encoding
            if line.startswith("progress"):
                break
        assert list(work.iterdir()), "the chunks' scratch directory should exist mid-render"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "cancelled" in err
    assert list(work.iterdir()) == [] and list(out_dir.iterdir()) == []
