"""Build the one ffmpeg filter graph (and argument list) that renders a timeline.

Pure: takes a probed source, a snapped timeline, the output options and a
preset, returns text and argv. Nothing here runs ffmpeg.

Shape of the graph for a video source with N pieces::

    [0:v] setpts, fps=R, [tpad,] segment=frames=… ─► kept pads ─► concat=n=N:v=1:a=0 ─► scale/crop,
                                                                      [tonemap,] format ─► settle timestamps
    [0:a] [adelay,] apad, asetpts=N, asegment=samples=… ─► afade ─► concat=n=N:v=0:a=1
                        (dropped pads ─► nullsink)

Why this shape:

* ``fps`` puts every source (CFR or VFR) on one frame grid anchored on its
  first frame, so ``segment`` splits at integer frame numbers, and a VFR source
  becomes CFR at its nominal rate, each slot showing the frame on screen at the
  slot's middle.
* ``asegment`` splits audio at integer sample counts, cutting inside audio
  frames where needed: sample-exact (times in seconds go through microseconds
  and can be a sample off, which adds up over many cuts). ``asettb=1/SR`` makes
  audio timestamps count samples, so the fades are placed by integer too.
* ``segment``/``asegment`` hand each frame to exactly one output. The textbook
  ``split`` into N ``trim`` filters hands every frame to all N branches, so its
  cost grows as N x frames: measured here, 1000 pieces took 180 s of filtering
  for 200 s of 320x180 video, against seconds with ``segment``. The pieces are
  in source order and ``concat`` consumes them in that order, so no pad holds
  frames for long: memory stays flat whether there are 10 pieces or 1000.
* Scaling happens once, after ``concat``, on the kept frames only.
* ``apad`` covers sources whose audio ends a little before the video, so the
  last piece still has its full length of samples.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from fractions import Fraction

from worker import loudness, reframe
from worker.allowlists import input_options
from worker.chunks import Chunk, Run
from worker.encoding import EncodeSettings
from worker.gops import GopIndex
from worker.plan import Timeline
from worker.presets import Preset, Tiers, load_tiers
from worker.probe import SourceInfo

#: Output options that blank the per-stream encoder tag ffmpeg writes for each encoded stream.
#: (+bitexact on the audio encoder: ffmpeg's AAC encoder otherwise writes its version into the first frame.)
NO_ENCODER_TAGS = ("-metadata:s:v", "encoder=", "-metadata:s:a", "encoder=", "-flags:a", "+bitexact")
# Silence allowed past the end of the source's audio, beyond what the probe says is missing.
PAD_MARGIN_S = 0.1
# Audio timestamps further than this from the samples counted so far are a hole (filled with silence) or an
# overlap (trimmed). Within the 1 ms sync promise, and above the jitter of millisecond timestamps, which the
# ffmpeg CLI already smooths back onto the sample count.
GAP_FILL_S = 0.001
# Decoder threads. Frame-threaded decoders (h264, hevc, vp9) keep one context
# per thread, with tables sized by the stream's *declared* dimensions. They are
# allocated before the pixel limit refuses a frame, so a crafted 16000x16000
# frame costs ~80 MB per thread even when refused: with ffmpeg's automatic
# count (up to 16) that alone is 1.3 GB. Four threads keep decoding faster than
# the encoder for the 4K sources the limit allows, and that cost under 400 MB.
DECODE_THREADS = 4


def _rate(r: Fraction) -> str:
    return f"{r.numerator}/{r.denominator}"


def _split_points(ranges: Sequence[tuple[int, int]]) -> tuple[list[int], list[int], int]:
    """Split points for ``segment``/``asegment`` that isolate ``ranges`` (relative, sorted).

    Returns (points, output index of each range, number of outputs). Output k
    covers ``[points[k-1], points[k])``; the outputs between ranges are dropped.
    """
    points: list[int] = []
    kept: list[int] = []
    out = 0
    pos = 0
    for start, end in ranges:
        if start > pos:
            points.append(start)
            out += 1
        kept.append(out)
        points.append(end)
        out += 1
        pos = end
    return points, kept, out + 1


def _segmenter(
    chains: list[str],
    head: str,
    kind: str,
    ranges: Sequence[tuple[int, int]],
    prefix: str = "",
) -> list[str]:
    """Route each range of the stream ``head`` to its own pad; returns the pad labels.

    ``kind`` is "v" or "a"; ``prefix`` keeps the labels of several heads apart (a chunk's runs).
    One ``segment`` filter sends every frame to exactly
    one output, so the cost per frame does not grow with the number of pieces
    (a ``split`` into N trims hands every frame to all N and scales as N x frames).
    """
    tag = f"{prefix}{kind}seg"
    if len(ranges) == 1 and ranges[0][0] == 0:
        # One piece from the start: a plain trim at its end is enough.
        trim = "trim=end_frame" if kind == "v" else "atrim=end_sample"
        chains.append(f"{head},{trim}={ranges[0][1]}[{tag}0]")
        return [f"[{tag}0]"]
    points, kept, n_out = _split_points(ranges)
    name, unit, sink = ("segment", "frames", "nullsink") if kind == "v" else ("asegment", "samples", "anullsink")
    pads = "".join(f"[{tag}{k}]" for k in range(n_out))
    chains.append(f"{head},{name}={unit}={'|'.join(map(str, points))}{pads}")
    keep = set(kept)
    for k in range(n_out):
        if k not in keep:
            chains.append(f"[{tag}{k}]{sink}")
    return [f"[{tag}{k}]" for k in kept]


# Tone mapping for PQ/HLG sources going to 8-bit BT.709 (see README, "How a render stays exact"): to linear
# light with SDR white at 100 nits, to BT.709 primaries, Hable's curve (keeps highlights from clipping, and
# faces, which sit well below peak, near their SDR level), no desaturation, then BT.709 transfer and matrix.
TONEMAP = (
    "zscale=t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,tonemap=tonemap=hable:desat=0,zscale=t=bt709:m=bt709:r=tv"
)
# The tags a tone-mapped output carries (ffmpeg's option values).
SDR_TAGS = {"color_primaries": "bt709", "color_trc": "bt709", "colorspace": "bt709"}
# Frames added past the last planned one when the picture is extended to cover audio
# after the video's end: the fps filter may emit one frame fewer than the probe counts.
CLONE_MARGIN = 2


def tone_maps(info: SourceInfo, preset: Preset) -> bool:
    """Whether a render of ``info`` with ``preset`` tone-maps HDR to SDR BT.709 (every video preset is 8-bit)."""
    return preset.has_video and info.video is not None and info.video.is_hdr


def _video_post(
    info: SourceInfo,
    timeline: Timeline,
    preset: Preset,
    enc: EncodeSettings,
    crop_path: Sequence[reframe.Knot] | None = None,
    first_frame: int = 0,
) -> str:
    """The chain after the video ``concat``: size, colour, pixel format, clean CFR timestamps.

    ``crop_path``: where the crop's left edge is at each output frame (worker/reframe.py), evaluated from the
    output frame ``first_frame`` on (a chunk's first encoded frame), so every chunk crops as the whole would.
    """
    assert info.video is not None
    post = []
    shown = (info.video.display_width, info.video.display_height)
    if enc.crop is not None:  # output.aspect: the rectangle of the picture the output shows
        cw, ch, x, y = enc.crop
        if crop_path:
            post.append(f"crop=w={cw}:h={ch}:x='{reframe.x_expression(crop_path, first_frame)}':y={y}:exact=1")
        else:
            post.append(f"crop={cw}:{ch}:{x}:{y}")
        shown = (cw, ch)
    if enc.crop_odd:
        post.append(f"crop={enc.width}:{enc.height}:0:0")
    elif enc.width and enc.height and (enc.width, enc.height) != shown:
        post.append(f"scale={enc.width}:{enc.height}:flags=bicubic")
    if tone_maps(info, preset):
        post.append(TONEMAP)
    post.append("format=yuv420p")
    # Restate frame times on the exact grid so the encoder sees clean CFR timestamps.
    post.append(f"settb=1/({_rate(timeline.rate)}),setpts=N")
    return ",".join(post)


def build_graph(
    info: SourceInfo,
    timeline: Timeline,
    preset: Preset,
    enc: EncodeSettings,
    *,
    audio_only: bool = False,
    gain: loudness.Gain | None = None,
    crop_path: Sequence[reframe.Knot] | None = None,
) -> str:
    """The filter graph text; its outputs are labelled ``[vout]`` and ``[aout]``.

    ``audio_only`` builds only ``[aout]`` of a video render: a chunked render encodes its audio once,
    whole, with this graph (the same samples, fades and length as the whole render's), and the picture
    chunk by chunk (:func:`build_chunk_graph`).

    Video and audio pieces are joined by two separate ``concat`` filters. One
    ``concat`` with both streams pads each piece's shorter stream to its longer
    one, so a piece whose audio rounds to a sample less than its frames gets a
    sample of silence; over 10,000 pieces that drifted the audio by 25 ms. Apart,
    each stream is exactly the sum of its pieces, which the plan placed with
    cumulative rounding.
    """
    pieces = timeline.pieces
    n = len(pieces)
    chains: list[str] = []
    use_video = preset.has_video and not audio_only
    use_audio = info.audio is not None
    v_pads: list[str] = []
    a_pads: list[str] = []
    a_lead = 0

    if use_video:
        assert info.video is not None
        # Frames are counted from the first one, on a grid anchored there: slot k
        # shows the frame on screen at the middle of the slot (round=near), so a
        # VFR frame whose timestamp only jitters keeps its own slot, and a slot
        # left empty by a dropped frame repeats its neighbour.
        head = f"[0:{info.video.index}]setpts=PTS-STARTPTS,fps=fps={_rate(timeline.rate)}:round=near"
        lead = max(0, -min(p.src for p in pieces))  # black before the first frame
        have = max(1, round(Fraction(info.video.duration) * timeline.rate))
        tail = max(0, max(p.src + p.length for p in pieces) - have)  # the last frame held after the video
        pad = []
        if lead:
            pad.append(f"start={lead}:color=black")
        if tail:
            pad.append(f"stop={tail + CLONE_MARGIN}:stop_mode=clone")
        if pad:
            head += ",tpad=" + ":".join(pad)
        v_pads = _segmenter(chains, head, "v", [(p.src + lead, p.src + lead + p.length) for p in pieces])
    if use_audio:
        assert info.audio is not None and timeline.sample_rate is not None
        sr = timeline.sample_rate
        # Samples are counted from the first decoded one; silence fills what the
        # plan keeps before it (audio that starts after the video).
        a_lead = max(0, -min(p.a_src for p in pieces))
        need = max(p.a_src + p.a_len for p in pieces)
        # apad covers audio that ends a little before the plan's end (as the probe saw it),
        # plus a small margin. It is bounded on purpose: a source whose data stops
        # early must come out short (and be caught), not padded with silence.
        pad_len = max(0, need - round(info.audio.duration * sr)) + round(PAD_MARGIN_S * sr)
        # A hole in the audio's timestamps (packets a recorder dropped) is filled with silence, so the samples
        # after it keep their place instead of moving up by the hole's length: aresample follows the
        # timestamps (async=1: fill and trim only, never stretch) once they stray more than GAP_FILL_S from
        # the samples counted. Below that nothing is touched, so a clean source passes sample for sample.
        head = f"[0:{info.audio.index}]aresample=async=1:min_comp={GAP_FILL_S}:min_hard_comp={GAP_FILL_S},"
        if a_lead:
            head += f"adelay=delays={a_lead}S:all=1,"
        # Timestamps become sample counts, so the fades below are placed by integer.
        head += f"apad=pad_len={pad_len},asettb=1/{sr},asetpts=N"
        a_pads = _segmenter(chains, head, "a", [(p.a_src + a_lead, p.a_src + a_lead + p.a_len) for p in pieces])

    fade = timeline.fade_samples
    v_in: list[str] = []
    a_in: list[str] = []
    for i, p in enumerate(pieces):
        if use_video:
            chains.append(f"{v_pads[i]}setpts=PTS-STARTPTS[v{i}]")
            v_in.append(f"[v{i}]")
        if use_audio:
            filters = []
            f = min(fade, p.a_len // 2)
            start = p.a_src + a_lead  # afade positions are sample timestamps (the time base is 1/SR)
            if p.fade_in and f > 0:
                filters.append(f"afade=t=in:start_sample={start}:nb_samples={f}")
            if p.fade_out and f > 0:
                filters.append(f"afade=t=out:start_sample={start + p.a_len - f}:nb_samples={f}")
            filters.append("asetpts=PTS-STARTPTS")
            chains.append(a_pads[i] + ",".join(filters) + f"[a{i}]")
            a_in.append(f"[a{i}]")

    v_label, a_label = "[vcat]", "[acat]"
    if n == 1:
        v_label, a_label = "[v0]", "[a0]"
    else:
        if use_video:
            chains.append("".join(v_in) + f"concat=n={n}:v=1:a=0{v_label}")
        if use_audio:
            chains.append("".join(a_in) + f"concat=n={n}:v=0:a=1{a_label}")

    if use_video:
        chains.append(v_label + _video_post(info, timeline, preset, enc, crop_path) + "[vout]")

    total_samples_out = round(timeline.duration * enc.sample_rate) if preset.has_video else None
    if use_audio:
        assert timeline.sample_rate is not None
        post = ["asetpts=N/SR/TB"]
        if enc.downmix:
            post.append(f"aformat=channel_layouts={enc.downmix}")
        if enc.sample_rate != timeline.sample_rate:
            post.append(f"aresample={enc.sample_rate}")
        if gain is not None:  # loudness normalisation: one gain for the whole output (worker/loudness.py)
            post += loudness.filters(gain, enc.sample_rate)
        chains.append(a_label + ",".join(post) + "[aout]")
    elif preset.has_video:
        # A video output always carries sound: silence of exactly the video's length.
        layout = "stereo" if enc.channels == 2 else "mono"
        chains.append(f"anullsrc=r={enc.sample_rate}:cl={layout},atrim=end_sample={total_samples_out}[aout]")
    return ";\n".join(chains) + "\n"


def render_decoders(info: SourceInfo, preset: Preset) -> tuple[str, ...]:
    """The decoders a render with ``preset`` runs: the chosen video stream's (video outputs) and audio's."""
    if preset.has_video:
        return info.decoders
    return (info.audio.codec,) if info.audio is not None else ()


def _source_input_args(info: SourceInfo, max_pixels: int, decoders: tuple[str, ...]) -> list[str]:
    """The hardening options every open of the tenant's source gets (see :func:`ffmpeg_args`)."""
    args = []
    for name, value in input_options(max_pixels, decoders).items():
        args += [f"-{name}", value]
    return [*args, "-threads", str(DECODE_THREADS), "-f", info.demuxer]


def _video_encode_args(info: SourceInfo, preset: Preset, enc: EncodeSettings, tiers: Tiers) -> list[str]:
    """``[vout]`` to the preset's encoder at the render's rate control (whole renders and chunks alike)."""
    assert enc.video_bps is not None and preset.video_codec is not None
    b = enc.video_bps
    args = ["-map", "[vout]", "-c:v", preset.video_codec, *preset.video_args]
    args += [
        "-b:v",
        str(b),
        "-maxrate",
        str(int(b * tiers.maxrate_factor)),
        "-bufsize",
        str(int(b * tiers.bufsize_factor)),
        # The graph already emits exact CFR frames: no duplication or dropping.
        "-fps_mode",
        "passthrough",
    ]
    if tone_maps(info, preset):
        # The frames are SDR BT.709 now; say so (SDR sources keep the tags their frames carry).
        for name, value in SDR_TAGS.items():
            args += [f"-{name}", value]
    return args


def ffmpeg_args(
    info: SourceInfo,
    preset: Preset,
    enc: EncodeSettings,
    graph_file: str,
    output_file: str,
    *,
    max_pixels: int,
    tiers: Tiers | None = None,
    extra_input_args: Sequence[str] = (),
    cover_file: str | None = None,
) -> list[str]:
    """The ffmpeg arguments (without the binary) that run ``graph_file``.

    ``max_pixels`` is the pixel limit (RENDER_MAX_SOURCE_PIXELS): every decoded
    frame is held to it by the decoder itself, not only the probe's first frame.
    ``cover_file``: the cover art's side file (:mod:`worker.cover`), copied into an audio-only output.
    """
    tiers = tiers or load_tiers()
    args = ["-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-nostats", "-progress", "pipe:1"]
    # Input hardening, the same options the probe opened the source with: only
    # local files, only allowed demuxers, only the decoders of the streams this
    # render decodes, bounded probing, and no frame over the pixel limit (the
    # decoder refuses it; worker/ffmpeg.py turns that refusal into
    # source_too_large). Then the demuxer the probe identified, so content
    # sniffing cannot pick another one.
    args += _source_input_args(info, max_pixels, render_decoders(info, preset))
    if not preset.has_video:
        args += ["-vn"]  # audio-only outputs never decode video
    args += ["-sn", "-dn", *extra_input_args, "-i", info.path]
    if cover_file is not None:
        # The cover art's side file (worker/cover.py): ours, but opened as warily as the source.
        for name, value in input_options(max_pixels, decoders=()).items():
            args += [f"-{name}", value]
        args += ["-f", "mov", "-i", cover_file]
    args += ["-/filter_complex", graph_file]
    if preset.has_video:
        args += _video_encode_args(info, preset, enc, tiers)
    args += ["-map", "[aout]", "-c:a", preset.audio_codec, *preset.audio_args, "-b:a", str(enc.audio_bps)]
    args += ["-ar", str(enc.sample_rate)]
    if cover_file is not None:
        # Copied, never decoded: the picture goes out byte for byte as MP4 covr or ID3 APIC.
        args += ["-map", "1:0", "-c:v", "copy", "-disposition:v:0", "attached_pic"]
    # Chapters and per-stream metadata describe the uncut source; they would lie. No encoder tags either
    # (with the presets' +bitexact): they would tell every client which libraries made the file.
    args += ["-map_metadata", "-1", "-map_chapters", "-1", *NO_ENCODER_TAGS]
    args += ["-f", preset.muxer, *preset.muxer_args, output_file]
    return args


# --- Chunked renders (worker/chunks.py) ---------------------------------------------------------------------

#: Frames decoded past a run's last one, so that ``fps`` has seen the frame after each slot it fills
#: (``round=near`` picks by the neighbours) and a held last frame has its clone margin.
RUN_TAIL_FRAMES = CLONE_MARGIN + 2
#: Encoder options that make a chunk's piece join by stream copy: the first frame an IDR frame (a decoder
#: can start there, and nothing before it is referenced) and every GOP closed (no frame refers across
#: a GOP's start, so nothing refers across the join either). Per encoder, since each names them its way.
CHUNK_ENCODER_ARGS: dict[str, tuple[str, ...]] = {
    "libx264": ("-flags", "+cgop", "-x264-params", "open-gop=0", "-forced-idr", "1"),
    "h264_nvenc": ("-flags", "+cgop", "-forced-idr", "1"),
}


def matching_encoder_args(index: GopIndex) -> list[str]:
    """x264 options for a smart render's encoded segment, which plays on into and out of copied GOPs.

    The source's profile and level (so a decoder sized for the copied stream is sized for these frames too;
    the level also bounds x264's reference frames to the same buffer), closed GOPs from an IDR frame (as for
    a chunk), and the SPS and PPS repeated in front of every IDR frame (``repeat-headers``): the copied GOPs
    carry the source's own in front of theirs (worker/render/splice.py), so every GOP brings its parameter
    sets and a player that starts or seeks anywhere decodes it with the right ones. Size, SAR and colour
    tags come from the decoded frames, which are the source's.
    """
    assert index.profile is not None
    return [
        *("-profile:v", index.profile, "-level:v", str(index.level), "-flags", "+cgop", "-forced-idr", "1"),
        *("-x264-params", "open-gop=0:repeat-headers=1"),
    ]


def first_frame_key(chunk: Chunk, keys: Sequence[int] = ()) -> list[str]:
    """Forces a keyframe (an IDR frame, with ``-forced-idr``) on the chunk's first own frame, after its pre-roll,
    and on the frames ``keys`` (a smart render's batch: the first frame of each segment it holds)."""
    frames = sorted({chunk.preroll, *keys})
    return ["-force_key_frames", "expr:" + "+".join(f"eq(n,{k})" for k in frames)]


@dataclasses.dataclass(frozen=True)
class RunInput:
    """How a chunk's run opens the source, and which grid unit its first filtered frame is."""

    seek_us: int | None  # ``-ss``: render-timeline microseconds; None decodes from the start
    duration_us: int  # ``-t``: how much is read from the seek point (or from the start)
    base: int  # grid unit of the first frame the run's ``fps`` emits
    offset: Fraction  # seconds added to the seeked timestamps to put them on the whole render's clock
    lead: int  # black frames before the first frame (audio that starts before the video)
    tail: int  # frames past the video's end (the last frame held over audio that outlasts it)


def _ceil_us(x: Fraction) -> int:
    return math.ceil(x * 1_000_000)


def run_input(info: SourceInfo, timeline: Timeline, run: Run) -> RunInput:
    """Where a run seeks, and how its frames are put back on the whole render's frame clock.

    The whole render counts frames from the first one (``setpts=PTS-STARTPTS``): source unit ``u`` is at
    ``u / rate`` s. A seek to render time ``S`` makes ffmpeg shift timestamps by ``-S`` (from the container's
    start, which is where the render timeline's zero is), and discards the frames before ``S``. ``S`` is
    half a frame before the run's first unit, so exactly that frame is the first kept one, whatever rounding
    the timestamps had; adding ``S - origin`` puts every frame back at ``u / rate``, and ``fps`` with
    ``start_time`` then numbers its slots from the run's first unit, so the run shows the very frames the
    whole render shows in those slots.
    """
    assert info.video is not None
    rate = timeline.rate
    origin = timeline.origin
    have = max(1, round(Fraction(info.video.duration) * rate))
    first = min(s.src for s in run.spans)
    tail = max(0, run.end - have)
    # A run that holds the last frame starts decoding a second before it: ffmpeg 7 aborts ("Assertion
    # best_input >= 0") when a seeked input reaches its end after a single frame.
    base = min(run.seek, have - 1 - math.ceil(timeline.rate)) if tail else run.seek
    if base <= 0:
        lead = max(0, -first)
        stop = origin + Fraction(run.end + RUN_TAIL_FRAMES, rate)
        return RunInput(None, _ceil_us(stop), -lead, Fraction(0), lead, tail)
    seek_us = math.floor((origin + (base - Fraction(1, 2)) / rate) * 1_000_000)
    offset = Fraction(seek_us, 1_000_000) - origin
    duration_us = _ceil_us(Fraction(run.end + RUN_TAIL_FRAMES - base, rate) + Fraction(1, 2) / rate)
    return RunInput(seek_us, duration_us, base, offset, 0, tail)


def _seconds(x: Fraction) -> str:
    """An exact-enough decimal for ffmpeg expressions and options (17 significant digits)."""
    return repr(float(x))


def build_chunk_graph(
    info: SourceInfo,
    timeline: Timeline,
    chunk: Chunk,
    preset: Preset,
    enc: EncodeSettings,
    crop_path: Sequence[reframe.Knot] | None = None,
) -> str:
    """The filter graph of one chunk: its frames only, as ``[vout]``; input ``i`` is the chunk's run ``i``.

    Each run's frames go through the same grid, routing and picture chain as in the whole render
    (:func:`build_graph`): ``fps`` on the grid, ``segment`` to pads (dropped ranges to ``nullsink``),
    ``concat``, then scale/crop/tone map/format. No audio: that is rendered once, whole.
    """
    assert info.video is not None and preset.has_video
    rate = _rate(timeline.rate)
    chains: list[str] = []
    pads: list[str] = []
    for i, run in enumerate(chunk.runs):
        ri = run_input(info, timeline, run)
        if ri.seek_us is None:
            head = f"[{i}:{info.video.index}]setpts=PTS-STARTPTS,fps=fps={rate}:round=near"
        else:
            start = _seconds(Fraction(ri.base) / timeline.rate)
            head = (
                f"[{i}:{info.video.index}]setpts=PTS+({_seconds(ri.offset)})/TB,"
                f"fps=fps={rate}:round=near:start_time={start}"
            )
        pad = []
        if ri.lead:
            pad.append(f"start={ri.lead}:color=black")
        if ri.tail:
            pad.append(f"stop={ri.tail + CLONE_MARGIN}:stop_mode=clone")
        if pad:
            head += ",tpad=" + ":".join(pad)
        ranges = [(s.src - ri.base, s.src - ri.base + s.length) for s in run.spans]
        if len(ranges) == 1:
            # One range: a trim (a segment with nullsinks is one more way to meet the abort above).
            chains.append(f"{head},trim=start_frame={ranges[0][0]}:end_frame={ranges[0][1]}[r{i}vseg0]")
            pads.append(f"[r{i}vseg0]")
        else:
            pads += _segmenter(chains, head, "v", ranges, prefix=f"r{i}")
    v_in = []
    for k, pad_label in enumerate(pads):
        chains.append(f"{pad_label}setpts=PTS-STARTPTS[v{k}]")
        v_in.append(f"[v{k}]")
    label = v_in[0]
    if len(v_in) > 1:
        label = "[vcat]"
        chains.append("".join(v_in) + f"concat=n={len(v_in)}:v=1:a=0{label}")
    first = chunk.start - chunk.preroll  # the output frame the chunk's encoder sees first
    chains.append(label + _video_post(info, timeline, preset, enc, crop_path, first) + "[vout]")
    return ";\n".join(chains) + "\n"


def chunk_ffmpeg_args(
    info: SourceInfo,
    timeline: Timeline,
    chunk: Chunk,
    preset: Preset,
    enc: EncodeSettings,
    graph_file: str,
    output_file: str,
    *,
    max_pixels: int,
    muxer: str,
    tiers: Tiers | None = None,
    encoder_args: Sequence[str] | None = None,
    keys: Sequence[int] = (),
) -> list[str]:
    """The ffmpeg arguments that encode one chunk's frames, after its pre-roll (no audio), into a piece
    written by ``muxer`` (the format's piece preset's).

    One input per run, each opened with the same hardening as a whole render and seeked with ``-ss``
    before ``-i`` (to the keyframe before the run, then an exact discard), bounded with ``-t``. Same
    encoder, preset and rate control as the whole render, plus :data:`CHUNK_ENCODER_ARGS` and a forced
    keyframe on the first frame after the pre-roll, so that once the pre-roll is dropped
    (``worker.render.parts.render_chunk``) every piece starts with an IDR frame in a closed GOP.
    ``encoder_args`` replaces :data:`CHUNK_ENCODER_ARGS` (a smart render's :func:`matching_encoder_args`);
    ``keys`` are more frames forced to IDR frames (:func:`first_frame_key`).
    """
    tiers = tiers or load_tiers()
    assert preset.video_codec is not None and info.video is not None
    args = ["-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-nostats", "-progress", "pipe:1"]
    for run in chunk.runs:
        ri = run_input(info, timeline, run)
        args += _source_input_args(info, max_pixels, (info.video.codec,))
        args += ["-an", "-sn", "-dn"]
        if ri.seek_us is not None:
            args += ["-ss", f"{ri.seek_us / 1_000_000:.6f}"]
        args += ["-t", f"{ri.duration_us / 1_000_000:.6f}", "-i", info.path]
    args += ["-/filter_complex", graph_file]
    args += _video_encode_args(info, preset, enc, tiers)
    if encoder_args is None:
        encoder_args = CHUNK_ENCODER_ARGS.get(preset.video_codec, ())
    args += [*encoder_args, *first_frame_key(chunk, keys)]
    args += ["-map_metadata", "-1", "-map_chapters", "-1", "-f", muxer, output_file]
    return args


def measure_ffmpeg_args(info: SourceInfo, graph_file: str, *, max_pixels: int) -> list[str]:
    """The ffmpeg arguments of a measuring pass over the kept audio (worker/render/loudness.py): the source
    opened as hardened as for a render, only its audio decoded, ``[aout]`` to the null muxer."""
    decoders = (info.audio.codec,) if info.audio is not None else ()
    args = ["-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-nostats", "-progress", "pipe:1"]
    args += [*_source_input_args(info, max_pixels, decoders), "-vn", "-sn", "-dn", "-i", info.path]
    return [*args, "-/filter_complex", graph_file, "-map", "[aout]", "-f", "null", "-"]


def audio_ffmpeg_args(
    info: SourceInfo,
    preset: Preset,
    enc: EncodeSettings,
    graph_file: str,
    output_file: str,
    *,
    max_pixels: int,
    muxer: str,
    tiers: Tiers | None = None,
) -> list[str]:
    """The ffmpeg arguments that encode a video render's whole audio (``build_graph(..., audio_only=True)``)
    with the render's own audio codec and bitrate into a piece written by ``muxer`` (the audio piece
    preset's), which assembly muxes by stream copy."""
    audio = dataclasses.replace(preset, has_video=False, video_codec=None, muxer=muxer, muxer_args=())
    return ffmpeg_args(info, audio, enc, graph_file, output_file, max_pixels=max_pixels, tiers=tiers)
