"""One H.264 track from copied GOPs and encoded segments (smart render), with exact, uniform timing.

Why not the concat demuxer, as chunked renders join: it keeps each file's decode timestamps and only shifts
them, so where a copied GOP (the source's B-frame delay) follows an encoded one (x264's) the decode times
step unevenly or run backwards, the non-uniform ``stts`` other smart cutters write at their seams. Here every
packet's times are written afresh, from the plan:

* presentation: output frame ``k`` at ``k`` frame durations (the frame number comes from the packet's own
  time on its file's grid, so the copied frames keep their order and the encoded ones theirs);
* decode: packet ``j`` of the whole track, in decode order, at ``j - D`` frame durations, ``D`` the largest
  reorder delay of any part. Every frame lasts one duration in decode order too (uniform ``stts``), decode
  times strictly increase, and no frame is decoded after it is shown (``D`` covers every part's delay).

Parameter sets: the track keeps one sample description (the first part's ``avcC``), and every GOP carries its
own SPS and PPS in front of its IDR frame: the encoded ones from x264 (``repeat-headers``), the copied ones
put there from the source's ``avcC`` (``prefix``). So a decoder that starts, or seeks, at any GOP has the
parameter sets of that GOP, whichever part it came from; one sample description per run (``stsd`` entries
switching mid-track) would be exact too, but fewer players follow a sample-description change.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from worker.errors import DiskFull, EncodeError, ErrorCode, SourceError, check_stopped, disk_full_in


@dataclasses.dataclass(frozen=True)
class Part:
    """Frames ``[first, end)`` (display order, counted on ``rate`` from ``origin``) of one file's video."""

    path: str
    stream: int  # the video stream's index in that file
    first: int
    end: int
    origin: Fraction | None = None  # seconds of frame 0; None: the file's first frame
    prefix: bytes = b""  # NAL units put in front of each IDR frame (the source's SPS and PPS)
    options: dict[str, str] = dataclasses.field(default_factory=dict)  # how the file is opened (the source's hardening)

    @property
    def frames(self) -> int:
        return self.end - self.first


def _timescale(rate: Fraction) -> tuple[int, int]:
    """(timescale, ticks a frame): 30000/1001 fps is 30000 and 1001, 30 fps 15360 and 512, as ffmpeg writes."""
    k = 1 if rate.numerator >= 10_000 else 512
    return rate.numerator * k, rate.denominator * k


def _frames(part: Part, rate: Fraction) -> Iterator[tuple[int, Any]]:
    """(frame number, packet) of ``part``'s packets, in decode order, from its first frame to before its end."""
    import av

    with av.open(part.path, options=part.options or None) as container:
        stream = next(s for s in container.streams if s.index == part.stream)
        tb = Fraction(stream.time_base or 0)
        origin = part.origin if part.origin is not None else _first_time(container, stream, tb)
        if part.first > 0:
            # To the keyframe at or before the first frame; the packets before the first one are skipped.
            container.seek(int((origin + Fraction(part.first) / rate) / tb), stream=stream, backward=True)
        started = False
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue  # the demuxer's flush packet
            frame = round((Fraction(packet.pts) * tb - origin) * rate)
            if not started:
                if frame != part.first:
                    continue
                if not packet.is_keyframe:
                    raise EncodeError(
                        f"frame {frame} of {Path(part.path).name} is not a keyframe; nothing copies from it"
                    )
                started = True
            elif frame == part.end and packet.is_keyframe:
                return  # the next GOP: every frame of this part came before it, in decode order
            yield frame, packet


def _first_time(container: Any, stream: Any, tb: Fraction) -> Fraction:
    """Seconds of the first frame of ``stream`` (its smallest presentation time), the container rewound."""
    first = min(Fraction(p.pts) * tb for p in container.demux(stream) if p.size and p.pts is not None)
    container.seek(0, stream=stream, backward=True)
    return first


def _with_origins(parts: Sequence[Part]) -> list[Part]:
    """``parts`` with every unknown origin found, once a file: the segments a batch holds share its file."""
    import av

    found: dict[tuple[str, int], Fraction] = {}
    out = []
    for part in parts:
        if part.origin is None:
            key = (part.path, part.stream)
            if key not in found:
                with av.open(part.path, options=part.options or None) as container:
                    stream = next(s for s in container.streams if s.index == part.stream)
                    found[key] = _first_time(container, stream, Fraction(stream.time_base or 0))
            part = dataclasses.replace(part, origin=found[key])
        out.append(part)
    return out


def _delay(frames: Sequence[int]) -> int:
    """The most a packet comes before its display slot, in decode order (frames numbered from 0)."""
    return max((j - p for j, p in enumerate(frames)), default=0)


def join_video(
    parts: Sequence[Part],
    output: str | Path,
    *,
    rate: Fraction,
    muxer: str,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
) -> int:
    """Write ``parts``, in order, as one video track of ``output``; returns the frames written.

    A first pass reads each part's packet order (a demux, nothing decoded) to find the reorder delay; the
    second writes. Each part must yield exactly its frames, or nothing is trusted: :class:`EncodeError`.
    An hour of copied video is gigabytes read and written: ``cancel`` and ``deadline`` are honoured between
    packets, as an ffmpeg run honours them.
    """
    import av

    parts = _with_origins(parts)
    timescale, tick = _timescale(rate)
    # The packets' own time base, fixed: the muxer may change the stream's when it writes the header (mp4
    # doubles a timescale under 10000), and each packet is rescaled from this one to whatever it chose.
    tb = Fraction(1, timescale)
    orders: list[list[int]] = []
    for part in parts:
        check_stopped(cancel, deadline)
        order = [frame - part.first for frame, _ in _frames(part, rate)]
        if sorted(order) != list(range(part.frames)):
            raise EncodeError(
                f"{Path(part.path).name} gives {len(order)} of the {part.frames} frames {part.first}..{part.end - 1}"
            )
        orders.append(order)
    delay = max(_delay(o) for o in orders)
    written = 0
    base = 0  # the output frame of the part's first
    try:
        with av.open(str(output), "w", format=muxer) as dst:
            ost = None
            for part in parts:
                for frame, packet in _frames(part, rate):
                    if ost is None:
                        ost = dst.add_stream_from_template(packet.stream)
                        ost.time_base = tb
                    data = bytes(packet)
                    if part.prefix and packet.is_keyframe:
                        data = part.prefix + data
                    out = av.Packet(data)
                    out.stream = ost
                    out.time_base = tb
                    out.pts = (base + frame - part.first) * tick
                    out.dts = (written - delay) * tick
                    out.duration = tick
                    out.is_keyframe = packet.is_keyframe
                    dst.mux(out)
                    written += 1
                    if written % 256 == 0:
                        check_stopped(cancel, deadline)
                base += part.frames
    except av.error.FFmpegError as exc:
        full = disk_full_in(exc)
        if full is not None:  # the host's fault, retried (PyAV's write error is an OSError, wrapped here)
            raise DiskFull(
                f"the worker's disk is full: the smart render's video could not be written ({full.strerror})"
            ) from exc
        raise SourceError(
            f"the smart render's video could not be joined ({exc})", code=ErrorCode.ENCODE_FAILED
        ) from exc
    return written
