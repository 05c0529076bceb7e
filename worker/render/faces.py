"""Where the speaker is: faces found on frames of the kept pieces (``output.aspect``), keyframes first.

The source is decoded in this process with PyAV, opened as hardened as the probe opens it (allowlists, the
pixel limit) and allowed only its video decoder. What it costs is the decode, not the detector: an H.264
keyframe carries most of a GOP's bits, and the frames after it can only be reached through it. So each
keyframe of the kept pieces is decoded once, and a GOP is read on past it only where it matters:

1. the packets of the kept pieces are read (nothing decoded) to list their keyframes and give each the points
   of the design grid (:data:`SAMPLE_FPS` frames a second) that fall in its GOP;
2. each keyframe is decoded and searched on one of a few *lanes* (an opening of the source with a one-thread
   decoder of its own; the lanes run side by side, as the decoder and OpenCV leave the GIL);
3. the lane then keeps its decoder where it is until the next keyframe has been searched: if the two show the
   speaker holding still (the same faces, the largest one moved less than :data:`HOLD` of the picture's
   width, at most :data:`MAX_HOLD_S` apart), the GOP's points need no look; otherwise the lane reads on from
   there (non-reference frames skipped, only as far as the last point needed) and searches each point.

A speaker who walks, cuts, comes into or leaves the frame is seen :data:`SAMPLE_FPS` times a second; one who
sits still, as most talking heads do, costs one decoded frame a GOP, and no frame is decoded twice.

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
from worker.allowlists import input_options
from worker.errors import ErrorCode, SourceError, check_stopped
from worker.planner import Plan

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
#: Threads the search runs on (at most one a core): each decodes and searches on its own, and each decoder
#: holds a few frames, so more than a few would cost memory for little.
MAX_WORKERS = 4


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


@dataclasses.dataclass
class _Gop:
    """A keyframe the search decodes, the grid points from it to the next one it decodes, and what it saw."""

    pts: int
    dts: int  # where a seek aims (demuxers seek by decode time)
    t: float
    points: list[float] = dataclasses.field(default_factory=list)
    done: bool = False  # its keyframe was searched (``sample`` is None where it could not be decoded)
    sample: Sample | None = None


class _Lane:
    """One opening of the source with a decoder of its own (one thread). It decodes a GOP's keyframe and then
    keeps the decoder as it is, so that a GOP found to need a look inside is read on from there: the keyframe,
    the dearest frame of a GOP, is decoded once."""

    def __init__(self, search: _Search, path: str, options: dict[str, str]):
        import av

        self.search = search
        self.container = av.open(path, options=options, timeout=(10.0, 10.0))
        video = search.video
        self.stream = next(s for s in self.container.streams.video if s.index == video.index)
        self.stream.thread_type = "SLICE"  # the lanes are the parallelism; a frame thread would delay output
        self.stream.codec_context.thread_count = 1
        self.stream.codec_context.skip_frame = "NONREF"  # frames nothing refers to are never needed
        self.demux: Iterator[Any] = iter(())
        self.pending: list[Any] = []  # frames the decoder gave out and nobody took yet
        self.until: int | None = None  # the pts of the next keyframe decoded elsewhere: read no further
        self.ended = False
        self.holding: int | None = None  # the GOP whose keyframe this decoder holds, awaiting its decision
        self.busy = False

    def close(self) -> None:
        self.pending, self.demux = [], iter(())  # frames and the demuxer's generator hold the decoder
        self.container.close()

    def keyframe(self, gop: _Gop, until: int | None) -> Any | None:
        """Decode ``gop``'s keyframe and give its frame; the decoder then stands just past it."""
        search = self.search
        cc = self.stream.codec_context
        key = None
        # Demuxers seek by decode time, and some only near it (MPEG-TS lands on the first packet at or after
        # it, keyframe or not): so the seek aims at the keyframe's decode time, the landing is checked, and a
        # miss seeks again a keyframe interval earlier and reads forward to it.
        for back in (0, search.seek_back):
            self.container.seek(gop.dts - back, stream=self.stream, backward=True)
            self.demux = self.container.demux(self.stream)
            for packet in self.demux:
                check_stopped(search.cancel, search.deadline)
                if packet.pts == gop.pts and packet.size:
                    key = packet
                    break
                if packet.dts is not None and packet.dts > gop.dts:
                    break  # past it: the seek landed after the keyframe
            if key is not None:
                break
        if key is None:
            return None
        cc.flush_buffers()
        self.pending, self.until, self.ended = list(cc.decode(key)), until, False
        # The decoder gives a frame out once it knows no later packet shows before it (B-frames): usually one
        # packet later, the GOP's first P-frame, which a look inside needs anyway.
        return self.first_at(gop.t)

    def first_at(self, t: float) -> Any | None:
        """The first frame from here on at or after ``t`` seconds; None once the GOP (or the stream) ends."""
        search = self.search
        cc = self.stream.codec_context
        while True:
            while self.pending:
                frame = self.pending.pop(0)
                if frame.pts is not None and search.seconds(frame.pts) >= t - 1e-6:
                    return frame
            if self.ended:
                return None
            packet = next(self.demux, None)
            check_stopped(search.cancel, search.deadline)
            # The stream's end, or the next GOP's keyframe, which another lane searched: read no further.
            last = (
                packet is None
                or packet.size == 0
                or (
                    packet.is_keyframe
                    and self.until is not None
                    and packet.pts is not None
                    and packet.pts >= self.until
                )
            )
            if last:
                self.pending, self.ended = list(cc.decode(None)), True  # what the decoder still holds
            else:
                self.pending = list(cc.decode(packet))

    def inside(self, points: list[float]) -> list[Sample]:
        """The first frame at or after each of ``points`` (sorted, inside the GOP the decoder holds)."""
        out: list[Sample] = []
        for p in points:
            if out and out[-1].t >= p - 1e-6:
                continue  # the frame taken for an earlier point is already past this one (skipped frames)
            frame = self.first_at(p)
            if frame is None:
                break
            out.append(self.search.look(frame))
        return out


class _Search:
    """The kept pieces' keyframes, each decoded once on one of a few lanes, and the grid points inside the GOPs
    whose keyframes either side do not show the speaker holding still, read on from that keyframe.

    :data:`MAX_WORKERS` threads (the decoder and OpenCV leave the GIL) share ``workers + 1`` lanes: keyframes
    are handed out in order, and a lane holding a GOP waits only for the next keyframe's sight, which another
    lane is decoding, so while one lane waits the others work."""

    def __init__(self, plan: Plan, options: dict[str, str], cancel: threading.Event | None, deadline: float | None):
        video = plan.info.video
        assert video is not None
        self.video = video
        self.cancel, self.deadline = cancel, deadline
        # A cascade a thread: detectMultiScale keeps its scratch buffers in the classifier, so two threads on
        # one classifier corrupt each other's results (faces reported where none are).
        self.cascades = threading.local()
        self.cascades.cascade = _cascade()  # the caller's thread works too (and a broken package fails here)
        self.workers = max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
        self.lanes: list[_Lane] = []
        try:
            for _ in range(self.workers + 1):
                self.lanes.append(_Lane(self, plan.info.path, options))
        except BaseException:
            self.close()
            raise
        container, stream = self.lanes[0].container, self.lanes[0].stream
        assert stream.time_base is not None
        self.tb = Fraction(stream.time_base)
        # Seconds from the first frame = the packet's time, less the container's start and the frame's place
        # on the render timeline (what the plan's grid counts from).
        self.zero = Fraction(container.start_time or 0, 1_000_000) + plan.timeline.origin
        # How far before a time a seek aims to be sure of landing before the keyframe that starts it.
        self.seek_back_s = (video.keyframe_interval_s or 0) + 1
        self.seek_back = int(Fraction(self.seek_back_s) / self.tb)
        self.gops: list[_Gop] = []
        self.inside: list[Sample] = []
        self.next_key = 0
        self.error: BaseException | None = None
        self.lock = threading.Condition()

    def close(self) -> None:
        # The lanes and the search refer to each other: without this the decoders (tens of MB each at 1080p)
        # would live on until the garbage collector next runs, and a worker's renders would pile them up.
        for lane in self.lanes:
            lane.close()
        self.lanes = []

    def seconds(self, pts: int) -> float:
        return float(Fraction(pts) * self.tb - self.zero)

    def look(self, frame: Any) -> Sample:
        """The faces on ``frame``."""
        import numpy as np

        gray = _small_luma(frame)
        gray = np.rot90(gray, self.video.rotation // 90) if self.video.rotation else gray
        w = gray.shape[1]
        # The whole picture, always: a window around where the speaker was would be cheaper, but the cascade
        # misses a face there one time in a few (its scan grid moves with the window's edge).
        size = max(8, round(MIN_FACE * w))
        cascade = getattr(self.cascades, "cascade", None)
        if cascade is None:
            cascade = self.cascades.cascade = _cascade()
        found = cascade.detectMultiScale(gray, SCALE_STEP, 4, minSize=(size, size))
        t = self.seconds(frame.pts)
        return Sample(t, tuple(reframe.Face(t, (x + fw / 2) / w, fw / w) for x, _y, fw, _fh in found))

    def index(self, spans: list[tuple[float, float]]) -> None:
        """The keyframes the search decodes (read from the packets, nothing decoded), each with its points."""
        import bisect

        lane = self.lanes[0]
        keys: dict[int, tuple[int, float]] = {}  # pts: (dts, seconds)
        at: float | None = None  # time of the last packet read
        for start, end in spans:
            if at is not None and at >= end:
                continue
            # Read on from the first packet, or through a short gap of the cut; else seek, a keyframe interval
            # early (some demuxers land near the time, not on a keyframe).
            read_on = start <= self.seek_back_s if at is None else start - at <= SEEK_GAP_S
            if not read_on:
                aim = max(Fraction(0), Fraction(start) - Fraction(self.seek_back_s)) + self.zero
                lane.container.seek(int(aim / self.tb), stream=lane.stream, backward=True)
            # From the keyframe at or before the span's start to the first one after its end.
            for packet in lane.container.demux(lane.stream):
                check_stopped(self.cancel, self.deadline)
                if packet.pts is None or packet.size == 0:
                    continue
                t = self.seconds(packet.pts)
                at = t if at is None else max(at, t)
                if packet.is_keyframe:
                    keys[packet.pts] = (packet.dts if packet.dts is not None else packet.pts, t)
                    if t >= end:
                        break
        gops: list[_Gop] = []
        for pts, (dts, t) in sorted(keys.items()):
            # An intra-only source (every frame a keyframe) is searched at the design rate, not at every frame.
            if not gops or t - gops[-1].t >= 1 / SAMPLE_FPS - 1e-6:
                gops.append(_Gop(pts, dts, t))
        times = [g.t for g in gops]
        for p in grid(spans):
            i = bisect.bisect_right(times, p + 1e-6) - 1
            if i >= 0:
                gops[i].points.append(p)
        # A keyframe read through in a short gap is decoded only where the GOP before it needs its sight.
        self.gops = [g for i, g in enumerate(gops) if g.points or (i > 0 and gops[i - 1].points)]

    def run(self) -> list[Sample]:
        threads = [threading.Thread(target=self._work, name=f"faces-{i}") for i in range(1, self.workers)]
        for thread in threads:
            thread.start()
        self._work()
        for thread in threads:
            thread.join()
        if self.error is not None:
            raise self._pop_error()
        return [g.sample for g in self.gops if g.sample is not None] + self.inside

    def _pop_error(self) -> BaseException:
        """The error, handed on with no reference left here or in the raising frame: its traceback holds the
        frames that hold this search, and the two would keep each other (and every decoder) alive."""
        error, self.error = self.error, None
        assert error is not None
        return error

    def _work(self) -> None:
        try:
            while (task := self._next()) is not None:
                lane, g, points = task
                gop = self.gops[g]
                if points is None:  # the keyframe
                    until = self.gops[g + 1].pts if g + 1 < len(self.gops) else None
                    frame = lane.keyframe(gop, until)
                    sample = None if frame is None else self.look(frame)
                    with self.lock:
                        gop.sample, gop.done, lane.busy = sample, True, False
                        lane.holding = g if sample is not None and gop.points else None
                        self.lock.notify_all()
                else:  # the points inside its GOP
                    seen = lane.inside(points)
                    with self.lock:
                        self.inside += seen
                        lane.busy = False
                        self.lock.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, which raises it
            with self.lock:
                self.error = self.error or exc
                self.lock.notify_all()

    def _next(self) -> tuple[_Lane, int, list[float] | None] | None:
        """The next task: a look inside a GOP that needs one, else the next keyframe on a free lane."""
        with self.lock:
            while self.error is None:
                check_stopped(self.cancel, self.deadline)
                for lane in self.lanes:
                    g = lane.holding
                    if g is None:
                        continue
                    after = self.gops[g + 1] if g + 1 < len(self.gops) else None
                    if after is not None and not after.done:
                        continue  # its decision waits for the next keyframe's sight
                    pair = (self.gops[g].sample, after.sample if after is not None else None)
                    seen = [s for s in pair if s is not None]
                    lane.holding = None
                    points = wanted(self.gops[g].points, seen)
                    if points:
                        lane.busy = True
                        return lane, g, points
                free = next((lane for lane in self.lanes if not lane.busy and lane.holding is None), None)
                if self.next_key < len(self.gops) and free is not None:
                    free.busy = True
                    self.next_key += 1
                    return free, self.next_key - 1, None
                idle = not any(lane.busy or lane.holding is not None for lane in self.lanes)
                if self.next_key == len(self.gops) and idle:
                    return None
                self.lock.wait(0.1)
            return None


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
        search = _Search(plan, options, cancel, deadline)
        try:
            search.index(spans)
            seen = search.run()
        finally:
            search.close()
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
