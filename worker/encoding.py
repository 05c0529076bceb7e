"""What the output will be: sizes, crop, bitrates and audio layout, decided from the probe, the job's options and
the preset (:func:`decide`), before any graph is drawn. Pure.

Kept apart from the graph builder: this is the public vocabulary's arithmetic (tiers, Auto, caps, aspect
crops), which the planner calls once; the graph and argv builders only read the :class:`EncodeSettings`.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

from worker.errors import ErrorCode, SourceError
from worker.output import ASPECTS, OutputSpec
from worker.presets import Preset, Tiers, load_tiers
from worker.probe import SourceInfo

# Sample rate for a silent track added to a video output whose source has no audio.
SILENT_RATE = 48000
# Bitrate floors. A source may declare (or really have) a tiny bitrate: a still
# picture over an hour of podcast audio measures a few hundred bits per second.
# "Capped to the source's bitrate" must not turn that into ``-b:v 72``, which
# x264 rejects ("bitrate not specified"): that is the source's oddity, and it
# would fail as encode_failed. So the video target never goes below 200 kbps
# per 1280x720 worth of output pixels (450 kbps at 1080p): below what any real
# recording uses, so only absurd rates are lifted, and enough for a still or
# near-still picture to come out clean. Audio never goes below 32 kbps. A floor
# never raises a target above the tier default or the user's explicit choice.
MIN_VIDEO_BPS = 200_000
MIN_VIDEO_BPS_PIXELS = 1280 * 720
MIN_AUDIO_BPS = 32_000
# The smallest picture edge an H.264 output can have (4:2:0 chroma needs two luma pixels a side).
MIN_EDGE = 2


@dataclasses.dataclass(frozen=True)
class EncodeSettings:
    """What the output will be: the decisions the graph and argv are built from."""

    width: int | None
    height: int | None
    crop_odd: bool  # whether an odd source edge is cropped by one pixel
    video_bps: int | None
    audio_bps: int
    sample_rate: int
    channels: int
    downmix: str | None  # channel layout to convert to, when the encoder needs fewer channels
    #: ``output.aspect``: the rectangle cut from the source's (displayed) picture, (width, height, x, y), before
    #: it is scaled to (width, height); None keeps the whole picture.
    crop: tuple[int, int, int, int] | None = None


def _even(n: float | Fraction) -> int:
    return max(2, int(round(n / 2)) * 2)


def output_size(src_w: int, src_h: int, resolution: str | None, tiers: Tiers) -> tuple[int, int, bool]:
    """Display size of the output: shorter edge at the tier, never upscaled, even.

    Returns (width, height, scaled). When not scaled, an odd edge loses one pixel
    (cropped, not resampled) so the rest of the picture stays untouched.
    """
    short = min(src_w, src_h)
    if resolution is not None and short > tiers.resolutions[resolution]:
        target = tiers.resolutions[resolution]
        if src_w <= src_h:
            return target - target % 2, _even(src_h * target / src_w), True
        return _even(src_w * target / src_h), target - target % 2, True
    return src_w - src_w % 2, src_h - src_h % 2, False


def aspect_size(
    src_w: int, src_h: int, aspect: Fraction, resolution: str | None, tiers: Tiers
) -> tuple[int, int, tuple[int, int, int, int] | None]:
    """The output size of an ``aspect`` output, and the centred crop of the source picture that fills it.

    The crop is the largest even rectangle of the aspect inside the picture (none when the source is at the
    aspect already, within 1 %). The tier sets the output's shorter edge, up or down: the one place the worker
    scales up (a 9:16 crop of a 1080p landscape picture is 608 px wide, and platforms expect 1080x1920).
    Without a tier the crop keeps its own size.
    """
    crop: tuple[int, int, int, int] | None = None
    cw, ch = src_w - src_w % 2, src_h - src_h % 2
    if abs(Fraction(src_w, src_h) / aspect - 1) > Fraction(1, 100):
        if Fraction(src_w, src_h) > aspect:  # wider than asked: full height, a slice of the width
            cw = min(_even(src_h * aspect), src_w - src_w % 2)
        else:  # taller than asked: full width, a band of the height
            ch = min(_even(src_w / aspect), src_h - src_h % 2)
        crop = (cw, ch, (src_w - cw) // 4 * 2, (src_h - ch) // 4 * 2)  # centred, on even pixels (4:2:0)
    if resolution is None:
        return cw, ch, crop
    short = tiers.resolutions[resolution]
    if aspect <= 1:
        return short, _even(short / aspect), crop
    return _even(short * aspect), short, crop


def _source_video_bps(info: SourceInfo) -> int | None:
    if info.video is None:
        return None
    if info.video.bit_rate:
        return info.video.bit_rate
    if info.bit_rate:
        audio = info.audio.bit_rate if info.audio and info.audio.bit_rate else 0
        return max(1, info.bit_rate - audio)
    return None


def decide(info: SourceInfo, spec: OutputSpec, preset: Preset, tiers: Tiers | None = None) -> EncodeSettings:
    """Pick sizes, bitrates and audio layout; raise when the source can't make this format."""
    tiers = tiers or load_tiers()
    if preset.has_video and info.video is None:
        raise SourceError(f"{spec.format} needs a video stream but the source has none", code=ErrorCode.SOURCE_NO_VIDEO)
    if not preset.has_video and info.audio is None:
        raise SourceError(
            f"{spec.format} needs an audio stream but the source has none", code=ErrorCode.SOURCE_NO_AUDIO
        )
    width = height = None
    crop: tuple[int, int, int, int] | None = None
    crop_odd = False
    video_bps = None
    if preset.has_video:
        assert info.video is not None
        dw, dh = info.video.display_width, info.video.display_height
        if spec.aspect is not None:
            width, height, crop = aspect_size(dw, dh, ASPECTS[spec.aspect], spec.resolution, tiers)
            scaled = True  # the crop (or the whole picture) is scaled to the output size where they differ
        else:
            width, height, scaled = output_size(dw, dh, spec.resolution, tiers)
        if min(dw, dh) < MIN_EDGE or min(width, height) < MIN_EDGE:
            # An encoder needs an even picture of at least 2x2; a 1-pixel edge would be cropped to nothing.
            raise SourceError(
                f"the source's picture is {dw}x{dh} (after rotation): {spec.format} needs at least "
                f"{MIN_EDGE} pixels on each side",
                code=ErrorCode.SOURCE_UNREADABLE,
            )
        crop_odd = not scaled and (dw % 2 == 1 or dh % 2 == 1)
        wanted = spec.video_bitrate * 1_000_000 if spec.video_bitrate else tiers.auto_video_bps(min(width, height))
        src_bps = _source_video_bps(info)
        video_bps = min(wanted, src_bps) if src_bps else wanted
        floor = max(MIN_VIDEO_BPS, MIN_VIDEO_BPS * width * height // MIN_VIDEO_BPS_PIXELS)
        video_bps = max(video_bps, min(floor, wanted))

    if info.audio is not None:
        src_rate, src_channels = info.audio.sample_rate, info.audio.channels
        src_abps = info.audio.bit_rate
    else:
        src_rate, src_channels, src_abps = SILENT_RATE, 2, None
    sample_rate = src_rate if src_rate in preset.audio_sample_rates else preset.audio_sample_rates[0]
    channels = src_channels
    downmix = None
    if src_channels > preset.audio_max_channels or src_channels not in (1, 2, 6):
        channels = 2 if src_channels > 1 else 1
        downmix = "stereo" if channels == 2 else "mono"
    wanted_a = (spec.audio_bitrate or tiers.audio_auto_kbps) * 1000
    audio_bps = min(wanted_a, src_abps) if src_abps else wanted_a
    audio_bps = max(audio_bps, min(MIN_AUDIO_BPS, wanted_a))
    return EncodeSettings(
        width=width,
        height=height,
        crop_odd=crop_odd,
        video_bps=video_bps,
        audio_bps=audio_bps,
        sample_rate=sample_rate,
        channels=channels,
        downmix=downmix,
        crop=crop,
    )
