"""Probe a source with PyAV and describe it as a :class:`SourceInfo`.

The probe is also the first line of defence against untrusted uploads. It opens the file under the policy of
:mod:`worker.allowlists` (demuxers, the ``file`` protocol only, decoders and their pixel limit, read bounds),
and on top of it:

* the allowlist applies to the streams a render decodes: once the probe has chosen the video and audio
  stream, every later open (the probe's own, and ffmpeg's) allows exactly their two decoders. Every other
  stream (cover art of any codec, subtitles, data tracks such as ``tmcd`` or GoPro's GPMF, mkv font
  attachments, further video or audio tracks) is listed in :attr:`SourceInfo.ignored` with the reason, is
  never handed to a decoder, and never refuses a file;
* the probe's own work is bounded by a wall-clock budget (:data:`PROBE_BUDGET_S`: open, first frames, packet
  scan), so a crafted file cannot make it spin;
* at least one frame of each stream we rely on must really decode;
* audio must have a channel count and sample rate an encoder can take (see :data:`MAX_AUDIO_CHANNELS`,
  :data:`AUDIO_RATE_RANGE`): a tenant's odd source fails as ``source_unreadable`` here, not later as
  ``encode_failed``.

Times in :class:`SourceInfo` are on the *render timeline*: seconds from the
container's start time. That is the timeline ffmpeg's filters see (the ffmpeg
CLI subtracts the container start time from every stream), and the one a user
sees in a player, so cut plans are expressed in it.

Each stream is placed on that timeline by its real timestamps, not by the
header: its start is the timestamp of its first *decoded* frame (after edit
lists and codec delay: an Opus stream's negative first packet, an AAC track's
priming, an audio track that starts 0.3 s late), and its end is the largest
``pts + duration`` among its last packets. Containers without a duration (a
browser's streamed WebM has none, and no cues) are scanned to the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error

from worker.allowlists import ALLOWED_DECODERS, ALLOWED_DEMUXERS, STILL_IMAGE_DECODERS, decoder_options, input_options
from worker.errors import ErrorCode, SourceError
from worker.settings import default_of

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


# Packets looked at for VFR detection and keyframe spacing: enough to see a few
# GOPs and any irregular cadence, cheap even for multi-hour sources.
_SCAN_PACKETS = 1800
# The ends of the streams are read from the packets of the last seconds of an
# indexed file (a B-frame or audio packet may end after the last one by pts).
_TAIL_SCAN_S = 10.0
# Frame rates recorders write; a VFR source is rendered at the one nearest its
# cadence (a phone "30 fps" video averages 29.4 under load, and must still come
# out at 30, not at 17906/597).
STANDARD_RATES: tuple[Fraction, ...] = (
    Fraction(24000, 1001),
    Fraction(24),
    Fraction(25),
    Fraction(30000, 1001),
    Fraction(30),
    Fraction(50),
    Fraction(60000, 1001),
    Fraction(60),
)
# How far (relative) a measured cadence may be from a standard rate to snap to it.
_SNAP_TOLERANCE = 0.015

# Transfer characteristics (ffmpeg's AVColorTransferCharacteristic) of HDR video.
TRC_PQ = 16  # SMPTE ST 2084
TRC_HLG = 18  # ARIB STD-B67
_TRC_NAMES = {1: "bt709", 6: "smpte170m", 13: "iec61966-2-1", 14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084",
              18: "arib-std-b67"}  # fmt: skip
_PRIMARIES_NAMES = {1: "bt709", 5: "bt470bg", 6: "smpte170m", 9: "bt2020", 12: "smpte432"}
_MATRIX_NAMES = {0: "gbr", 1: "bt709", 5: "bt470bg", 6: "smpte170m", 9: "bt2020nc", 10: "bt2020c"}


def nominal_rate(declared: Fraction | None, cadence: Fraction | None, is_vfr: bool) -> Fraction:
    """The frame rate a source is rendered at.

    ``cadence`` is measured from the timestamps (frames per second, with a
    dropped frame counted as the slots it leaves empty); ``declared`` is the
    container's rate. CFR material keeps its declared rate (exactly 30000/1001,
    where the average may be a rounded ratio). VFR material gets the standard
    rate nearest its cadence, or its declared rate when that is close and no
    standard rate is; a timestamp grid that is none of these keeps the measured
    cadence.
    """
    if not is_vfr and declared and (cadence is None or abs(declared / cadence - 1) < _SNAP_TOLERANCE):
        return declared.limit_denominator(1001)
    measured = cadence or declared or Fraction(30)
    best = min(STANDARD_RATES, key=lambda r: abs(r / measured - 1))
    if abs(best / measured - 1) < _SNAP_TOLERANCE:
        return best
    if declared and abs(declared / measured - 1) < _SNAP_TOLERANCE:
        return declared.limit_denominator(1001)
    return measured.limit_denominator(1001)


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    index: int
    codec: str
    width: int  # as stored
    height: int
    rotation: int  # degrees, from the display matrix (0, 90, 180, 270)
    avg_rate: Fraction
    rate: Fraction  # the nominal rate: the frame grid the render uses (see nominal_rate)
    is_vfr: bool
    bit_rate: int | None
    keyframe_interval_s: float | None
    start: float  # first frame on the render timeline
    duration: float  # from the first frame to the end of the last one
    pix_fmt: str | None
    color_trc: str | None = None  # transfer characteristics, ffmpeg's names ("smpte2084", "arib-std-b67", ...)
    color_primaries: str | None = None
    colorspace: str | None = None  # the YUV matrix

    @property
    def is_hdr(self) -> bool:
        """PQ or HLG: pictures that need tone mapping to look right as SDR BT.709."""
        return self.color_trc in ("smpte2084", "arib-std-b67")

    @property
    def display_width(self) -> int:
        return self.height if self.rotation in (90, 270) else self.width

    @property
    def display_height(self) -> int:
        return self.width if self.rotation in (90, 270) else self.height


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


@dataclasses.dataclass(frozen=True)
class IgnoredStream:
    """A stream the render does not use, and why: it is never decoded and never refuses the file."""

    index: int
    type: str  # PyAV's stream type: "video", "audio", "subtitle", "data", "attachment", ...
    codec: str | None  # the codec's name (ffmpeg's codec descriptor), where the container names one
    reason: str


@dataclasses.dataclass(frozen=True)
class CoverInfo:
    """The source's cover art (an attached picture), copied into m4a and mp3 outputs packet for packet."""

    index: int
    codec: str  # "mjpeg" or "png" (:data:`worker.allowlists.COVER_CODECS`), or another, which outputs drop with a note


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
    ignored: tuple[IgnoredStream, ...] = ()
    cover: CoverInfo | None = None

    @property
    def decoders(self) -> tuple[str, ...]:
        """The decoders a render of this source runs: those of the chosen video and audio stream, no other."""
        return tuple(dict.fromkeys(s.codec for s in (self.video, self.audio) if s is not None))

    def to_dict(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, Fraction):
                return f"{v.numerator}/{v.denominator}"
            return v

        out = dataclasses.asdict(self)
        out["ignored"] = [dataclasses.asdict(s) for s in self.ignored]
        for key in ("video", "audio"):
            if out[key] is not None:
                out[key] = {k: conv(v) for k, v in out[key].items()}
        if self.video is not None:
            out["video"]["display_width"] = self.video.display_width
            out["video"]["display_height"] = self.video.display_height
            out["video"]["rate_float"] = float(self.video.rate)
            out["video"]["end"] = self.video.start + self.video.duration
            out["video"]["hdr"] = self.video.is_hdr
        if self.audio is not None:
            out["audio"]["end"] = self.audio.start + self.audio.duration
        return out


def _unreadable(path: str, why: str) -> SourceError:
    return SourceError(f"{Path(path).name}: {why}", code=ErrorCode.SOURCE_UNREADABLE)


def _codec_name(stream: Any) -> str | None:
    """The codec a stream holds, by the container's word (no decoder is opened for it)."""
    try:
        name = stream.codec_context.name if stream.codec_context is not None else None
    except (AttributeError, ValueError, av.error.FFmpegError):
        name = None
    return str(name)[:32] if name else None


def _ignored_streams(
    container: Any, v_index: int | None, a_index: int | None
) -> tuple[tuple[IgnoredStream, ...], CoverInfo | None]:
    """Every stream but the chosen video and audio, with why it is left alone; and the cover art, if any."""
    ignored: list[IgnoredStream] = []
    cover: CoverInfo | None = None
    for stream in container.streams:
        if stream.index in (v_index, a_index):
            continue
        kind = str(stream.type)
        codec = _codec_name(stream)
        if kind == "video" and stream.disposition & av.stream.Disposition.attached_pic:
            reason = "attached picture (cover art): copied into m4a and mp3 outputs, never decoded"
            if cover is None:
                cover = CoverInfo(stream.index, codec or "unknown")
            else:
                reason = "another attached picture: only the first is kept"
        elif kind == "video":
            reason = "another video stream: the first one is rendered"
        elif kind == "audio":
            reason = "another audio stream: the default one is rendered"
        elif kind == "subtitle":
            reason = "subtitles: a cut would put them out of place"
        elif kind == "data":
            reason = "data track (timecode, sensor or app metadata)"
        elif kind == "attachment":
            reason = "attachment (fonts or files in the container)"
        else:
            reason = "a stream of a kind no output carries"
        ignored.append(IgnoredStream(stream.index, kind, codec, reason))
    return tuple(ignored), cover


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


def _stream_duration(stream: Any) -> float | None:
    """The duration the header declares for a stream, when it declares one."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    return None


def _too_large(path: str, width: int, height: int, max_pixels: int) -> SourceError:
    return SourceError(
        f"{Path(path).name}: frames are {width}x{height}, over the limit of {max_pixels} pixels",
        code=ErrorCode.SOURCE_TOO_LARGE,
    )


def _check_time(path: str, deadline: float) -> None:
    if time.monotonic() > deadline:
        raise _unreadable(path, "probing took too long (the file is damaged or crafted)")


def _prepare_decoder(container: Any, stream: Any, max_pixels: int, decoders: tuple[str, ...]) -> None:
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
    ctx.options = decoder_options(max_pixels, decoders)
    # One frame is decoded: frame threads would only multiply per-thread
    # tables, whose size follows the stream's declared dimensions.
    ctx.thread_count = 1


def _first_frame(container: Any, stream: Any, max_pixels: int, deadline: float, decoders: tuple[str, ...]) -> Any:
    """Decode until one frame of ``stream`` comes out, or raise SourceError.

    ``container`` must be freshly opened: reading from the very first packet
    (never seeking to 0) keeps packets with negative timestamps, such as
    Opus's pre-skip in WebM, which decide where the first sample really is.
    """
    _prepare_decoder(container, stream, max_pixels, decoders)
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


@dataclasses.dataclass(frozen=True)
class _Cadence:
    is_vfr: bool
    key_interval: float | None
    rate: Fraction | None  # frames per second measured from the timestamps (slots, counting drops)


def _scan_video_packets(container: Any, stream: Any, deadline: float) -> _Cadence:
    """Look at the first packets: is the cadence variable, what is it, how far apart are keyframes?"""
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
    tb = stream.time_base
    pts.sort()
    deltas = [b - a for a, b in zip(pts, pts[1:], strict=False) if b > a]
    is_vfr = False
    rate = None
    if len(deltas) >= 2:
        lo, hi = min(deltas), max(deltas)
        # Timestamps rounded to the time base jitter by one tick on CFR material.
        is_vfr = (hi - lo) * float(tb) > 0.002 and hi > lo + 1
        # The cadence: time over the slots it covers. A gap of about k intervals
        # (dropped frames) is k slots, and jitter averages out over the scan.
        # The interval starts as the average (too long when frames were
        # dropped) and is refined from the slot count until it settles; the
        # median would not do, as jittered intervals are not symmetric about it.
        span = pts[-1] - pts[0]
        interval = Fraction(span, len(deltas))
        slots = len(deltas)
        for _ in range(8):
            slots = sum(max(1, round(d / interval)) for d in deltas)
            if Fraction(span, slots) == interval:
                break
            interval = Fraction(span, slots)
        rate = Fraction(slots) / (span * tb)
    key_interval = None
    if len(keys) >= 2:
        key_interval = float((keys[-1] - keys[0]) * tb) / (len(keys) - 1)
    return _Cadence(is_vfr, key_interval, rate)


def _stream_ends(container: Any, deadline: float) -> dict[int, float]:
    """Seconds (stream timestamps) at which each stream's last packet ends, by stream index.

    An indexed file is read from a few seconds before its declared end; a file
    without a duration (streamed WebM) is read whole, packets only (no
    decoding), within the probe's budget. A read error ends the scan: what was
    seen so far stands, and a source shorter than its index is caught by the
    render's own check of the output.
    """
    ends: dict[int, float] = {}
    if container.duration and container.duration > 0:
        start = container.start_time or 0
        target = start + container.duration - int(_TAIL_SCAN_S * 1_000_000)
        if target > start:
            # On failure, read from wherever the demuxer is.
            with contextlib.suppress(av.error.FFmpegError):
                container.seek(target, backward=True, any_frame=False)
    try:
        for packet in container.demux():
            _check_time(container.name, deadline)
            if packet.pts is None or packet.stream.time_base is None:
                continue
            end = float((packet.pts + (packet.duration or 0)) * packet.stream.time_base)
            if end > ends.get(packet.stream.index, float("-inf")):
                ends[packet.stream.index] = end
    except av.error.FFmpegError:
        pass
    return ends


def _colour_name(names: dict[int, str], value: Any) -> str | None:
    """ffmpeg's name of a colour property (PyAV gives the enum's number); None when unspecified."""
    if value is None:
        return None
    return names.get(int(value))


def _check_audio(path: str, sample_rate: int, channels: int) -> None:
    lo, hi = AUDIO_RATE_RANGE
    if not lo <= sample_rate <= hi:
        raise _unreadable(path, f"audio sample rate {sample_rate} Hz is outside the supported {lo}..{hi} Hz")
    if not 1 <= channels <= MAX_AUDIO_CHANNELS:
        raise _unreadable(path, f"audio has {channels} channels; at most {MAX_AUDIO_CHANNELS} (7.1) can be rendered")


def probe(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = default_of("max_source_pixels"),
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
    opens = 0

    # The first open, which finds the streams, may open any allowed decoder but a still picture's; every
    # later one only the chosen streams' decoders.
    decoders = tuple(d for d in ALLOWED_DECODERS if d not in STILL_IMAGE_DECODERS)

    def open_source() -> Any:
        # ``options`` reach the demuxer and the decoders find_stream_info opens;
        # the timeout interrupts any single open or read that runs past the budget.
        # Each scan gets a fresh container rather than a seek back to 0: a seek
        # to 0 skips packets with negative timestamps.
        nonlocal opens
        opens += 1
        try:
            return av.open(spath, options=input_options(max_pixels, decoders), timeout=(budget_s, budget_s))
        except av.error.FFmpegError as exc:
            _check_time(spath, deadline)  # an open cut short by the budget says so
            why = "not a media file of an allowed container format" if opens == 1 else "cannot be read again"
            raise _unreadable(spath, f"{why} ({exc.strerror})") from exc

    container = open_source()
    with container:
        fmt = container.format.name
        try:
            demuxer = _demuxer_name(fmt)
        except ValueError as exc:
            raise _unreadable(spath, f"container format {fmt!r} is not allowed") from exc
        c_start = (container.start_time or 0) / 1_000_000
        c_duration = (container.duration or 0) / 1_000_000
        vstreams = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
        v_index = vstreams[0].index if vstreams else None
        astream = _pick_audio(container)
        a_index = astream.index if astream is not None else None
        audio_stream_count = len(container.streams.audio)
        bit_rate = container.bit_rate or None
        ignored, cover = _ignored_streams(container, v_index, a_index)
        chosen = [container.streams[i] for i in (v_index, a_index) if i is not None]
        decoders = tuple(s.codec_context.name for s in chosen if s.codec_context is not None)
        ends = _stream_ends(container, deadline)
    if v_index is None and a_index is None:
        raise _unreadable(spath, "no video or audio stream")

    def stream_end(stream: Any, start: float) -> float:
        """End of a stream on the render timeline: its last packet, else its header, else the container's."""
        if stream.index in ends:
            return ends[stream.index] - c_start
        declared = _stream_duration(stream)
        if declared is not None:
            return start + declared
        return c_duration

    video = None
    if v_index is not None:
        with open_source() as container:
            vs = container.streams[v_index]
            frame = _first_frame(container, vs, max_pixels, deadline, decoders)
            # (+ 0.0 turns the -0.0 of "0 - 0.0" into 0.0 for the JSON the CLI prints)
            v_start = (float(frame.pts * vs.time_base) if frame.pts is not None else 0.0) - c_start + 0.0
        with open_source() as container:
            vs = container.streams[v_index]
            cadence = _scan_video_packets(container, vs, deadline)
            avg = Fraction(vs.average_rate or vs.guessed_rate or 30)
            declared = Fraction(vs.guessed_rate) if vs.guessed_rate else None
            rate = nominal_rate(declared, cadence.rate, cadence.is_vfr)
            if rate <= 0 or rate > 240:
                raise _unreadable(spath, f"implausible frame rate {float(rate):.3f}")
            rotation = int(getattr(frame, "rotation", 0) or 0) % 360
            ctx = vs.codec_context
            video = VideoInfo(
                index=vs.index,
                codec=ctx.name,
                width=ctx.width,
                height=ctx.height,
                rotation=rotation,
                avg_rate=avg,
                rate=rate,
                is_vfr=cadence.is_vfr,
                bit_rate=vs.bit_rate or None,
                keyframe_interval_s=cadence.key_interval,
                start=v_start,
                duration=max(stream_end(vs, v_start) - v_start, 1 / float(rate)),
                pix_fmt=ctx.pix_fmt,
                # The decoded frame's own tags: the bitstream's, where the container has none.
                color_trc=_colour_name(_TRC_NAMES, frame.color_trc),
                color_primaries=_colour_name(_PRIMARIES_NAMES, frame.color_primaries),
                colorspace=_colour_name(_MATRIX_NAMES, frame.colorspace),
            )

    audio = None
    if a_index is not None:
        with open_source() as container:
            astream = container.streams[a_index]
            aframe = _first_frame(container, astream, max_pixels, deadline, decoders)
            a_start = (float(aframe.pts * astream.time_base) if aframe.pts is not None else 0.0) - c_start + 0.0
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
                duration=max(0.0, stream_end(astream, a_start) - a_start),
            )

    # The source lasts until its last stream ends, whatever its header says (a
    # streamed WebM says nothing).
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
        bit_rate=bit_rate,
        video=video,
        audio=audio,
        audio_stream_count=audio_stream_count,
        ignored=ignored,
        cover=cover,
    )
