"""Cover art: the source's attached picture, carried into m4a and mp3 outputs without being decoded.

A podcast file usually carries its artwork (MP4 ``covr``, ID3 ``APIC``, an mkv image attachment). A render
to m4a or mp3 keeps it, byte for byte: the picture's one packet is read with PyAV (no decoder is opened) and
handed to ffmpeg as a stream copy.

Why a small side file: a muxer needs the picture's width and height, and an attached picture in mp4 or mp3
declares neither, so ffmpeg would have to decode the picture to learn them, which is what the decoder
allowlist forbids for a stream the render does not use. The size is read here from the picture's own header
(PNG ``IHDR``, JPEG ``SOFn``: a few bytes at known places, bounded, no decoding), and the packet is written
with it into a mov of its own in the render's scratch directory, which ffmpeg opens as a second input with
the same hardening as the source.

A picture in a codec the output cannot carry (anything but JPEG and PNG), one over the size limits or one
whose header does not parse is dropped, with a note in the result; never an error.
"""

from __future__ import annotations

import dataclasses
import struct
from fractions import Fraction
from pathlib import Path

import av
import av.error

from worker.allowlists import COVER_CODECS, input_options
from worker.probe import SourceInfo

# Artwork larger than this is not artwork (podcast hosts ask for at most a few MB); it is dropped.
MAX_COVER_BYTES = 16 * 1024 * 1024
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (C0-CF except DHT C4, JPG C8 and DAC CC): they carry the picture's size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Markers without a length field.
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}


@dataclasses.dataclass(frozen=True)
class Cover:
    """What a render does with the source's artwork: a side file to copy from, or a note why it is dropped."""

    path: Path | None
    note: str | None = None


def picture_size(data: bytes, codec: str) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header, or None when the header does not parse."""
    if codec == "png":
        # Signature, then the IHDR chunk: length (4), type (4), width (4), height (4).
        if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", data[16:24])
        return (width, height) if width and height else None
    if codec == "mjpeg":
        if not data.startswith(b"\xff\xd8"):
            return None
        pos = 2
        while pos + 4 <= len(data):
            if data[pos] != 0xFF:
                return None
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker in _JPEG_STANDALONE:
                pos += 2
                continue
            (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
            if marker in _JPEG_SOF:
                if pos + 9 > len(data):
                    return None
                height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
                return (width, height) if width and height else None
            if marker == 0xDA or length < 2:  # start of scan: no frame header before it
                return None
            pos += 2 + length
    return None


def _read_packet(source: str, index: int, max_pixels: int) -> bytes | None:
    """The attached picture's packet, read without opening any decoder."""
    try:
        with av.open(source, options=input_options(max_pixels, decoders=()), timeout=(10.0, 10.0)) as container:
            stream = container.streams[index]
            for packet in container.demux(stream):
                if packet.size:
                    if packet.size > MAX_COVER_BYTES:
                        return None
                    return bytes(packet)
    except (av.error.FFmpegError, IndexError):
        return None
    return None


def _write_side_file(path: Path, data: bytes, codec: str, size: tuple[int, int]) -> None:
    with av.open(str(path), "w", format="mov") as out:
        stream = out.add_stream(codec, rate=1)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = size
        stream.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
        packet = av.Packet(data)
        packet.stream = stream
        packet.pts = packet.dts = 0
        packet.time_base = Fraction(1, 1)
        out.mux(packet)


def prepare(info: SourceInfo, scratch: Path, *, max_pixels: int) -> Cover:
    """The side file for the source's cover art in ``scratch`` (see the module's notes), or why there is none."""
    cover = info.cover
    if cover is None:
        return Cover(None)
    if cover.codec not in COVER_CODECS:
        return Cover(None, f"the cover art ({cover.codec}) was dropped: m4a and mp3 carry JPEG or PNG artwork")
    data = _read_packet(info.path, cover.index, max_pixels)
    size = picture_size(data, cover.codec) if data else None
    if data is None or size is None:
        return Cover(None, "the cover art was dropped: its picture is unreadable or too large")
    if size[0] * size[1] > max_pixels:
        return Cover(None, f"the cover art was dropped: {size[0]}x{size[1]} is over the pixel limit")
    path = scratch / "cover.mov"
    try:
        _write_side_file(path, data, cover.codec, size)
    except (av.error.FFmpegError, ValueError) as exc:
        path.unlink(missing_ok=True)
        return Cover(None, f"the cover art was dropped: {type(exc).__name__}")
    return Cover(path)
