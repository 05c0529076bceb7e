"""Presets load; output options validate; sizes and bitrates follow DESIGN.md."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest

from worker.encoding import decide, output_size
from worker.errors import ErrorCode, InvalidJob, SourceError
from worker.graph import build_graph, ffmpeg_args
from worker.output import OutputSpec
from worker.plan import Segment, build_timeline
from worker.presets import FORMATS, VARIANTS, all_presets, load_preset, load_tiers
from worker.probe import AudioInfo, SourceInfo, VideoInfo


def test_every_preset_loads_with_its_variants() -> None:
    presets = all_presets()
    assert {(p.format, p.variant) for p in presets} == {(f, v) for f in FORMATS for v in VARIANTS}
    for p in presets:
        assert p.audio_codec in {"aac", "libmp3lame"}
        if p.format in {"mp4", "mov"}:
            assert p.has_video
            assert p.video_codec == ("h264_nvenc" if p.variant == "nvenc" else "libx264")
            assert p.encoder == p.variant
        else:
            assert not p.has_video and p.video_codec is None and p.encoder == "cpu"
    assert "+faststart" in load_preset("mp4").muxer_args
    assert load_preset("mp3").audio_codec == "libmp3lame"
    tiers = load_tiers()
    assert tiers.video_allowed_mbps == (5, 10, 20, 50)
    assert tiers.audio_allowed_kbps == (128, 192, 256, 320)
    assert tiers.resolutions == {"720p": 720, "1080p": 1080, "4k": 2160}


def test_unknown_format_is_invalid_job() -> None:
    with pytest.raises(InvalidJob, match="output.format"):
        load_preset("avi")


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"format": "webm"}, "output.format"),
        ({"format": "mp4", "resolution": "480p"}, "output.resolution"),
        ({"format": "mp4", "video_bitrate": 7}, "output.video_bitrate"),
        ({"format": "mp4", "audio_bitrate": 100}, "output.audio_bitrate"),
        ({"format": "mp4", "audio_bitrate": True}, "output.audio_bitrate"),
        ({"format": "mp4", "colour": "red"}, "unknown field"),
        ("mp4", "output must be an object"),
    ],
)
def test_output_spec_validation(raw: object, needle: str) -> None:
    with pytest.raises(InvalidJob, match=needle):
        OutputSpec.from_dict(raw)


@pytest.mark.parametrize(
    ("src", "res", "want"),
    [
        ((1920, 1080), "720p", (1280, 720)),
        ((1920, 1080), "1080p", (1920, 1080)),
        ((1280, 720), "1080p", (1280, 720)),  # never upscale
        ((1080, 1920), "720p", (720, 1280)),  # portrait keeps portrait
        ((3840, 2160), "4k", (3840, 2160)),
        ((1440, 1080), "720p", (960, 720)),  # 4:3 keeps its aspect
        ((321, 241), None, (320, 240)),  # odd edges become even
        ((1366, 769), "720p", (1278, 720)),
        ((1920, 1080), None, (1920, 1080)),
    ],
)
def test_output_size(src: tuple[int, int], res: str | None, want: tuple[int, int]) -> None:
    w, h, _ = output_size(*src, res, load_tiers())
    assert (w, h) == want
    assert w % 2 == 0 and h % 2 == 0


def _info(video_bps: int | None = 2_000_000, audio: bool = True, video: bool = True, rot: int = 0) -> SourceInfo:
    v = VideoInfo(
        index=0,
        codec="h264",
        width=1920,
        height=1080,
        rotation=rot,
        avg_rate=Fraction(30),
        rate=Fraction(30),
        is_vfr=False,
        bit_rate=video_bps,
        keyframe_interval_s=2.0,
        start=0.0,
        duration=10.0,
        pix_fmt="yuv420p",
    )
    a = AudioInfo(
        index=1,
        codec="aac",
        sample_rate=48000,
        channels=2,
        layout="stereo",
        bit_rate=128_000,
        start=0.0,
        duration=10.0,
    )
    return SourceInfo(
        path="/x.mp4",
        format_name="mov,mp4",
        demuxer="mov",
        size_bytes=1,
        duration=10.0,
        bit_rate=None,
        video=v if video else None,
        audio=a if audio else None,
        audio_stream_count=1 if audio else 0,
    )


def test_auto_bitrate_is_tier_default_capped_to_source() -> None:
    mp4 = load_preset("mp4")
    high = decide(_info(video_bps=50_000_000), OutputSpec("mp4", "720p"), mp4)
    assert high.video_bps == 5_000_000  # 720p tier default
    assert decide(_info(video_bps=50_000_000), OutputSpec("mp4", "1080p"), mp4).video_bps == 10_000_000
    low = decide(_info(video_bps=2_000_000), OutputSpec("mp4", "1080p"), mp4)
    assert low.video_bps == 2_000_000  # capped to the source
    explicit = decide(_info(video_bps=8_000_000), OutputSpec("mp4", "1080p", video_bitrate=50), mp4)
    assert explicit.video_bps == 8_000_000  # an explicit value above the source is capped too
    assert decide(_info(), OutputSpec("mp4", audio_bitrate=320), mp4).audio_bps == 128_000
    assert decide(_info(video_bps=None), OutputSpec("mp4", video_bitrate=20), mp4).video_bps == 20_000_000


def test_rotation_counts_for_the_size() -> None:
    enc = decide(_info(rot=90), OutputSpec("mp4", "720p"), load_preset("mp4"))
    assert (enc.width, enc.height) == (720, 1280)


def test_format_needs_matching_streams() -> None:
    with pytest.raises(SourceError) as e:
        decide(_info(video=False), OutputSpec("mp4"), load_preset("mp4"))
    assert e.value.code is ErrorCode.SOURCE_NO_VIDEO
    with pytest.raises(SourceError) as e:
        decide(_info(audio=False), OutputSpec("mp3"), load_preset("mp3"))
    assert e.value.code is ErrorCode.SOURCE_NO_AUDIO


def test_graph_shape() -> None:
    info = _info()
    segs = [Segment(1, 2), Segment(2, 3), Segment(5, 6)]
    tl = build_timeline(segs, rate=Fraction(30), first_unit=0, end_unit=300, sample_rate=48000)
    mp4 = load_preset("mp4")
    g = build_graph(info, tl, mp4, decide(info, OutputSpec("mp4", "720p"), mp4))
    # Video and audio pieces are joined apart: a joint concat pads each piece's audio to its video and drifts.
    assert "concat=n=2:v=1:a=0" in g and "concat=n=2:v=0:a=1" in g and ":v=1:a=1" not in g
    # frames counted on a grid anchored at the first frame, each slot the frame on screen at its middle
    assert "setpts=PTS-STARTPTS,fps=fps=30/1:round=near" in g
    assert "tonemap" not in g and "tpad" not in g and "adelay" not in g
    # touching segments merged into one piece: frames [30, 90) and [150, 180)
    assert "segment=frames=30|90|150|180[vseg0][vseg1][vseg2][vseg3][vseg4]" in g
    assert "asegment=samples=48000|144000|240000|288000" in g
    assert "[vseg0]nullsink" in g and "[vseg2]nullsink" in g and "[vseg4]nullsink" in g
    assert "split" not in g  # no branch sees frames it does not keep
    assert g.count("afade=t=in") == 2 and g.count("afade=t=out") == 2
    assert "scale=1280:720" in g
    # audio-only output never touches the video stream
    m4a = load_preset("m4a")
    g2 = build_graph(info, tl, m4a, decide(info, OutputSpec("m4a"), m4a))
    assert "[0:0]" not in g2 and "[vout]" not in g2 and "concat=n=2:v=0:a=1" in g2
    # a single piece covering the whole source needs no segmenting at all
    whole = build_timeline(None, rate=Fraction(30), first_unit=0, end_unit=300, sample_rate=48000)
    g4 = build_graph(info, whole, mp4, decide(info, OutputSpec("mp4"), mp4))
    assert "segment" not in g4 and "concat" not in g4
    # no audio in the source: a silent track of exactly the output length
    noaudio = dataclasses.replace(info, audio=None, audio_stream_count=0)
    tl2 = build_timeline(segs, rate=Fraction(30), first_unit=0, end_unit=300, sample_rate=None)
    g3 = build_graph(noaudio, tl2, mp4, decide(noaudio, OutputSpec("mp4"), mp4))
    assert "anullsrc=r=48000" in g3 and "atrim=end_sample=144000" in g3


def test_graph_fills_missing_streams_and_tone_maps_hdr() -> None:
    """Audio before the first frame gets black frames; audio starting late gets silence; HDR is tone-mapped."""
    mp4 = load_preset("mp4")
    base = _info()
    assert base.video is not None and base.audio is not None
    # audio starts 0.5 s after the video: a plan from 0 needs 24000 samples of silence first
    late = dataclasses.replace(base, audio=dataclasses.replace(base.audio, start=0.5, duration=9.5))
    tl = build_timeline(
        [Segment(0, 2)], rate=Fraction(30), first_unit=0, end_unit=300, sample_rate=48000, audio_origin=Fraction(1, 2)
    )
    assert tl.pieces[0].a_src == -24000
    g = build_graph(late, tl, mp4, decide(late, OutputSpec("mp4"), mp4))
    assert "adelay=delays=24000S:all=1" in g
    # video starts 0.5 s after the audio: 15 black frames first
    vlate = dataclasses.replace(base, video=dataclasses.replace(base.video, start=0.5, duration=9.5))
    tl2 = build_timeline(
        [Segment(0, 2)], rate=Fraction(30), first_unit=-15, end_unit=285, sample_rate=48000, origin=Fraction(1, 2)
    )
    g2 = build_graph(vlate, tl2, mp4, decide(vlate, OutputSpec("mp4"), mp4))
    assert "tpad=start=15:color=black" in g2
    # HDR: tone-mapped to BT.709 and tagged so; SDR untouched
    hdr = dataclasses.replace(base, video=dataclasses.replace(base.video, color_trc="smpte2084"))
    tl3 = build_timeline(None, rate=Fraction(30), first_unit=0, end_unit=300, sample_rate=48000)
    g3 = build_graph(hdr, tl3, mp4, decide(hdr, OutputSpec("mp4"), mp4))
    assert "tonemap=tonemap=hable" in g3 and "zscale=t=bt709:m=bt709" in g3
    args = ffmpeg_args(hdr, mp4, decide(hdr, OutputSpec("mp4"), mp4), "g", "o.mp4", max_pixels=10**7)
    assert args[args.index("-color_trc") + 1] == "bt709" and args[args.index("-colorspace") + 1] == "bt709"
    plain = ffmpeg_args(base, mp4, decide(base, OutputSpec("mp4"), mp4), "g", "o.mp4", max_pixels=10**7)
    assert "-color_trc" not in plain
