"""Where the speaker is: faces found on a few frames a second of the kept pieces (``output.aspect``).

The source is decoded in this process with PyAV, opened as hardened as the probe opens it (allowlists, the
pixel limit) and allowed only its video decoder; only the kept pieces are decoded (a seek to each), and
non-reference frames are skipped by the decoder, so the cost is a fraction of the decode the render does
anyway. Every :data:`SAMPLE_FPS`-th of a second a frame is shrunk to :data:`SAMPLE_WIDTH` grey pixels and
OpenCV's bundled frontal-face cascade (it ships inside ``opencv-python-headless``; nothing is downloaded)
runs on it. The sightings go to ``worker/reframe.py``, which plans the crop's path; the path is part of the
plan, so whole renders and every chunk of a chunked one crop alike.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any

from worker import reframe
from worker.errors import ErrorCode, SourceError
from worker.planner import Plan
from worker.probe import input_options

#: Frames a second the detector looks at.
SAMPLE_FPS = 3
#: A gap of the cut longer than this (seconds) is skipped by a seek; a shorter one is decoded through.
SEEK_GAP_S = 2
#: The width the detector sees (the picture is shrunk to it, keeping its shape).
SAMPLE_WIDTH = 480
#: Smallest face the detector reports, as a share of the sampled width (a face in a wide shot of a room).
MIN_FACE = 0.04
#: How much larger each of the detector's scans looks than the last: 1.2 halves its time against 1.1 and still
#: finds a talking head (the crop's path needs where the face is, not its exact size).
SCALE_STEP = 1.2


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


def sightings(plan: Plan) -> list[reframe.Face]:
    """Faces on frames of the kept pieces, at source times (seconds from the first frame)."""
    import av
    import numpy as np

    video = plan.info.video
    assert video is not None
    cascade = _cascade()
    rate = plan.timeline.rate
    faces: list[reframe.Face] = []
    options = input_options(plan.limits.max_source_pixels, (video.codec,))
    try:
        with av.open(plan.info.path, options=options, timeout=(10.0, 10.0)) as container:
            stream = next(s for s in container.streams.video if s.index == video.index)
            stream.codec_context.skip_frame = "NONREF"
            stream.thread_type = "AUTO"
            tb = stream.time_base
            assert tb is not None
            origin = Fraction(video.start)
            decoded: Any = None  # the frames from the last seek on
            held: Any = None  # a frame read past the end of the last piece: the next one's, perhaps
            at = None  # source time the decoder has reached
            for piece in plan.timeline.pieces:
                start = origin + Fraction(max(piece.src, 0)) / rate
                end = origin + Fraction(piece.src + piece.length) / rate
                if at is None or start - at > SEEK_GAP_S:
                    # A seek decodes from the keyframe before it: it pays only across a gap longer than that;
                    # a shorter gap is decoded through (most of a filler cut is kept).
                    container.seek(int(start / tb), stream=stream, backward=True)
                    decoded, held = container.decode(stream), None
                next_t = start
                while True:
                    frame = held if held is not None else next(decoded, None)
                    held = None
                    if frame is None:
                        break
                    if not isinstance(frame, av.VideoFrame) or frame.pts is None:
                        continue
                    t = Fraction(frame.pts) * tb
                    at = t
                    if t >= end:
                        held = frame
                        break
                    if t < next_t:
                        continue
                    next_t = t + Fraction(1, SAMPLE_FPS)
                    gray = _small_luma(frame)
                    gray = np.rot90(gray, video.rotation // 90) if video.rotation else gray
                    w = gray.shape[1]
                    size = max(8, round(MIN_FACE * w))
                    for x, _y, fw, _fh in cascade.detectMultiScale(gray, SCALE_STEP, 4, minSize=(size, size)):
                        faces.append(reframe.Face(float(t - origin), (x + fw / 2) / w, fw / w))
    except av.error.FFmpegError as exc:
        raise SourceError(
            f"the source could not be read to find faces ({exc})", code=ErrorCode.SOURCE_UNREADABLE
        ) from exc
    return faces


def follow_speaker(plan: Plan) -> Plan:
    """``plan`` with its crop's path (``output.aspect``), unless it has one or does not crop."""
    if plan.encode.crop is None or plan.crop_path is not None or plan.info.video is None:
        return plan
    cw, _ch, _x, _y = plan.encode.crop
    pieces = [(float(Fraction(p.src) / plan.timeline.rate), p.out, p.length) for p in plan.timeline.pieces]
    knots = reframe.crop_path(
        sightings(plan),
        pieces,
        fps=float(plan.timeline.rate),
        picture_w=plan.info.video.display_width,
        crop_w=cw,
    )
    return dataclasses.replace(plan, crop_path=knots)
