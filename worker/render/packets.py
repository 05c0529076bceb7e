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
