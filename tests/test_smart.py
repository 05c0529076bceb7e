"""Smart render (issue 20): whole GOPs copied, the frames around each cut encoded, one exact track.

The oracle is the test's own: which frames must be copied is worked out here from the source's IDR frames
(read from its packets) and the plan's spans (tests/oracle.py); every output frame is checked against the
plan by its barcode, copied frames against the source's own decode, bit for bit; the track's timestamps
are read back packet by packet; and real players (ffmpeg with -xerror, GStreamer, headless Chromium) play
the file to its end.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import oracle
import players
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_render_exact import check_frames, check_sync, expected_for

from fixtures import generate as gen
from worker import gops, planner, smart
from worker.output import OutputSpec
from worker.plan import Segment, build_timeline
from worker.render import render

# A filler cut of the 12 s camera fixtures: four pieces of 1.3-3.9 s, about 80 % kept, cut off the frames.
CAMERA_CUT = [Segment(0.43, 3.5), Segment(4.0, 7.9), Segment(8.27, 9.61), Segment(9.95, 11.8)]


def idr_frames(path: Path) -> list[int]:
    """Frame numbers (display order, from the first frame) of the IDR frames of ``path``'s video."""
    out = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        tb, rate = Fraction(s.time_base), Fraction(s.average_rate)
        first = None
        size = (s.codec_context.extradata[4] & 3) + 1
        packets = [p for p in c.demux(s) if p.size]
        first = min(Fraction(p.pts) * tb for p in packets)
        for p in packets:
            data, pos, idr = bytes(p), 0, False
            while pos + size < len(data):
                idr |= data[pos + size] & 0x1F == 5
                pos += size + int.from_bytes(data[pos : pos + size], "big")
            if idr:
                out.append(round((Fraction(p.pts) * tb - first) * rate))
    return sorted(out)


def must_copy(exp: oracle.Expected, idrs: list[int], frames: int) -> list[tuple[int, int]]:
    """(output frame, source frame) of every frame the promise says is copied: inside each span, from its first
    IDR frame to its last GOP boundary (an IDR frame, or the end of the stream)."""
    bounds = sorted({*idrs, frames})
    pairs = []
    for span in exp.spans:
        first = next((k for k in idrs if k >= span.src), None)
        last = max((b for b in bounds if b <= span.src + span.length), default=None)
        if first is not None and last is not None and first < last:
            pairs += [(span.out + f - span.src, f) for f in range(first, last)]
    return pairs


def decoded(path: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    """The decoded pictures (Y, U and V planes) of frames ``wanted`` of ``path``, by display position."""
    out = {}
    with av.open(str(path)) as c:
        for k, frame in enumerate(c.decode(video=0)):
            if k in wanted:
                out[k] = frame.to_ndarray(format="yuv420p")
    return out


def packet_times(path: Path) -> tuple[list[int], list[int], Fraction]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        packets = [p for p in c.demux(s) if p.size]
        return [p.pts for p in packets], [p.dts for p in packets], Fraction(s.time_base)


#: SPS fields a player's decoder is set up by: what every GOP of a smart render must share with the source's.
SPS_FIELDS = (
    "profile_idc",
    "level_idc",
    "pic_width_in_mbs_minus1",
    "pic_height_in_map_units_minus1",
    "frame_crop_right_offset",
    "frame_crop_bottom_offset",
    "aspect_ratio_idc",
    "sar_width",
    "sar_height",
    "video_full_range_flag",
    "colour_primaries",
    "transfer_characteristics",
    "matrix_coefficients",
)


def sps_of(path: Path) -> list[dict[str, int]]:
    """Every SPS in ``path``'s video (the avcC's and each in-band one), as ffmpeg's trace_headers reads them."""
    run = subprocess.run(
        [gen.ffmpeg_exe(), "-hide_banner", "-i", str(path), "-map", "0:v", "-c", "copy"]
        + ["-bsf:v", "trace_headers", "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    found: list[dict[str, int]] = []
    for line in run.stderr.splitlines():
        if "Sequence Parameter Set" in line:
            found.append({})
        elif found and "=" in line:
            words = line.split("]", 1)[-1].split()
            if len(words) >= 4 and words[1] in SPS_FIELDS and words[-2] == "=":
                found[-1].setdefault(words[1], int(words[-1]))
    return found


def top_level_boxes(path: Path) -> list[str]:
    boxes, data, pos = [], path.read_bytes(), 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        boxes.append(data[pos + 4 : pos + 8].decode("latin-1"))
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        pos += size if size else len(data)
    return boxes


def check_smart_output(
    src: Path, out: Path, name: str, segs: list[Segment], fmt: str, result, *, chunked: bool = False
) -> None:
    v = gen.VARIANTS[name]
    exp = expected_for(name, segs, fmt)
    # Every output frame is the planned one, within half a frame of the plan; every piece in sync.
    check_frames(out, segs, v.fps, frames=v.frames)
    check_sync(out, exp, gen.source_audio(name).mean(axis=0), 48000)
    # The frames the promise says are copied are the source's own pictures, bit for bit.
    pairs = must_copy(exp, idr_frames(src), v.frames)
    assert len(pairs) >= exp.total * smart.MIN_COPIED_SHARE, "the plan keeps whole GOPs: they should be copied"
    assert result.copied_frames + result.encoded_frames == exp.total
    if chunked:  # a GOP a chunk's edge cuts is encoded on both sides of it
        assert len(pairs) * 0.8 <= result.copied_frames < len(pairs)
    else:
        assert result.copied_frames == len(pairs)
        mine, theirs = decoded(out, {o for o, _ in pairs}), decoded(src, {s for _, s in pairs})
        for o, s in pairs:
            assert np.array_equal(mine[o], theirs[s]), f"output frame {o} is not source frame {s} bit for bit"
    # Every GOP, copied or encoded, is decoded with the source's profile, level, picture size, SAR and colour.
    (source_sps, *_) = sps_of(src)
    assert source_sps.keys() >= {"profile_idc", "level_idc", "pic_width_in_mbs_minus1"}
    output_sps = sps_of(out)
    assert len(output_sps) > len(exp.spans) and all(s == source_sps for s in output_sps), (source_sps, output_sps)
    # One frame duration apart, in presentation and in decode order, across every seam.
    pts, dts, tb = packet_times(out)
    tick = 1 / v.fps / tb
    assert sorted(Fraction(p - min(pts)) for p in pts) == [k * tick for k in range(exp.total)]
    assert {b - a for a, b in zip(dts, dts[1:], strict=False)} == {tick}, "decode times step unevenly"
    assert all(d <= p for p, d in zip(pts, dts, strict=True)), "a frame decoded after it is shown"
    # Decoders: ffmpeg stops on the first error; GStreamer decodes every frame.
    run = subprocess.run(
        [gen.ffmpeg_exe(), "-v", "error", "-xerror", "-i", str(out), "-f", "null", "-"], capture_output=True, text=True
    )
    assert run.returncode == 0 and not run.stderr, run.stderr
    assert players.gstreamer_frames(out, v.width, v.height) == exp.total
    if fmt == "mp4":
        boxes = top_level_boxes(out)
        assert boxes.index("moov") < boxes.index("mdat"), f"+faststart: {boxes}"


@pytest.mark.parametrize(("name", "fmt"), [("cam_gop1s", "mp4"), ("phone_2997", "mov")])
def test_smart_render_copies_whole_gops_exactly(media, tmp_path, name, fmt):
    src = media[name]
    plan = planner.plan_render(src, CAMERA_CUT, OutputSpec(fmt))
    strategy = planner.strategy_for(plan)
    assert strategy.kind is planner.Kind.SMART
    out = tmp_path / f"out.{fmt}"
    result = render(src, CAMERA_CUT, OutputSpec(fmt), out)
    check_smart_output(src, out, name, CAMERA_CUT, fmt, result)
    # Headless Chromium plays it to its end with no error, every frame counted.
    seen = players.chromium_plays(out, "video/mp4" if fmt == "mp4" else "video/quicktime")
    assert seen.get("ended") is True, seen
    assert seen["frames"] >= result.encoded_frames + result.copied_frames - 1 and seen["corrupted"] == 0, seen
    assert abs(seen["duration"] - result.duration_s) < 0.05, seen


def test_smart_render_of_many_pieces_of_a_long_source(media, tmp_path):
    """40 pieces over 200 s of a 2 s GOP source, about 80 % kept: many seams, each exact."""
    rng = np.random.default_rng(40)
    keep, drop = rng.uniform(2.5, 5.5, 40), rng.uniform(0.4, 1.6, 40)  # a filler cut's pieces and gaps
    scale = 199.0 / float(keep.sum() + drop.sum())
    ends = np.cumsum((keep + drop) * scale)
    segs = [
        Segment(round(float(e - d * scale - k * scale), 4), round(float(e - d * scale), 4))
        for e, k, d in zip(ends, keep, drop, strict=True)
    ]
    out = tmp_path / "out.mp4"
    result = render(media["cfr30"], segs, OutputSpec("mp4"), out)
    check_smart_output(media["cfr30"], out, "cfr30", segs, "mp4", result)
    # Chunked (render-cli render --chunks 3): each chunk copies what it keeps whole, one track across the joins.
    chunked = render(media["cfr30"], segs, OutputSpec("mp4"), tmp_path / "chunked.mp4", chunks=3)
    check_smart_output(media["cfr30"], tmp_path / "chunked.mp4", "cfr30", segs, "mp4", chunked, chunked=True)


def test_smart_false_and_no_smart_reencode_every_frame(media, tmp_path):
    spec = OutputSpec("mp4", smart=False)
    strategy = planner.strategy_for(planner.plan_render(media["cam_gop1s"], CAMERA_CUT, spec))
    assert strategy.kind is planner.Kind.WHOLE and strategy.not_smart == "output.smart is false"
    result = render(media["cam_gop1s"], CAMERA_CUT, spec, tmp_path / "out.mp4")
    assert result.copied_frames == 0 and result.encoded_frames == expected_for("cam_gop1s", CAMERA_CUT, "mp4").total
    check_frames(tmp_path / "out.mp4", CAMERA_CUT, Fraction(30), frames=360)
    assert OutputSpec.from_dict({"format": "mp4", "smart": False}) == spec
    assert (
        OutputSpec.from_dict({"format": "mp4"}).smart and OutputSpec.from_dict({"format": "mp4", "smart": None}).smart
    )


def test_open_gops_are_never_copied_from_a_recovery_point(media, tmp_path):
    """x264's open GOPs: after the first frame the keyframes are recovery points, whose B-frames refer back."""
    src = media["cam_gop2s_open"]
    with av.open(str(src)) as c:
        keys = [p for p in c.demux(video=0) if p.size and p.is_keyframe]
    assert len(keys) == 6 and idr_frames(src) == [0]  # six keyframes, one IDR frame
    plan = planner.plan_render(src, CAMERA_CUT, OutputSpec("mp4"))
    index = gops.scan(plan.info, max_pixels=plan.limits.max_source_pixels)
    assert index.starts == (0,) and index.problem is None
    strategy = planner.strategy_for(plan)
    assert strategy.kind is planner.Kind.WHOLE and "copied" in (strategy.not_smart or "")
    result = render(src, CAMERA_CUT, OutputSpec("mp4"), tmp_path / "out.mp4")
    assert result.copied_frames == 0
    check_frames(tmp_path / "out.mp4", CAMERA_CUT, Fraction(30), frames=360)
    # Kept from its first frame, the one IDR frame's GOP is copied up to the next closed start: the end.
    whole = [Segment(0.0, 12.0)]
    result = render(src, whole, OutputSpec("mp4"), tmp_path / "whole.mp4")
    assert result.copied_frames == 360
    check_smart_output(src, tmp_path / "whole.mp4", "cam_gop2s_open", whole, "mp4", result)


@pytest.mark.parametrize(
    ("name", "spec", "why"),
    [
        ("rotated", {}, "rotated 90"),
        ("odd", {}, "yuv444p"),
        ("vfr", {}, "variable"),
        ("webm_vp9", {}, "vp9"),
        ("hlg", {}, "hevc"),
        ("bt601", {"resolution": "720p"}, "1280x720"),
        ("cam_gop1s", {"aspect": "9:16"}, "the output is"),
        ("cam_gop1s", {"video_bitrate": 5}, None),
        # 16x16 in its avcC, then SPS of 16000x16000 in its packets: copied, it would carry frames past the
        # pixel limit that no decoder checked (encoded, the decoder refuses them: test_decode_limits.py).
        ("grow_frames", {}, "parameter sets mid-stream"),
    ],
)
def test_what_cannot_go_out_unchanged_is_reencoded(media, name, spec, why):
    plan = planner.plan_render(media[name], None, OutputSpec("mp4", **spec))
    strategy = planner.strategy_for(plan)
    if why is None:  # 5 Mb/s is over this source's bitrate: Auto caps to the source, and the copy fits
        assert strategy.kind is planner.Kind.SMART
    else:
        assert strategy.kind is not planner.Kind.SMART and why in (strategy.not_smart or ""), strategy.not_smart


def test_a_source_over_the_renders_bitrate_is_reencoded(media):
    plan = planner.plan_render(media["cam_gop1s"], None, OutputSpec("mp4"))
    squeezed = plan.encode.__class__(**{**plan.encode.__dict__, "video_bps": plan.encode.video_bps // 2})
    assert "bitrate" in (smart.why_not(plan.info, plan.spec, squeezed, plan.preset) or "")


def test_pieces_shorter_than_a_gop_are_encoded_and_a_render_copying_little_is_not_smart(media):
    # Pieces of 0.8 s of a 1 s GOP source hold no whole GOP.
    segs = [Segment(k + 0.1, k + 0.9) for k in range(11)]
    strategy = planner.strategy_for(planner.plan_render(media["cam_gop1s"], segs, OutputSpec("mp4")))
    assert strategy.kind is planner.Kind.WHOLE and "copied" in (strategy.not_smart or "")


@st.composite
def cuts(draw):
    frames = draw(st.integers(30, 2000))
    gop = draw(st.integers(1, 90))
    starts = tuple(range(0, frames, gop))
    edges = sorted(draw(st.lists(st.integers(0, frames), min_size=2, max_size=40, unique=True)))
    segs = [(edges[i], edges[i + 1]) for i in range(0, len(edges) - 1, 2)]
    return frames, starts, segs


@settings(max_examples=200, deadline=None)
@given(cuts())
def test_the_plan_covers_every_frame_once_and_copies_every_whole_gop(case):
    frames, starts, segs = case
    rate = Fraction(30)
    timeline = build_timeline(
        [Segment(float(a / rate), float(b / rate)) for a, b in segs],
        rate=rate,
        first_unit=0,
        end_unit=frames,
        sample_rate=None,
    )
    index = gops.GopIndex(frames, starts, 2, b"", "high", 40)
    plan = smart.plan_smart(timeline, index, seek_gap=60, min_share=0.0)
    if timeline.total_units == 0:
        assert plan is None
        return
    assert plan is not None
    shown = []  # the source frame each output frame shows, segment by segment
    for seg in plan.segments:
        if isinstance(seg, smart.Copy):
            assert seg.src in starts
            shown += range(seg.src, seg.src + seg.frames)
        else:
            assert seg.preroll == 0
            shown += [s.src + i for s in seg.spans for i in range(s.length)]
    assert [p.src + i for p in timeline.pieces for i in range(p.length)] == shown
    assert [s.start for s in plan.segments] == [0, *(s.end for s in plan.segments[:-1])]
    copied = {s for c in plan.copies for s in range(c.src, c.src + c.frames)}
    for p in timeline.pieces:  # every whole GOP inside a kept piece is copied
        for k, s in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else frames
            if p.src <= s and end <= p.src + p.length:
                assert set(range(s, end)) <= copied
    assert plan.copied + plan.encoded == timeline.total_units


def test_render_cli_says_what_it_copied_and_no_smart_copies_nothing(media, tmp_path):
    import json
    import shutil
    import sys

    exe = shutil.which("render-cli", path=str(Path(sys.executable).parent))
    assert exe
    plan = tmp_path / "cut.json"
    plan.write_text(json.dumps({"segments": [{"start": s.start, "end": s.end} for s in CAMERA_CUT]}))
    results = {}
    for flag in ("--smart", "--no-smart"):
        out = tmp_path / f"out{flag}.mp4"
        run = subprocess.run(
            [
                exe,
                "render",
                str(media["cam_gop1s"]),
                "--cut",
                str(plan),
                "--format",
                "mp4",
                "-o",
                str(out),
                "--quiet",
                flag,
            ],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "RENDER_NVENC": "off"},
        )
        assert run.returncode == 0, run.stderr
        results[flag] = json.loads(run.stdout)
    total = expected_for("cam_gop1s", CAMERA_CUT, "mp4").total
    smart_on, smart_off = results["--smart"], results["--no-smart"]
    assert smart_on["copied_frames"] > total // 2 and smart_on["copied_frames"] + smart_on["encoded_frames"] == total
    assert (smart_off["copied_frames"], smart_off["encoded_frames"]) == (0, total)
    graph = subprocess.run(
        [exe, "graph", str(media["cam_gop1s"]), "--cut", str(plan), "--format", "mp4", "--no-smart"],
        capture_output=True,
        text=True,
    )
    assert graph.stdout.startswith("# every frame is encoded (not smart: output.smart is false)"), graph.stdout[:200]
