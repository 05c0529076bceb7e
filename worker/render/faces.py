"""Where the speaker is: faces found on frames of the kept pieces (``output.aspect``), keyframes first.

The source is decoded in this process with PyAV, opened as hardened as the probe opens it (allowlists, the
pixel limit) and allowed only its video decoder. What it costs is the decode, not the detector: an H.264
keyframe carries most of a GOP's bits, and the frames after it can only be reached through it. So the search
decodes in two passes over the kept pieces:

1. **keyframes**: every keyframe in a kept piece, and the one either side of it, each decoded on its own
   (no reference chain; the decoder's frame threads take two at once);
2. **where it matters**: the design rate is :data:`SAMPLE_FPS` frames a second, and a point of that grid is
   decoded (from its keyframe, non-reference frames skipped, only as far as the last point needed) unless the
   keyframes either side of it show the speaker holding still (the same faces, the largest one moved less
   than :data:`HOLD` of the picture's width), at most :data:`MAX_HOLD_S` apart. A speaker who walks, cuts,
   comes into or leaves the frame is seen :data:`SAMPLE_FPS` times a second; one who sits still, as most
   talking heads do, costs one decoded frame a GOP.

Each sampled frame is shrunk to :data:`SAMPLE_WIDTH` grey pixels and OpenCV's bundled frontal-face cascade
(it ships inside ``opencv-python-headless``; nothing is downloaded) runs on it. The sightings go to
``worker/reframe.py``, which plans the crop's path; the path is part of the plan, so whole renders and every
chunk of a chunked one crop alike. ``cancel`` and ``deadline`` are honoured between packets: an hour of
source is minutes of search.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

from worker import reframe
from worker.errors import ErrorCode, SourceError, check_stopped
from worker.planner import Plan
from worker.probe import input_options

#: The design rate: frames a second the detector looks at wherever the speaker is not holding still.
SAMPLE_FPS = 3
#: Two keyframe sightings vouch for the frames between them only if they are at most this far apart (s).
MAX_HOLD_S = 2.0
#: ... and the largest face moved less than this share of the picture's width between them (a third of the
#: crop's dead zone at 9:16 of 16:9: far below what makes the crop move).
HOLD = 0.02
#: A gap of the cut longer than this (seconds) is skipped by a seek; a shorter one is read through.
SEEK_GAP_S = 2
#: The width the detector sees (the picture is shrunk to it, keeping its shape).
SAMPLE_WIDTH = 480
#: Smallest face the detector reports, as a share of the sampled width (a face in a wide shot of a room).
MIN_FACE = 0.04
#: How much larger each of the detector's scans looks than the last: 1.2 halves its time against 1.1 and still
#: finds a talking head (the crop's path needs where the face is, not its exact size).
SCALE_STEP = 1.2
#: Decoder threads (frame threads: keyframes decoded on their own are independent, two at once on two cores).
MAX_THREADS = 8


def _cascade() -> Any:
    import cv2

    path = str(cv2.data.haarcascades) + "haarcascade_frontalface_default.xml"  # type: ignore[attr-defined]
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise SourceError("OpenCV's face cascade is missing from its package", code=ErrorCode.INTERNAL_ERROR)
    return cascade


#: Pixel formats whose first plane is 8-bit luma, as decoders hand out 8-bit video.
_LUMA_FIRST_8BIT = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "gray"})


def _small_luma(frame: Any) -> Any:
    """The frame's luma plane, shrunk to :data:`SAMPLE_WIDTH` by area averaging: a view of the decoder's own
    plane (every H.264 output is planar with luma first), so no colour conversion of the whole frame runs."""
    import cv2
    import numpy as np

    if frame.format.name not in _LUMA_FIRST_8BIT:  # 10-bit HDR, RGB, ...: converted (rare, and slower)
        frame = frame.reformat(format="gray")
    plane = frame.planes[0]
    rows = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(-1, plane.line_size)
    luma = rows[: frame.height, : frame.width]
    height = max(2, round(SAMPLE_WIDTH * frame.height / frame.width))
    return cv2.resize(luma, (SAMPLE_WIDTH, height), interpolation=cv2.INTER_AREA)


@dataclasses.dataclass(frozen=True)
class Sample:
    """A frame the detector looked at: its time (seconds from the first frame) and the faces on it."""

    t: float
    faces: tuple[reframe.Face, ...]

    def holds_with(self, other: Sample) -> bool:
        """Whether the speaker holds still from this sample to ``other``: so the frames between need no look."""
        if abs(other.t - self.t) > MAX_HOLD_S or len(self.faces) != len(other.faces):
            return False
        if not self.faces:
            return True
        a = max(self.faces, key=lambda f: f.width)
        b = max(other.faces, key=lambda f: f.width)
        return abs(a.cx - b.cx) < HOLD


def grid(spans: list[tuple[float, float]]) -> list[float]:
    """The design rate's points: every 1/:data:`SAMPLE_FPS` s of each kept span, from its start."""
    points = []
    for start, end in spans:
        points += [start + i / SAMPLE_FPS for i in range(math.ceil((end - start) * SAMPLE_FPS - 1e-9))]
    return points


def wanted(points: list[float], seen: list[Sample]) -> list[float]:
    """The grid points the keyframes do not vouch for: no sample within half a grid step, and the samples
    either side of it (the nearest before and after) do not show the speaker holding still between them."""
    import bisect

    seen = sorted(seen, key=lambda s: s.t)
    times = [s.t for s in seen]
    half = 0.5 / SAMPLE_FPS
    out = []
    for p in points:
        i = bisect.bisect_left(times, p)
        before = seen[i - 1] if i > 0 else None
        after = seen[i] if i < len(seen) else None
        if (before is not None and p - before.t <= half) or (after is not None and after.t - p <= half):
            continue
        if before is not None and after is not None and before.holds_with(after):
            continue
        out.append(p)
    return out


class _Search:
    """One open source, its video stream and the detector; each pass a method."""

    def __init__(self, container: Any, plan: Plan, cancel: threading.Event | None, deadline: float | None):
        self.container = container
        video = plan.info.video
        assert video is not None
        self.rotation = video.rotation
        self.stream = next(s for s in container.streams.video if s.index == video.index)
        self.stream.thread_type = "FRAME"
        self.stream.codec_context.thread_count = max(1, min(MAX_THREADS, len(os.sched_getaffinity(0))))
        tb = self.stream.time_base
        assert tb is not None
        self.tb = Fraction(tb)
        # Seconds from the first frame = the packet's time, less the container's start and the frame's place
        # on the render timeline (what the plan's grid counts from).
        self.zero = Fraction(container.start_time or 0, 1_000_000) + plan.timeline.origin
        self.cascade = _cascade()
        self.cancel, self.deadline = cancel, deadline

    def seconds(self, pts: int) -> float:
        return float(Fraction(pts) * self.tb - self.zero)

    def _seek(self, t: float) -> None:
        self.container.seek(int((Fraction(t) + self.zero) / self.tb), stream=self.stream, backward=True)
        self.stream.codec_context.flush_buffers()

    def _packets(self, spans: list[tuple[float, float]]) -> Iterator[Any]:
        """The stream's packets covering ``spans`` (from the keyframe at or before each, to the first keyframe
        after it), in file order; long gaps between spans are sought over."""
        at: float | None = None  # time of the last packet read
        for start, end in spans:
            if at is not None and at >= end:
                continue
            if at is None or start - at > SEEK_GAP_S:
                self._seek(start)
            for packet in self.container.demux(self.stream):
                check_stopped(self.cancel, self.deadline)
                if packet.pts is None or packet.size == 0:
                    continue
                t = self.seconds(packet.pts)
                at = t if at is None else max(at, t)
                yield packet
                if packet.is_keyframe and t >= end:
                    break

    def _look(self, frame: Any) -> Sample:
        import numpy as np

        gray = _small_luma(frame)
        gray = np.rot90(gray, self.rotation // 90) if self.rotation else gray
        w = gray.shape[1]
        # The whole picture, always: a window around where the speaker was would be cheaper, but the cascade
        # misses a face there one time in a few (its scan grid moves with the window's edge).
        size = max(8, round(MIN_FACE * w))
        found = self.cascade.detectMultiScale(gray, SCALE_STEP, 4, minSize=(size, size))
        t = self.seconds(frame.pts)
        return Sample(t, tuple(reframe.Face(t, (x + fw / 2) / w, fw / w) for x, _y, fw, _fh in found))

    def keyframes(self, spans: list[tuple[float, float]]) -> list[Sample]:
        """Pass 1: each keyframe of the spans (and the one before and after each) decoded on its own."""
        cc = self.stream.codec_context
        cc.skip_frame = "DEFAULT"
        done: set[int] = set()
        samples = []

        def out(frames: Any) -> None:
            for frame in frames:
                if frame.pts is not None:
                    samples.append(self._look(frame))

        for packet in self._packets(spans):
            if packet.is_keyframe and packet.pts not in done:
                done.add(packet.pts)
                out(cc.decode(packet))
        out(cc.decode(None))
        cc.flush_buffers()
        return samples

    def at(self, points: list[float], keys: list[float]) -> list[Sample]:
        """Pass 2: the first frame at or after each of ``points``, non-reference frames skipped. The decoder
        reads on within a GOP, and seeks to the keyframe of a point in another GOP (``keys``: the keyframe
        times pass 1 saw), so no GOP is decoded past its last point."""
        import bisect

        cc = self.stream.codec_context
        cc.skip_frame = "NONREF"
        samples: list[Sample] = []
        demux: Iterator[Any] | None = None
        pending: list[Any] = []  # frames the decoder gave out past the last point taken
        last: float | None = None  # time of the last frame the decoder gave out
        ended = False  # the decoder was drained at the stream's end
        for p in sorted(points):
            if last is not None and last >= p - 1e-6 and not pending:
                continue  # the frame taken for an earlier point is already past this one (skipped frames)
            k = bisect.bisect_right(keys, p + 1e-6) - 1
            key = keys[k] if k >= 0 else None
            if demux is None or last is None or key is None or key > last + 1e-6:
                self._seek(p)
                demux, pending, last, ended = self.container.demux(self.stream), [], None, False
            frame = None
            while frame is None:
                if not pending:
                    if ended:
                        break
                    packet = next(demux, None)
                    check_stopped(self.cancel, self.deadline)
                    if packet is None or packet.size == 0:  # the end: the decoder gives out what it holds
                        pending, ended = list(cc.decode(None)), True
                        continue
                    pending = list(cc.decode(packet))
                    continue
                f = pending.pop(0)
                if f.pts is None:
                    continue
                last = self.seconds(f.pts)
                if last >= p - 1e-6:
                    frame = f
            if frame is None:  # the stream ended before ``p``: a later point seeks afresh
                demux = None
                continue
            samples.append(self._look(frame))
        cc.flush_buffers()
        return samples


def sightings(
    plan: Plan, *, cancel: threading.Event | None = None, deadline: float | None = None
) -> list[reframe.Face]:
    """Faces on frames of the kept pieces, at source times (seconds from the first frame)."""
    import av

    video = plan.info.video
    assert video is not None
    rate = plan.timeline.rate
    spans = [(float(Fraction(p.src) / rate), float(Fraction(p.src + p.length) / rate)) for p in plan.timeline.pieces]
    options = input_options(plan.limits.max_source_pixels, (video.codec,))
    try:
        with av.open(plan.info.path, options=options, timeout=(10.0, 10.0)) as container:
            search = _Search(container, plan, cancel, deadline)
            seen = search.keyframes(spans)
            seen += search.at(wanted(grid(spans), seen), sorted(s.t for s in seen))
    except av.error.FFmpegError as exc:
        raise SourceError(
            f"the source could not be read to find faces ({exc})", code=ErrorCode.SOURCE_UNREADABLE
        ) from exc
    return [f for s in sorted(seen, key=lambda s: s.t) for f in s.faces]


def follow_speaker(plan: Plan, *, cancel: threading.Event | None = None, deadline: float | None = None) -> Plan:
    """``plan`` with its crop's path (``output.aspect``), unless it has one or does not crop."""
    if plan.encode.crop is None or plan.crop_path is not None or plan.info.video is None:
        return plan
    cw, _ch, _x, _y = plan.encode.crop
    pieces = [(float(Fraction(p.src) / plan.timeline.rate), p.out, p.length) for p in plan.timeline.pieces]
    knots = reframe.crop_path(
        sightings(plan, cancel=cancel, deadline=deadline),
        pieces,
        fps=float(plan.timeline.rate),
        picture_w=plan.info.video.display_width,
        crop_w=cw,
    )
    return dataclasses.replace(plan, crop_path=knots)
