"""A smart render's join (``worker/render/splice.py``) under the faults a worker meets while it writes an
hour of copied video: the disk filling up is ``disk_full`` (the host's fault, retried elsewhere), never
``encode_failed``; a cancel or the time limit stops it between packets, not at the end of the file."""

from __future__ import annotations

import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest
from services import small_disk

from worker.errors import Cancelled, DiskFull, ErrorCode, RenderTimeout
from worker.render.splice import Part, join_video


def whole_source(path: Path, copies: int) -> tuple[list[Part], Fraction]:
    """The source's every frame, ``copies`` times over: a long track to join."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        index, frames, rate = stream.index, stream.frames, stream.average_rate
    assert frames and rate
    return [Part(str(path), index, 0, frames)] * copies, Fraction(rate)


def test_a_disk_that_fills_while_the_track_is_joined_is_disk_full(media: dict[str, Path], tmp_path: Path) -> None:
    parts, rate = whole_source(media["cfr30"], 1)  # 13 MB of video onto a 4 MB disk
    with small_disk(tmp_path / "disk", 4) as disk, pytest.raises(DiskFull) as info:
        join_video(parts, disk / "track.mp4", rate=rate, muxer="mp4")
    assert info.value.code is ErrorCode.DISK_FULL and info.value.transient
    assert "disk is full" in info.value.message


class CancelledWhileWriting(threading.Event):
    """Set once the join has looked at it more times than its first pass does (once a part): the cancel lands
    while packets are being written, where an hour of copy spends its time."""

    def __init__(self, looks_before: int) -> None:
        super().__init__()
        self.looks, self.looks_before = 0, looks_before

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks > self.looks_before


def test_a_cancel_stops_a_join_while_it_writes(media: dict[str, Path], tmp_path: Path) -> None:
    parts, rate = whole_source(media["cfr30"], 3)
    cancel = CancelledWhileWriting(len(parts))
    with pytest.raises(Cancelled):
        join_video(parts, tmp_path / "cancelled.mp4", rate=rate, muxer="mp4", cancel=cancel)
    # Stopped within a few hundred packets of the cancel, not at the end of the 18000.
    assert cancel.looks == len(parts) + 1


def test_a_join_past_the_time_limit_is_a_timeout(media: dict[str, Path], tmp_path: Path) -> None:
    parts, rate = whole_source(media["cfr30"], 3)
    with pytest.raises(RenderTimeout):
        join_video(parts, tmp_path / "late.mp4", rate=rate, muxer="mp4", deadline=time.monotonic() - 1)
