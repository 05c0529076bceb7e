"""Helpers for tests that check rendered media against the generated fixtures (see fixtures/generate.py).

Video frames carry a barcode with their source frame index in a band at the top of the frame: 20 cells
across the full width, cells 0..15 are bits 0..15 of the index (LSB first, luma 235 = 1, 16 = 0), cells
16..19 are guards (white, black, white, black).  Audio is seeded noise that can be located by
cross-correlation against the pristine signal (``fixtures.generate.source_audio``).
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np

CELLS = 20
BITS = 16
GUARD_BITS = (1, 0, 1, 0)
# A cell reads as white above HIGH and black below LOW; anything in between (a blend of two frames, a
# smeared band) makes the whole frame unreadable rather than risk a wrong index.
HIGH = 170.0
LOW = 80.0

_PathLike = str | os.PathLike


def barcode_cells(gray: np.ndarray) -> np.ndarray:
    """Mean luma of the central ~50 % of each of the 20 barcode cells of a 2-D luma array."""
    gray = np.asarray(gray)
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D luma array, got shape {gray.shape}")
    h, w = gray.shape
    cw = w / CELLS
    # The source band is max(8, Hsrc // 12) rows; after scaling it is about H / 12 rows (or more, when the
    # 8-row minimum applied).  Sampling the central half of H / 12 stays inside the band in every case.
    ch = h / 12
    y0, y1 = int(round(ch * 0.25)), max(int(round(ch * 0.75)), int(round(ch * 0.25)) + 1)
    means = np.empty(CELLS)
    for c in range(CELLS):
        x0 = int(round((c + 0.25) * cw))
        x1 = max(int(round((c + 0.75) * cw)), x0 + 1)
        means[c] = gray[y0:y1, x0:x1].astype(np.float64).mean()
    return means


def read_barcode(gray: np.ndarray) -> int | None:
    """Frame index encoded in the band at the top of a luma array (any size), or None if unreadable.

    Cell centres are computed from the array's own size, so scaled outputs read fine.  Returns None when the
    guard cells do not match or any cell is neither clearly white nor clearly black.
    """
    means = barcode_cells(gray)
    bits = []
    for m in means:
        if m >= HIGH:
            bits.append(1)
        elif m <= LOW:
            bits.append(0)
        else:
            return None
    if tuple(bits[BITS:]) != GUARD_BITS:
        return None
    return sum(bit << k for k, bit in enumerate(bits[:BITS]))


def read_barcode_any_orientation(gray: np.ndarray) -> tuple[int | None, int]:
    """Like read_barcode, also trying the array rotated by 90/180/270 degrees.

    Returns (index, k) where ``np.rot90(gray, k)`` is the orientation that read; (None, 0) if none does.
    """
    for k in range(4):
        index = read_barcode(np.rot90(gray, k))
        if index is not None:
            return index, k
    return None, 0


def luma(frame: av.VideoFrame) -> np.ndarray:
    """The luma plane of a decoded frame as 8-bit (H, W), without range or colour conversion when possible."""
    fmt = frame.format
    comps = fmt.components
    if comps and comps[0].is_luma and comps[0].plane == 0 and fmt.is_planar and not fmt.is_big_endian:
        plane = frame.planes[0]
        bits = comps[0].bits
        dtype = np.uint8 if bits <= 8 else np.dtype("<u2")
        itemsize = np.dtype(dtype).itemsize
        buf = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(-1, plane.line_size)
        rows = buf[: frame.height, : frame.width * itemsize]
        y = np.ascontiguousarray(rows).view(dtype)
        if bits > 8:
            return (y.astype(np.uint16) >> (bits - 8)).astype(np.uint8)
        return y
    return frame.to_ndarray(format="gray")


def _seconds(pts: int | None, time_base: Fraction | None) -> float | None:
    if pts is None or time_base is None:
        return None
    return float(pts * time_base)


def frame_indices(path: _PathLike) -> list[tuple[float, int | None]]:
    """(pts in seconds, barcode index) for every decoded frame of the first video stream (no rotation applied)."""
    out: list[tuple[float, int | None]] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            t = _seconds(frame.pts, frame.time_base or stream.time_base)
            out.append((float("nan") if t is None else t, read_barcode(luma(frame))))
    return out


def _audio_stream(container: av.container.InputContainer, stream: int | None) -> av.audio.AudioStream:
    streams = list(container.streams.audio)
    if not streams:
        raise ValueError(f"{container.name}: no audio stream")
    if stream is not None:
        return streams[stream]
    for s in streams:
        if s.disposition & av.stream.Disposition.default:
            return s
    return streams[0]


def default_audio_stream(path: _PathLike) -> int:
    """Index (among audio streams) that decode_audio picks by default."""
    with av.open(str(path)) as container:
        return list(container.streams.audio).index(_audio_stream(container, None))


def _to_float(frame: av.AudioFrame) -> np.ndarray:
    arr = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        arr = arr.reshape(-1, channels).T
    if arr.dtype.kind == "f":
        return arr.astype(np.float32, copy=False)
    if arr.dtype == np.uint8:
        return ((arr.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    scale = float(2 ** (arr.dtype.itemsize * 8 - 1))
    return (arr.astype(np.float32) / scale).astype(np.float32)


def _decode_audio(path: _PathLike, stream: int | None) -> tuple[np.ndarray, int, float | None, float | None]:
    """(samples, rate, first pts, last pts + last duration) in seconds."""
    with av.open(str(path)) as container:
        s = _audio_stream(container, stream)
        chunks = []
        start = end = None
        rate = s.codec_context.sample_rate
        for frame in container.decode(s):
            t = _seconds(frame.pts, frame.time_base or s.time_base)
            if start is None:
                start = t
            chunks.append(_to_float(frame))
            rate = frame.sample_rate
            if t is not None:
                end = t + frame.samples / rate
        channels = s.codec_context.channels
    data = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), dtype=np.float32)
    return data, rate, start, end


def decode_audio(path: _PathLike, stream: int | None = None) -> tuple[np.ndarray, int]:
    """Decode an audio stream to float32 (channels, samples) and its sample rate.

    ``stream`` is the index among the file's audio streams (like ffmpeg's ``a:N``); default: the stream with
    the default disposition, else the first.  Sample 0 is the first decoded sample, presented at
    ``audio_start_seconds(path, stream)`` (decoder delay / edit lists are already applied by libav).
    """
    data, rate, _, _ = _decode_audio(path, stream)
    return data, rate


def audio_start_seconds(path: _PathLike, stream: int | None = None) -> float:
    """Presentation time of the first decoded audio sample (0.0 when the stream has no timestamps)."""
    with av.open(str(path)) as container:
        s = _audio_stream(container, stream)
        for frame in container.decode(s):
            t = _seconds(frame.pts, frame.time_base or s.time_base)
            return 0.0 if t is None else t
    return 0.0


def audio_gaps(path: _PathLike, stream: int | None = None, min_gap_s: float = 0.002) -> list[tuple[float, float]]:
    """Holes in an audio stream, from its decoded frames' timestamps: ``(start, end)`` in seconds wherever a
    frame starts more than ``min_gap_s`` after the previous one ends (a recorder that dropped packets).

    ``min_gap_s`` is above the 1 ms rounding of Matroska/WebM timestamps, so only real holes count.
    """
    gaps = []
    with av.open(str(path)) as container:
        s = _audio_stream(container, stream)
        end: float | None = None
        for frame in container.decode(s):
            t = _seconds(frame.pts, frame.time_base or s.time_base)
            if t is None:
                continue
            if end is not None and t - end > min_gap_s:
                gaps.append((end, t))
            end = t + frame.samples / frame.sample_rate
    return gaps


def find_offset(reference: np.ndarray, probe: np.ndarray, expected: int, radius: int) -> tuple[int, float]:
    """Position in ``reference`` where ``probe`` matches best, searched over expected - radius .. + radius.

    Both are mono 1-D arrays.  Returns (position, normalised correlation peak in 0..1): the peak is the
    cosine similarity between ``probe`` and the window of ``reference`` at that position.
    """
    reference = np.asarray(reference, dtype=np.float64).ravel()
    probe = np.asarray(probe, dtype=np.float64).ravel()
    n = len(probe)
    if n == 0:
        raise ValueError("empty probe")
    lo = max(0, expected - radius)
    hi = min(len(reference) - n, expected + radius)
    if hi < lo:
        raise ValueError(f"search range {expected}±{radius} does not fit a probe of {n} in {len(reference)} samples")
    segment = reference[lo : hi + n]
    size = 1 << int(np.ceil(np.log2(len(segment) + n)))
    corr = np.fft.irfft(np.fft.rfft(segment, size) * np.conj(np.fft.rfft(probe, size)), size)[: hi - lo + 1]
    energy = np.concatenate(([0.0], np.cumsum(segment**2)))
    window = energy[n : n + hi - lo + 1] - energy[: hi - lo + 1]
    denom = np.sqrt(np.maximum(window, 0.0) * float(np.dot(probe, probe)))
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(denom > 1e-12, corr / denom, 0.0)
    best = int(np.argmax(score))
    return lo + best, float(np.clip(score[best], 0.0, 1.0))


def max_jump(x: np.ndarray) -> float:
    """Largest absolute sample-to-sample difference (along the last axis, over all channels)."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] < 2:
        return 0.0
    return float(np.max(np.abs(np.diff(x, axis=-1))))


def _video_span(container: av.container.InputContainer) -> tuple[float, float, int] | None:
    """(first pts, last pts + last frame duration, frame count) of the first video stream, in seconds."""
    vs = container.streams.video[0]
    vs.thread_type = "AUTO"
    rate = vs.average_rate or vs.guessed_rate
    first: float | None = None
    prev: float | None = None
    end = 0.0
    count = 0
    for frame in container.decode(vs):
        t = _seconds(frame.pts, frame.time_base or vs.time_base)
        if t is None:
            continue
        tb = frame.time_base or vs.time_base
        if frame.duration and tb is not None:
            dur = float(frame.duration * tb)
        elif rate:
            dur = float(1 / rate)
        else:
            dur = t - prev if prev is not None else 0.0
        if first is None:
            first = t
        prev, end = t, t + dur
        count += 1
    return None if first is None else (first, end, count)


def stream_durations(path: _PathLike) -> dict:
    """Durations measured from decoded frames: last pts + its duration - first pts, per stream type.

    Keys: ``video`` / ``audio`` (seconds or None when absent), ``video_start`` / ``audio_start`` (first pts,
    seconds), ``video_frames`` and ``audio_samples``.  Uses the first video stream and the default audio stream.
    """
    result: dict = {"video": None, "audio": None, "video_start": None, "audio_start": None}
    result.update(video_frames=0, audio_samples=0)
    with av.open(str(path)) as container:
        span = _video_span(container) if container.streams.video else None
        has_audio = bool(container.streams.audio)
    if span is not None:
        first, end, count = span
        result.update(video=end - first, video_start=first, video_frames=count)
    if has_audio:
        data, rate, start, stop = _decode_audio(path, None)
        if start is None or stop is None:  # no timestamps: assume contiguous from 0
            start, stop = 0.0, data.shape[1] / rate
        result.update(audio=stop - start, audio_start=start, audio_samples=data.shape[1])
    return result
