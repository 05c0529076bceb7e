"""Scratch space on a worker's disk: whose it is, and cleaning up after processes that died.

Everything a worker process writes under ``RENDER_WORK_DIR`` is in a directory that names its owner:

* ``job-<render_id>/``: one render's source and output (:class:`Scratch`), kept across retries on this host;
* ``render-<pid>-…/`` and ``render-chunks-<pid>-…/``: a render's filter graphs and pieces (:func:`temp_dir`);
* ``sources-<pid>/``: the source cache of a chunked render's parts (:mod:`worker.source_cache`).

Each holds an ``.owner`` file with the owning process's id and start time (so a pid reused by a later process,
as in a restarted container sharing the volume, is not mistaken for the owner). A process killed with
SIGKILL leaves its directories behind; :func:`clean_dead` removes those of processes no longer alive on this
host, and never a live one's. Workers run it at boot, before they take a job. A ``job-`` directory kept on
purpose for a retry (an upload that failed after the render) has no owner once its delivery ended: it stays
until a retry reuses it or :data:`SCRATCH_MAX_AGE_S` passes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: A kept scratch directory (a retry that never came back to this host) is removed after this long.
SCRATCH_MAX_AGE_S = 24 * 3600
OWNER_FILE = ".owner"
_OWNED_PREFIXES = ("job-", "render-", "sources-")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is dead, whatever its parent has not yet collected
        return None
    return fields[19]


def owner_tag(pid: int | None = None) -> str:
    """``<pid>:<start time>`` of a process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_time(pid) or '?'}"


def claim(directory: Path) -> Path:
    """Mark ``directory`` as this process's (see the module's notes); returns it."""
    (directory / OWNER_FILE).write_text(owner_tag())
    return directory


def release(directory: Path) -> None:
    """``directory`` outlives this process on purpose: nobody owns it now."""
    (directory / OWNER_FILE).unlink(missing_ok=True)


def temp_dir(prefix: str, work_dir: str | os.PathLike[str] | None) -> tempfile.TemporaryDirectory[str]:
    """A temporary directory ``<prefix>-<pid>-…`` in ``work_dir``, claimed by this process."""
    tmp = tempfile.TemporaryDirectory(prefix=f"{prefix}-{os.getpid()}-", dir=work_dir or None)
    claim(Path(tmp.name))
    return tmp


def _owner_alive(entry: Path) -> bool | None:
    """Whether the process that owns ``entry`` lives (True/False), or None when no process owns it."""
    try:
        tag = (entry / OWNER_FILE).read_text().strip()
    except FileNotFoundError:
        tag = ""
    except OSError:
        return True  # unreadable: leave it be
    pid_text, _, started = tag.partition(":")
    if not pid_text.isdigit():
        # No owner file: a job- directory kept for a retry, or a directory from before owner files. The pid in
        # a render-<pid>- or sources-<pid> name still tells.
        parts = entry.name.split("-")
        named = next((p for p in parts[1:] if p.isdigit()), None) if not entry.name.startswith("job-") else None
        if named is None:
            return None
        pid_text, started = named, "?"
    now = _start_time(int(pid_text))
    if now is None:
        return False
    return started in ("?", now)


def _locked_by_someone(entry: Path) -> bool:
    """A live delivery holds a ``job-`` directory's flock (see :class:`Scratch`)."""
    lock = entry / ".lock"
    if not lock.exists():
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the lock we may just have taken
    return False


def clean_dead(work_dir: str | os.PathLike[str] | None) -> list[str]:
    """Remove the scratch directories of processes no longer alive on this host; returns their names."""
    root = Path(work_dir or tempfile.gettempdir())
    removed: list[str] = []
    with contextlib.suppress(OSError):
        for entry in sorted(root.iterdir()):
            if not entry.is_dir() or not entry.name.startswith(_OWNED_PREFIXES):
                continue
            if _owner_alive(entry) is not False or _locked_by_someone(entry):
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    if removed:
        log.warning("removed the scratch of %d dead worker process(es) in %s: %s", len(removed), root, removed)
    return removed


def _prune(root: Path) -> None:
    """Remove scratch directories of renders that never came back here (another worker finished them)."""
    cutoff = time.time() - SCRATCH_MAX_AGE_S
    with contextlib.suppress(OSError):
        for entry in root.glob("job-*"):
            with contextlib.suppress(OSError):
                if (entry / ".lock").exists() and entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)


class Scratch:
    """``<work_dir>/job-<render_id>``: one render's source and output, kept across retries on this host.

    Held under an exclusive ``flock`` while a delivery uses it. A second delivery of the same render on the
    same host (only possible while a lease is being lost) gets a private directory instead, so neither can
    delete the other's files. ``keep`` decides, when the delivery ends, whether the directory outlives it.
    """

    def __init__(self, work_dir: str, render_id: str) -> None:
        self.root = Path(work_dir or tempfile.gettempdir())
        self.shared = self.root / f"job-{render_id}"
        self.path = self.shared
        self.keep = False
        self._lock: int | None = None

    def __enter__(self) -> Scratch:
        _prune(self.root)
        self.shared.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.shared / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self.path = claim(Path(tempfile.mkdtemp(prefix=f"{self.shared.name}-", dir=self.root)))
            return self
        self._lock = fd
        claim(self.shared)
        os.utime(self.shared)  # fresh: not pruned while it may be reused
        return self

    def __exit__(self, *exc: object) -> None:
        if not (self.keep and self._lock is not None):
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            release(self.path)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
