"""Packet-level work on encoded video: counted, checked and cut without decoding (PyAV demux and mux).

The keyframe facts a stream copy depends on live here: whether a piece starts on a keyframe, and the copy
of a piece from the IDR frame that ends its pre-roll.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from worker.chunks import Chunk
from worker.errors import EncodeError, ErrorCode, SourceError


def frames_and_first_key(path: Path) -> tuple[int, bool]:
    """(video frames, whether the first video packet is a keyframe) of an encoded piece."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            first_key = False
            frames = 0
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's flush packet
                if frames == 0:
                    first_key = bool(packet.is_keyframe)
                frames += 1
            return frames, first_key
    except (av.error.FFmpegError, IndexError) as exc:
        raise SourceError(f"a chunk produced an unreadable file ({exc})", code=ErrorCode.ENCODE_FAILED) from exc


def drop_preroll(encoded: Path, piece: Path, chunk: Chunk, rate: Fraction, muxer: str) -> None:
    """Copy ``encoded`` to ``piece`` from the IDR frame that ends the pre-roll, timestamps moved to start at 0.

    A stream copy, packet by packet. The closed GOP makes this exact: every pre-roll frame is decoded before
    that IDR frame, and nothing after it refers to anything before it.
    """
    import av

    with av.open(str(encoded)) as src, av.open(str(piece), "w", format=muxer) as dst:
        ist = src.streams.video[0]
        ost = dst.add_stream_from_template(ist)
        assert ist.time_base is not None
        cut = Fraction(chunk.preroll) / rate / ist.time_base
        if cut.denominator != 1:
            raise EncodeError(f"chunk {chunk.index}: frame {chunk.preroll} is not on the {ist.time_base} tick grid")
        started = False
        for packet in src.demux(ist):
            if packet.size == 0 or packet.pts is None or packet.dts is None:
                continue  # the demuxer's flush packet
            if not started:
                if not (packet.is_keyframe and packet.pts == cut):
                    continue
                started = True
            packet.pts -= int(cut)
            packet.dts -= int(cut)
            packet.stream = ost
            dst.mux(packet)
    if not started:
        raise EncodeError(f"chunk {chunk.index} has no keyframe after its pre-roll; it cannot be joined")


def check_uniform(path: Path, rate: Fraction) -> None:
    """The first video track's timing is exact: presentation times are frames 0..N-1 at one frame duration
    each, decode times strictly increase by that same duration (uniform ``stts``), and no frame is decoded
    after it is shown. The seams of a smart render are where this would break first."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            tb = Fraction(stream.time_base or 0)
            times: list[tuple[int, int]] = []
            for p in container.demux(stream):
                if p.size and p.pts is not None and p.dts is not None:
                    times.append((p.pts, p.dts))
                elif p.size:
                    raise EncodeError(f"{path.name}: a video packet has no presentation or decode time")
    except (av.error.FFmpegError, IndexError) as exc:
        raise SourceError(f"the render produced an unreadable file ({exc})", code=ErrorCode.ENCODE_FAILED) from exc
    tick = 1 / rate / tb
    problems = []
    if not times:
        problems.append("no video packets")
    else:
        pts = sorted(p for p, _ in times)
        if [Fraction(p - pts[0]) for p in pts] != [k * tick for k in range(len(pts))]:
            problems.append("presentation times are not one frame apart")
        steps = {b[1] - a[1] for a, b in zip(times, times[1:], strict=False)}
        if steps and steps != {tick}:
            problems.append(f"decode times step by {sorted(steps)} ticks, not {tick}")
        if any(d > p for p, d in times):
            problems.append("a frame is decoded after it is shown")
    if problems:
        raise EncodeError(f"{path.name}: " + "; ".join(problems))
