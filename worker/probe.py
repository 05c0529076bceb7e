"""Probe a source with PyAV and describe it as a :class:`SourceInfo`.

The probe is also the first line of defence against untrusted uploads:

* only an allowlist of demuxers may open the file (``format_whitelist``), so a
  playlist (HLS, ffconcat, ...) disguised as ``.mp4`` is refused *before* its
  header is parsed, which is the moment such demuxers would open other files;
* only the ``file`` protocol is allowed, so nothing can reach the network;
* only an allowlist of decoders may run (``codec_whitelist``), and every decoder
  refuses frames over the pixel limit (``max_pixels``): a stream whose first
  frame is 16x16 and whose next one is 16000x16000 cannot make us allocate it;
* the probe's own work is bounded: bytes and time read to find the streams
  (``probesize``, ``analyzeduration``), the number of streams, and a wall-clock
  budget for the whole probe, so a crafted file cannot make it spin;
* at least one frame of each stream we rely on must really decode;
* audio must have a channel count and sample rate an encoder can take (see
  :data:`MAX_AUDIO_CHANNELS`, :data:`AUDIO_RATE_RANGE`): a tenant's odd source
  fails as ``source_unreadable`` here, not later as ``encode_failed``.

ffmpeg gets the same allowlists and bounds from :func:`input_options`, so the
probe and the render look at a source through the same restrictions.

Times in :class:`SourceInfo` are on the *render timeline*: seconds from the
container's start time. That is the timeline ffmpeg's filters see (the ffmpeg
CLI subtracts the container start time from every stream), and the one a user
sees in a player, so cut plans are expressed in it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error

from worker.errors import ErrorCode, SourceError
from worker.settings import Settings

# Demuxers a source may be opened with. Names are ffmpeg's demuxer names; the
# mov demuxer answers to all of "mov,mp4,m4a,3gp,3g2,mj2".
ALLOWED_DEMUXERS: tuple[str, ...] = (
    "mov",
    "mp4",
    "m4a",
    "3gp",
    "3g2",
    "mj2",
    "matroska",
    "webm",
    "mp3",
    "wav",
    "aac",
    "flac",
    "ogg",
)
FORMAT_WHITELIST = ",".join(ALLOWED_DEMUXERS)
PROTOCOL_WHITELIST = "file"

# Decoders a source may use: what cameras, phones, screen recorders, browsers
# and podcast tools write for a talking-head video or a podcast. Names are
# ffmpeg's *decoder* names (``ffmpeg -decoders``), which are what
# ``codec_whitelist`` matches: mp3 is decoded by ``mp3float``, AV1 by
# ``libdav1d`` where the build has it. Everything else (image formats, game and
# legacy codecs, the many exotic decoders a static ffmpeg ships) is refused,
# which keeps a tenant's bytes away from the least-exercised decoder code.
ALLOWED_DECODERS: tuple[str, ...] = (
    # video
    "h264",
    "hevc",
    "vp8",
    "vp9",
    "libdav1d",
    "av1",
    "mpeg4",
    "prores",
    "mjpeg",
    # audio
    "aac",
    "aac_fixed",
    "mp3float",
    "mp3",
    "opus",
    "vorbis",
    "flac",
    "alac",
    "ac3",
    "ac3_fixed",
    "eac3",
    "pcm_s16le",
    "pcm_s16be",
    "pcm_s24le",
    "pcm_s24be",
    "pcm_s32le",
    "pcm_s32be",
    "pcm_f32le",
    "pcm_f32be",
    "pcm_f64le",
    "pcm_f64be",
    "pcm_u8",
    "pcm_s8",
    "pcm_alaw",
    "pcm_mulaw",
)
CODEC_WHITELIST = ",".join(ALLOWED_DECODERS)

# Bounds on what opening a file may read before the streams are known
# (ffmpeg's find_stream_info): bytes, and microseconds of media. These are
# ffmpeg's usual magnitudes, stated so that no build default can widen them.
PROBESIZE = 10_000_000
ANALYZEDURATION_US = 10_000_000
# A talking-head source has a handful of streams; a crafted one may declare
# thousands, each with its own decoder during find_stream_info.
MAX_STREAMS = 64
# Wall-clock budget for one whole probe (open, first frames, packet scan).
PROBE_BUDGET_S = 30.0

# Audio a render can take. More channels than 7.1 have no layout the
# resampler can downmix from (ffmpeg: "Rematrix is needed between 64 channels
# and stereo but there is not enough information to do it"), so such a source
# is refused by name rather than guessed at. Sample rates outside this range
# are not real recordings (8 kHz is telephony, 384 kHz the highest rate studio
# gear writes); a header claiming 2^31 Hz is a crafted or corrupt file.
MAX_AUDIO_CHANNELS = 8
AUDIO_RATE_RANGE = (8_000, 384_000)


def decoder_options(max_pixels: int) -> dict[str, str]:
    """AVCodecContext options every decoder of a tenant's source is opened with."""
    return {"codec_whitelist": CODEC_WHITELIST, "max_pixels": str(max_pixels)}


def input_options(max_pixels: int) -> dict[str, str]:
    """Every option an input is opened with, by ffmpeg option name (probe and render alike)."""
    return {
        "protocol_whitelist": PROTOCOL_WHITELIST,
        "format_whitelist": FORMAT_WHITELIST,
        "probesize": str(PROBESIZE),
        "analyzeduration": str(ANALYZEDURATION_US),
        "max_streams": str(MAX_STREAMS),
        **decoder_options(max_pixels),
    }


# Packets looked at for VFR detection and keyframe spacing: enough to see a few
# GOPs and any irregular cadence, cheap even for multi-hour sources.
_SCAN_PACKETS = 1800


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    index: int
    codec: str
    width: int  # as stored
    height: int
    rotation: int  # degrees, from the display matrix (0, 90, 180, 270)
    avg_rate: Fraction
    rate: Fraction  # the frame grid the render uses (CFR rate, or the average for VFR)
    is_vfr: bool
    bit_rate: int | None
    keyframe_interval_s: float | None
    start: float  # first frame on the render timeline
    duration: float
    pix_fmt: str | None

    @property
    def display_width(self) -> int:
        return self.height if self.rotation in (90, 270) else self.width

    @property
    def display_height(self) -> int:
        return self.width if self.rotation in (90, 270) else self.height

    @property
    def frame_count(self) -> int:
        """Frames on the grid from the first frame to the end of the stream."""
        return max(1, round(self.duration * self.rate))


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    index: int
    codec: str
    sample_rate: int
    channels: int
    layout: str
    bit_rate: int | None
    start: float
    duration: float

    @property
    def sample_count(self) -> int:
        return round(self.duration * self.sample_rate)


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    path: str
    format_name: str  # the demuxer that opened it, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    demuxer: str  # the single name passed to ffmpeg's -f
    size_bytes: int
    duration: float
    bit_rate: int | None
    video: VideoInfo | None
    audio: AudioInfo | None
    audio_stream_count: int

    def to_dict(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, Fraction):
                return f"{v.numerator}/{v.denominator}"
            return v

        out = dataclasses.asdict(self)
        for key in ("video", "audio"):
            if out[key] is not None:
                out[key] = {k: conv(v) for k, v in out[key].items()}
        if self.video is not None:
            out["video"]["display_width"] = self.video.display_width
            out["video"]["display_height"] = self.video.display_height
            out["video"]["rate_float"] = float(self.video.rate)
        return out


def _unreadable(path: str, why: str) -> SourceError:
    return SourceError(f"{Path(path).name}: {why}", code=ErrorCode.SOURCE_UNREADABLE)


def _demuxer_name(format_name: str) -> str:
    for name in format_name.split(","):
        if name in ALLOWED_DEMUXERS:
            return name
    raise ValueError(format_name)


def _pick_audio(container: Any) -> Any | None:
    """The default audio stream, else the first one (DESIGN: "the default one is used")."""
    streams = list(container.streams.audio)
    if not streams:
        return None
    for s in streams:
        if s.disposition & av.stream.Disposition.default:
            return s
    return streams[0]


def _stream_duration(stream: Any, container_duration: float, start: float) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return max(0.0, container_duration - start)


def _too_large(path: str, width: int, height: int, max_pixels: int) -> SourceError:
    return SourceError(
        f"{Path(path).name}: frames are {width}x{height}, over the limit of {max_pixels} pixels",
        code=ErrorCode.SOURCE_TOO_LARGE,
    )


def _check_time(path: str, deadline: float) -> None:
    if time.monotonic() > deadline:
        raise _unreadable(path, "probing took too long (the file is damaged or crafted)")


def _prepare_decoder(container: Any, stream: Any, max_pixels: int) -> None:
    """Refuse a stream whose decoder or declared size is not allowed; bound the decoder."""
    ctx = stream.codec_context
    if ctx is None:
        raise _unreadable(container.name, f"stream #{stream.index} has a codec this worker cannot decode")
    if ctx.name not in ALLOWED_DECODERS:
        raise _unreadable(container.name, f"stream #{stream.index} uses the {ctx.name} decoder, which is not allowed")
    if stream.type == "video" and ctx.width * ctx.height > max_pixels:
        # Checked before opening: avcodec_open2 itself refuses such a size,
        # with an EINVAL that would not say why.
        raise _too_large(container.name, ctx.width, ctx.height, max_pixels)
    ctx.options = decoder_options(max_pixels)
    # One frame is decoded: frame threads would only multiply per-thread
    # tables, whose size follows the stream's declared dimensions.
    ctx.thread_count = 1


def _first_frame(container: Any, stream: Any, max_pixels: int, deadline: float) -> Any:
    """Decode until one frame of ``stream`` comes out, or raise SourceError."""
    _prepare_decoder(container, stream, max_pixels)
    container.seek(0, any_frame=False, backward=True, stream=None)
    try:
        for packet in container.demux(stream):
            _check_time(container.name, deadline)
            for frame in packet.decode():
                return frame
    except av.error.FFmpegError as exc:
        ctx = stream.codec_context
        if stream.type == "video" and ctx.width * ctx.height > max_pixels:
            # The bitstream changed size after the header (the decoder refused the frame).
            raise _too_large(container.name, ctx.width, ctx.height, max_pixels) from exc
        why = exc.strerror or type(exc).__name__
        raise _unreadable(container.name, f"stream #{stream.index} does not decode ({why})") from exc
    raise _unreadable(container.name, f"stream #{stream.index} has no decodable frames")


def _scan_video_packets(container: Any, stream: Any, deadline: float) -> tuple[bool, float | None, int]:
    """Look at the first packets: is the cadence variable, and how far apart are keyframes?"""
    container.seek(0, any_frame=False, backward=True, stream=None)
    pts: list[int] = []
    keys: list[int] = []
    try:
        for packet in container.demux(stream):
            _check_time(container.name, deadline)
            if packet.pts is None:
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
            if len(pts) >= _SCAN_PACKETS:
                break
    except av.error.FFmpegError:
        pass  # a damaged tail is found by the render itself; the head is what we scan
    tb = float(stream.time_base)
    pts.sort()
    deltas = [b - a for a, b in zip(pts, pts[1:], strict=False) if b > a]
    is_vfr = False
    if len(deltas) >= 2:
        lo, hi = min(deltas), max(deltas)
        # Timestamps rounded to the time base jitter by one tick on CFR material.
        is_vfr = (hi - lo) * tb > 0.002 and hi > lo + 1
    key_interval = None
    if len(keys) >= 2:
        key_interval = (keys[-1] - keys[0]) * tb / (len(keys) - 1)
    return is_vfr, key_interval, len(pts)


def _check_audio(path: str, sample_rate: int, channels: int) -> None:
    lo, hi = AUDIO_RATE_RANGE
    if not lo <= sample_rate <= hi:
        raise _unreadable(path, f"audio sample rate {sample_rate} Hz is outside the supported {lo}..{hi} Hz")
    if not 1 <= channels <= MAX_AUDIO_CHANNELS:
        raise _unreadable(path, f"audio has {channels} channels; at most {MAX_AUDIO_CHANNELS} (7.1) can be rendered")


def probe(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = Settings.max_source_pixels,
    budget_s: float = PROBE_BUDGET_S,
) -> SourceInfo:
    """Describe ``path``; raise :class:`SourceError` when it cannot be rendered.

    ``max_pixels`` bounds every frame the probe decodes (RENDER_MAX_SOURCE_PIXELS);
    ``budget_s`` bounds the probe's wall-clock time.
    """
    deadline = time.monotonic() + budget_s
    spath = os.fspath(path)
    try:
        size = os.path.getsize(spath)
    except FileNotFoundError as exc:
        raise SourceError(f"{spath}: no such file", code=ErrorCode.SOURCE_NOT_FOUND) from exc
    if size == 0:
        raise _unreadable(spath, "the file is empty")
    try:
        # ``options`` reach the demuxer and the decoders find_stream_info opens;
        # the timeout interrupts any single open or read that runs past the budget.
        container = av.open(spath, options=input_options(max_pixels), timeout=(budget_s, budget_s))
    except av.error.FFmpegError as exc:
        _check_time(spath, deadline)  # an open cut short by the budget says so
        raise _unreadable(spath, f"not a media file of an allowed container format ({exc.strerror})") from exc
    with container:
        fmt = container.format.name
        try:
            demuxer = _demuxer_name(fmt)
        except ValueError as exc:
            raise _unreadable(spath, f"container format {fmt!r} is not allowed") from exc
        c_start = (container.start_time or 0) / 1_000_000
        c_duration = (container.duration or 0) / 1_000_000

        video = None
        vstreams = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
        if vstreams:
            vs = vstreams[0]
            frame = _first_frame(container, vs, max_pixels, deadline)
            v_start = (float(frame.pts * vs.time_base) if frame.pts is not None else 0.0) - c_start
            is_vfr, key_interval, _ = _scan_video_packets(container, vs, deadline)
            avg = Fraction(vs.average_rate or vs.guessed_rate or 30)
            guessed = Fraction(vs.guessed_rate or avg)
            # For CFR material the container's nominal rate is exact (30000/1001);
            # the average can be a rounded ratio. For VFR the average is the grid.
            rate = avg.limit_denominator(1001) if is_vfr else guessed.limit_denominator(1001)
            if rate <= 0 or rate > 240:
                raise _unreadable(spath, f"implausible frame rate {float(rate):.3f}")
            rotation = int(getattr(frame, "rotation", 0) or 0) % 360
            duration = _stream_duration(vs, c_duration, v_start) - max(0.0, v_start)
            video = VideoInfo(
                index=vs.index,
                codec=vs.codec_context.name,
                width=vs.codec_context.width,
                height=vs.codec_context.height,
                rotation=rotation,
                avg_rate=avg,
                rate=rate,
                is_vfr=is_vfr,
                bit_rate=vs.bit_rate or None,
                keyframe_interval_s=key_interval,
                start=v_start,
                duration=max(duration, 1 / float(rate)),
                pix_fmt=vs.codec_context.pix_fmt,
            )

        audio = None
        astream = _pick_audio(container)
        if astream is not None:
            aframe = _first_frame(container, astream, max_pixels, deadline)
            a_start = (float(aframe.pts * astream.time_base) if aframe.pts is not None else 0.0) - c_start
            layout = aframe.layout.name if aframe.layout is not None else ""
            sample_rate = aframe.sample_rate or astream.codec_context.sample_rate
            channels = len(aframe.layout.channels) if aframe.layout is not None else astream.codec_context.channels
            _check_audio(spath, sample_rate, channels)
            audio = AudioInfo(
                index=astream.index,
                codec=astream.codec_context.name,
                sample_rate=sample_rate,
                channels=channels,
                layout=layout,
                bit_rate=astream.bit_rate or None,
                start=a_start,
                duration=_stream_duration(astream, c_duration, a_start) - max(0.0, a_start),
            )

        if video is None and audio is None:
            raise _unreadable(spath, "no video or audio stream")
        duration = c_duration
        if duration <= 0:
            duration = max(
                (video.start + video.duration) if video else 0.0,
                (audio.start + audio.duration) if audio else 0.0,
            )
        return SourceInfo(
            path=spath,
            format_name=fmt,
            demuxer=demuxer,
            size_bytes=size,
            duration=duration,
            bit_rate=container.bit_rate or None,
            video=video,
            audio=audio,
            audio_stream_count=len(container.streams.audio),
        )
