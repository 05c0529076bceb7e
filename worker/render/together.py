"""Steps of one render run side by side (a chunked render's chunks and audio, a smart render's batches and
audio), stopped together: the first failure, or a cancel, stops every other one."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from worker.errors import Cancelled

T = TypeVar("T")


def side_by_side(
    calls: Sequence[Callable[[threading.Event], T]], *, workers: int, cancel: threading.Event | None = None
) -> list[T]:
    """Run ``calls`` on ``workers`` threads; each is handed the one stop event its ffmpeg runs watch.

    The event is set on ``cancel`` or on the first failure, so every other run is killed and none not yet
    started starts. Then :class:`Cancelled` if it was a cancel, else the first real failure (not the
    ``Cancelled`` of the runs stopped because of it); the results, in order, when every call succeeded.
    """
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures: list[concurrent.futures.Future[Any]] = [pool.submit(call, stop) for call in calls]
        pending: set[concurrent.futures.Future[Any]] = set(futures)
        while pending:
            finished, pending = concurrent.futures.wait(pending, timeout=0.1, return_when="FIRST_EXCEPTION")
            failed = any(not f.cancelled() and f.exception() is not None for f in finished)
            if failed or (cancel is not None and cancel.is_set()):
                stop.set()
                for f in pending:
                    f.cancel()
    if cancel is not None and cancel.is_set():
        raise Cancelled("the render was cancelled")
    errors = [e for f in futures if not f.cancelled() and (e := f.exception()) is not None]
    if errors:
        raise next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
    return [f.result() for f in futures]
