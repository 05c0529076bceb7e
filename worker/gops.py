"""The source's GOP structure, for smart render (worker/smart.py): where a copy of the source's own packets can
start and end, and what its parameter sets are.

A demux of the video packets, nothing decoded (PyAV). A copy may start only at an **IDR** frame that closes
its GOP: every packet before it in decode order shows before it, every packet from it on shows at or after it,
and nothing after it refers to anything before it (an IDR empties the decoder's reference buffer). An I-frame
that is only a recovery point (an *open* GOP: x264's ``open-gop``, many cameras) is not a start: the B-frames
that follow it in decode order may show before it and refer to the GOP before, so a copy from there would
break them. Such a stream simply has fewer places to copy from, and where it has none the render re-encodes.

Every packet must sit on the source's frame grid (CFR), so its output time is exact; the frames must be
numbered 0..N-1 with no gap and no repeat. And the stream must keep the one SPS of its ``avcC`` (the one the
probe read the picture size from, and held to the pixel limit): a parameter set in a packet that is not
byte for byte one of the ``avcC``'s could change the picture mid-stream (a crafted file grows its frames past
the limit that way), and a copy decodes nothing that would notice. Anything else is a
:attr:`GopIndex.problem`, and the render takes today's path, where the decoder holds every frame to the limit.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from fractions import Fraction
from typing import Any

from worker.allowlists import input_options
from worker.probe import SourceInfo

#: How far (in frames) a packet's time may sit off the frame grid and still count as on it: a time base of
#: milliseconds (Matroska) rounds 30000/1001 fps frames by up to 0.015 of a frame.
GRID_TOLERANCE = Fraction(1, 8)
#: avcC profile_idc values whose streams an x264 encode can match (Baseline, Main, High); 10-bit, 4:2:2
#: and 4:4:4 profiles are never copied (every output is 8-bit 4:2:0).
PROFILES = {66: "baseline", 77: "main", 100: "high"}


@dataclasses.dataclass(frozen=True)
class GopIndex:
    """Where copies can start, frames counted from the stream's first frame (its grid unit 0)."""

    frames: int
    #: Frames that start a closed GOP at an IDR frame, ascending.
    starts: tuple[int, ...]
    #: The most a packet comes before its display slot in decode order (0 without B-frames).
    delay: int
    #: The stream's SPS and PPS NAL units from its avcC, each with a 4-byte length: put in front of every
    #: copied IDR frame, so a decoder that starts (or seeks) there has them whatever came before.
    parameter_sets: bytes
    profile: str | None  # x264's name for the stream's profile, when it is one an encode can match
    level: int  # level_idc: 31 is level 3.1
    problem: str | None = None  # why nothing of this stream can be copied (None: copies may start at starts)


@dataclasses.dataclass(frozen=True)
class _Avcc:
    profile_idc: int
    level_idc: int
    length_size: int  # bytes of each NAL unit's length in the packets
    sets: frozenset[bytes]  # its SPS and PPS NAL units
    prefix: bytes  # the same, each with a 4-byte length, SPS first


def _avcc(extradata: bytes) -> _Avcc | str:
    """The ``avcC`` of an H.264 stream, or why its packets are not copied."""
    if len(extradata) < 7 or extradata[0] != 1:
        return "its H.264 is in Annex B form (no avcC), which is not copied"
    out = bytearray()
    nals: list[bytes] = []
    pos = 5
    try:
        for count_mask in (0x1F, 0xFF):  # SPS count (5 bits), then PPS count (8 bits)
            count = extradata[pos] & count_mask
            pos += 1
            if count_mask == 0x1F and count != 1:
                return f"its avcC holds {count} SPS (one picture size is copied, the probe's)"
            for _ in range(count):
                size = int.from_bytes(extradata[pos : pos + 2], "big")
                nal = extradata[pos + 2 : pos + 2 + size]
                if len(nal) != size or size == 0:
                    return "its avcC is truncated"
                nals.append(nal)
                out += size.to_bytes(4, "big") + nal
                pos += 2 + size
    except IndexError:
        return "its avcC is truncated"
    return _Avcc(extradata[1], extradata[3], (extradata[4] & 3) + 1, frozenset(nals), bytes(out))


def _nal_check(data: memoryview, avcc: _Avcc) -> bool | str:
    """Whether a packet (length-prefixed NAL units) holds an IDR slice (NAL unit type 5); or why it must not be
    copied (a parameter set of its own, or a NAL unit that runs past the packet)."""
    pos, end, n, idr = 0, len(data), avcc.length_size, False
    while pos + n < end:
        size = int.from_bytes(data[pos : pos + n], "big")
        if size == 0 or pos + n + size > end:
            return "a packet's NAL units run past its end"
        kind = data[pos + n] & 0x1F
        if kind in (7, 8) and bytes(data[pos + n : pos + n + size]) not in avcc.sets:
            return "it changes its parameter sets mid-stream (a new SPS or PPS in its packets)"
        idr = idr or kind == 5
        pos += n + size
    return idr


def scan(info: SourceInfo, *, max_pixels: int) -> GopIndex:
    """The GOP index of ``info``'s video (an H.264 stream): one pass over its packets, in decode order.

    Kept for the file as it is (path, size, modification time): every part of a chunked render plans again,
    and a worker process that takes several parts of one render reads the source's packets once.
    """
    assert info.video is not None
    try:
        stat = os.stat(info.path)
    except OSError:  # not a local file (a URL the input allowlist refuses): read, and fail, as the probe does
        return _read(info, max_pixels=max_pixels)
    return _cached((info.path, stat.st_size, stat.st_mtime_ns, info.video.index), max_pixels, info)


@functools.lru_cache(maxsize=4)
def _cached(key: tuple[str, int, int, int], max_pixels: int, info: SourceInfo) -> GopIndex:
    return _read(info, max_pixels=max_pixels)


def _read(info: SourceInfo, *, max_pixels: int) -> GopIndex:
    import av

    video = info.video
    assert video is not None
    empty = GopIndex(0, (), 0, b"", None, 0)
    try:
        with av.open(info.path, options=input_options(max_pixels, ()), timeout=(10.0, 10.0)) as container:
            stream = next(s for s in container.streams.video if s.index == video.index)
            avcc = _avcc(bytes(stream.codec_context.extradata or b""))
            if isinstance(avcc, str):
                return dataclasses.replace(empty, problem=avcc)
            tb = stream.time_base
            assert tb is not None
            order, keys = _packets(container, stream, Fraction(tb), Fraction(video.start), video.rate, avcc)
    except av.error.FFmpegError as exc:
        return dataclasses.replace(empty, problem=f"its packets could not be read ({exc})")
    profile_idc = avcc.profile_idc
    base = GopIndex(0, (), 0, avcc.prefix, PROFILES.get(profile_idc), avcc.level_idc)
    if isinstance(order, str):
        return dataclasses.replace(base, problem=order)
    base = dataclasses.replace(base, frames=len(order))
    if sorted(order) != list(range(len(order))):
        return dataclasses.replace(base, problem="its frames are not numbered 0..N-1 on the grid (gaps or repeats)")
    if base.profile is None:
        return dataclasses.replace(
            base, problem=f"its profile (profile_idc {profile_idc}) is not Baseline, Main or High"
        )
    # Closed at j: everything before j in decode order shows before order[j], everything from j on at or after.
    n = len(order)
    before = [-1] * (n + 1)
    for j, p in enumerate(order):
        before[j + 1] = max(before[j], p)
    after = [n] * (n + 1)
    for j in range(n - 1, -1, -1):
        after[j] = min(after[j + 1], order[j])
    starts = tuple(sorted(order[j] for j in keys if before[j] < order[j] == after[j]))
    delay = max(j - p for j, p in enumerate(order))
    return dataclasses.replace(base, starts=starts, delay=max(0, delay))


def _packets(
    container: Any, stream: Any, tb: Fraction, origin: Fraction, rate: Fraction, avcc: _Avcc
) -> tuple[list[int] | str, list[int]]:
    """Each packet's frame number in decode order, and the decode positions of its IDR packets (or why the
    stream is not copied)."""
    order: list[int] = []
    keys: list[int] = []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue  # the demuxer's flush packet
        if packet.pts is None:
            return "a video packet has no timestamp", []
        exact = (Fraction(packet.pts) * tb - origin) * rate
        frame = round(exact)
        if abs(exact - frame) > GRID_TOLERANCE:
            return f"a frame at {float(Fraction(packet.pts) * tb):.6f} s is off its frame grid", []
        nals = _nal_check(memoryview(packet), avcc)
        if isinstance(nals, str):
            return nals, []
        if nals and packet.is_keyframe:
            keys.append(len(order))
        order.append(frame)
    return order, keys
