"""One downloaded source kept between the parts of a chunked render that land on the same worker process.

A chunked render of K chunks on W workers would otherwise download its source K times (plus once for the
assembly): a one-hour 1080p source of a few GiB, sixty times over. With this cache each worker process
downloads it once and renders every chunk of that render it takes from the same file.

Disk stays bounded as before: the cache holds **one** source per process. Before a process downloads
anything else (another render's source, a whole render's), it deletes the cached one if no part is using it,
so a process never holds more than it did without the cache: one source and what is rendered from it. A
source still in use by another thread of the process is left alone, and the new download goes to that
part's scratch directory instead, as without the cache (two jobs at once hold two sources, as before).

An entry is keyed by the source URI *and* its version (the object's ETag): an object overwritten between
two chunks is downloaded again, never reused stale. Storage is not consulted here; the caller passes the
version it read with its size check, and the download function.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from worker.scratch import OWNER_FILE, claim

log = logging.getLogger(__name__)

_DIR_PREFIX = "sources-"


class SourceCache:
    """A one-entry cache of downloaded sources under ``<work_dir>/sources-<pid>/``; thread-safe."""

    def __init__(self, work_dir: Path) -> None:
        self.root = work_dir
        self.dir = work_dir / f"{_DIR_PREFIX}{os.getpid()}"
        self._lock = threading.Lock()
        self._key: tuple[str, str] | None = None
        self._path: Path | None = None
        self._users = 0
        self._ready = threading.Event()
        self.downloads = 0  # how often a source was downloaded into the cache (tests, logs)
        self.hits = 0
        _prune_dead(work_dir)

    @contextlib.contextmanager
    def use(self, uri: str, version: str, suffix: str, download: Callable[[Path], None]) -> Iterator[Path | None]:
        """The local path of ``uri`` at ``version`` while the block runs, downloading it if it is not cached.

        Yields None when the cache's one entry is busy with another source (another thread's part): the
        caller then downloads into its own scratch directory. A failed download leaves nothing cached.
        """
        key = (uri, version)
        path: Path | None = None
        while True:
            busy = False
            with self._lock:
                if self._key == key:
                    if self._ready.is_set():
                        self._users += 1
                        self.hits += 1
                        path = self._path
                        break
                    waiting: threading.Event | None = self._ready  # another thread is downloading this source
                elif self._users == 0:
                    self._drop_locked()
                    path = self.dir / (hashlib.sha256(f"{uri}\n{version}".encode()).hexdigest()[:32] + suffix)
                    self._key, self._path, self._users = key, path, 1
                    self._ready = threading.Event()
                    waiting = None
                else:
                    busy = True
            if busy:  # yielded outside the lock: the caller's block may use the cache itself
                yield None
                return
            if waiting is None:
                assert path is not None
                try:
                    self.dir.mkdir(parents=True, exist_ok=True)
                    claim(self.dir)
                    download(path)
                except BaseException:
                    with self._lock:
                        self._users -= 1
                        self._drop_locked()
                        self._ready.set()  # wakes a waiting thread, which finds no entry and tries itself
                    raise
                with self._lock:
                    self.downloads += 1
                    self._ready.set()
                break
            waiting.wait()
        assert path is not None
        try:
            yield path
        finally:
            with self._lock:
                self._users -= 1

    def drop_idle(self, keep: tuple[str, str] | None = None) -> None:
        """Delete the cached source unless a part is using it (or it is ``keep``): before another download."""
        with self._lock:
            if self._users == 0 and self._key is not None and self._key != keep:
                self._drop_locked()

    def forget(self, uri: str) -> None:
        """Delete ``uri``'s cached copy, any version, once nothing uses it (its render has ended here)."""
        with self._lock:
            if self._users == 0 and self._key is not None and self._key[0] == uri:
                self._drop_locked()

    def close(self) -> None:
        with self._lock:
            self._drop_locked()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _drop_locked(self) -> None:
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the directory too, when nothing else is in it
                (self.dir / OWNER_FILE).unlink(missing_ok=True)
                self.dir.rmdir()
        self._key, self._path = None, None


def _prune_dead(work_dir: Path) -> None:
    """Remove the cache directories of processes that are gone (a crash, an earlier run in the same volume)."""
    with contextlib.suppress(OSError):
        for entry in work_dir.glob(f"{_DIR_PREFIX}*"):
            pid = entry.name[len(_DIR_PREFIX) :]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
