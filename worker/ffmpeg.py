"""Run ffmpeg: argument list in, progress out, killable, errors with context.

* Never a shell: ``subprocess.Popen`` gets a list, so nothing in a job can be
  interpreted as shell syntax.
* Progress comes from ``-progress pipe:1`` (``out_time_us``) and is reported
  through a callback as a 0..1 ratio of the expected output duration.
* The wait is a poll loop, not a blocking ``wait()``, so a cancel event or a
  deadline kills ffmpeg within a fraction of a second.
* stderr is kept as a bounded tail for the error message.
* stderr is also read for the source's faults (:data:`SOURCE_FAULTS`): a frame
  over the pixel limit, a decoder, demuxer or protocol off the allowlists. Those
  are the tenant's input, not the encoder, so they fail with a ``source_*``
  code, and ffmpeg is stopped at the first one. A decoder's refusal of a frame
  is not fatal to ffmpeg (it logs, drops the frame and exits 0), so without
  this a source with one huge frame in the middle would render, short.
"""

from __future__ import annotations

import collections
import functools
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import IO

from worker.errors import (
    Cancelled,
    ConfigError,
    DiskFull,
    EncodeError,
    ErrorCode,
    RenderError,
    RenderTimeout,
    SourceError,
)
from worker.settings import child_env

ProgressFn = Callable[[float], None]
POLL_S = 0.05
STDERR_TAIL_LINES = 40

# A decoder refused by the whitelist: a fault only for a decoder the render uses (see ``run``'s ``decoders``).
_DECODER_REFUSED = re.compile(r"Codec \((?P<name>[\w-]{1,32})\) not on whitelist")
# A decoder ffmpeg could not open for a stream it decodes (its log names the decoder).
_DECODER_FAILED = re.compile(r"\[dec:(?P<name>[\w-]{1,32}) @ [^\]]{1,40}\] Error while opening decoder")
# ffmpeg's messages for faults of the input, and what they mean for the render.
# Names are captured only as short word-like runs, so a message never quotes
# more than a few bytes a tenant chose.
SOURCE_FAULTS: tuple[tuple[re.Pattern[str], ErrorCode, str], ...] = (
    (
        # libavutil/imgutils.c, from the decoder's max_pixels (RENDER_MAX_SOURCE_PIXELS)
        re.compile(r"Picture size (?P<w>\d{1,9})x(?P<h>\d{1,9}) exceeds specified max pixel count (?P<n>\d{1,19})"),
        ErrorCode.SOURCE_TOO_LARGE,
        "a frame of the source is {w}x{h}, over the limit of {n} pixels",
    ),
    (
        # The same check, for positive sizes too large for any buffer (past INT_MAX / 8 pixels).
        re.compile(r"Picture size (?P<w>[1-9]\d{0,8})x(?P<h>[1-9]\d{0,8}) is invalid"),
        ErrorCode.SOURCE_TOO_LARGE,
        "a frame of the source is {w}x{h}, too large to decode",
    ),
    (
        _DECODER_REFUSED,
        ErrorCode.SOURCE_UNREADABLE,
        "the source needs the {name} decoder, which is not allowed",
    ),
    (
        re.compile(r"Format (?P<name>[\w,-]{1,64}) not on whitelist"),
        ErrorCode.SOURCE_UNREADABLE,
        "the source needs the {name} demuxer, which is not allowed",
    ),
    (
        re.compile(r"Format not on whitelist"),  # the wording when the demuxer was forced with -f
        ErrorCode.SOURCE_UNREADABLE,
        "the source needs a demuxer that is not allowed",
    ),
    (
        re.compile(r"Protocol '(?P<name>[\w+.-]{1,32})' not on whitelist"),
        ErrorCode.SOURCE_UNREADABLE,
        "the source refers to a {name} location, which is not allowed",
    ),
)


# ffmpeg's words for a write that found the disk full (strerror of ENOSPC, EDQUOT): the host's fault.
_DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded")


def source_fault(line: str, decoders: Collection[str] | None = None) -> SourceError | None:
    """The :class:`SourceError` an ffmpeg stderr line reports, if it reports one.

    ``decoders``: the decoders the render runs. ffmpeg's stream-info pass tries to open a decoder for every
    stream of the input, and the whitelist (only the render's own decoders) refuses the rest with the same
    message: those are streams the render ignores (cover art, subtitles), not faults. ``None``: every
    refusal is one.
    """
    for pattern, code, template in SOURCE_FAULTS:
        m = pattern.search(line)
        if m is not None:
            name = m.groupdict().get("name")
            if decoders is not None and pattern is _DECODER_REFUSED and name not in decoders:
                continue
            return SourceError(template.format(**m.groupdict()), code=code)
    return None


@functools.cache
def default_ffmpeg() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def resolve_ffmpeg(path: str | None = None) -> str:
    """The configured binary (RENDER_FFMPEG_PATH via settings) or the bundled one."""
    return path or default_ffmpeg()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Have the kernel kill ffmpeg if the worker dies (kill -9, OOM): no orphaned encodes.

    The signal fires when the *thread* that started ffmpeg exits; that thread
    waits for ffmpeg in :func:`run`, so it outlives it in normal operation.
    """
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pump_progress(stream: IO[bytes], total_s: float, on_progress: ProgressFn | None) -> None:
    last = -1.0
    for raw in stream:
        line = raw.decode("utf-8", "replace").strip()
        key, _, value = line.partition("=")
        if key == "out_time_us" and on_progress and total_s > 0:
            try:
                ratio = min(1.0, max(0.0, int(value) / 1e6 / total_s))
            except ValueError:
                continue
            if ratio > last:
                last = ratio
                on_progress(ratio)
        elif key == "progress" and value == "end" and on_progress:
            on_progress(1.0)


def _pump_tail(
    stream: IO[bytes],
    tail: collections.deque[str],
    first: list[str],
    faults: list[RenderError],
    decoders: Collection[str] | None,
) -> None:
    refused: set[str] = set()
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip()
        m = _DECODER_REFUSED.search(line)
        if decoders is not None and m is not None and m.group("name") not in decoders:
            # Refused as it should be. An ignored stream's decoder (ffmpeg's stream-info pass tries one for
            # every stream) is neither a fault nor the cause of anything, unless ffmpeg then really needs it.
            refused.add(m.group("name"))
            continue
        if _DISK_FULL.search(line) and not faults:
            faults.append(DiskFull("the worker's disk is full: ffmpeg could not write its output"))
        opening = _DECODER_FAILED.search(line)
        if opening is not None and opening.group("name") in refused and not faults:
            # A stream the render decodes turned out to need it (a file that showed the probe another codec).
            faults.append(SourceError(f"the source needs the {opening.group('name')} decoder, which is not allowed",
                                      code=ErrorCode.SOURCE_UNREADABLE))  # fmt: skip
        if line and not first:
            first.append(line)  # ffmpeg names the cause first; later lines are it unwinding
        if not faults:
            fault = source_fault(line, decoders)
            if fault is not None:
                faults.append(fault)
        tail.append(line)


def run(
    args: Sequence[str],
    *,
    ffmpeg: str | None = None,
    expected_duration_s: float = 0.0,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
    cwd: str | os.PathLike[str] | None = None,
    decoders: Collection[str] | None = None,
) -> None:
    """Run ffmpeg with ``args``; raise on failure, cancel or deadline (monotonic time).

    ``decoders``: the decoders the render runs (``SourceInfo.decoders``), see :func:`source_fault`.
    """
    argv = [resolve_ffmpeg(ffmpeg), *args]
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    first: list[str] = []
    faults: list[RenderError] = []
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=child_env(),
            start_new_session=True,  # a terminal's Ctrl-C goes to us, and we decide
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    except OSError as exc:
        raise EncodeError(f"cannot start ffmpeg ({argv[0]}): {exc}") from exc
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        threading.Thread(target=_pump_progress, args=(proc.stdout, expected_duration_s, on_progress), daemon=True),
        threading.Thread(target=_pump_tail, args=(proc.stderr, tail, first, faults, decoders), daemon=True),
    ]
    for t in readers:
        t.start()
    stop: RenderError | None = None
    try:
        while proc.poll() is None:
            if cancel is not None and cancel.is_set():
                stop = Cancelled("the render was cancelled")
            elif deadline is not None and time.monotonic() > deadline:
                stop = RenderTimeout("the render ran past its time limit")
            elif faults:
                stop = faults[0]  # the source's fault: no use encoding the rest
            if stop is not None:
                proc.kill()
                proc.wait()
                break
            time.sleep(POLL_S)
    finally:
        if proc.poll() is None:  # an exception in the loop (KeyboardInterrupt, say)
            proc.kill()
            proc.wait()
        for t in readers:
            t.join(timeout=2)
    if stop is None and faults:
        stop = faults[0]  # seen as ffmpeg exited, possibly with status 0
    if stop is not None:
        stop.detail = stop.detail or "\n".join(tail) or None
        raise stop
    if proc.returncode != 0:
        detail = "\n".join(tail)
        cause = first[0] if first else "no error output"
        raise EncodeError(f"ffmpeg exited with status {proc.returncode}: {cause}", detail=detail)


def run_quick(
    args: Sequence[str], *, ffmpeg: str | None = None, timeout_s: float = 15.0, stdout: bool = False
) -> tuple[int, str]:
    """A short ffmpeg run (probes): returns (exit status, stderr, or stdout if asked); -1 on timeout."""
    argv = [resolve_ffmpeg(ffmpeg), *args]
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False, env=child_env()
        )
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout_s} s"
    except OSError as exc:
        return -1, str(exc)
    return done.returncode, (done.stdout if stdout else done.stderr).decode("utf-8", "replace")


#: The oldest ffmpeg the worker's commands run on: the filter graph goes in with ``-/filter_complex FILE``
#: (render.py), an option syntax ffmpeg 7.0 introduced. Older ones reject every render with encode_failed.
MIN_VERSION = (7, 0)
_VERSION = re.compile(r"ffmpeg version n?(\d+)\.(\d+)")


def version(path: str | None = None, *, timeout_s: float = 15.0) -> tuple[str, tuple[int, int] | None]:
    """The first line of ``ffmpeg -version`` and the (major, minor) it names, if it names one.

    Builds from git name a revision (``N-12345-g…``) rather than a release, so no number comes out of those.
    """
    code, out = run_quick(["-hide_banner", "-version"], ffmpeg=path, timeout_s=timeout_s, stdout=True)
    line = out.strip().splitlines()[0] if out.strip() else ""
    if code != 0 or not line.startswith("ffmpeg version"):
        raise ConfigError(f"ffmpeg at {resolve_ffmpeg(path)!r} does not run: {(line or f'exit status {code}')[:200]}")
    m = _VERSION.match(line)
    return line, (int(m.group(1)), int(m.group(2))) if m else None


def check_binary(path: str | None = None) -> str:
    """Refuse, at start-up, an ffmpeg that cannot run the worker's commands; returns its version line.

    The alternative, rewriting commands for older releases (``-filter_complex_script``), would keep a second
    command shape alive for distributions' old packages; one shape, checked here, is simpler to trust.
    """
    line, found = version(path)
    setting = "RENDER_FFMPEG_PATH" if path else "the bundled ffmpeg (imageio-ffmpeg)"
    if found is None:
        # A git build: no release number to compare, so ask it whether it reads an option from a file.
        with tempfile.TemporaryDirectory(prefix="ffmpeg-check-") as tmp:
            graph = Path(tmp) / "graph.txt"
            graph.write_text("anull")
            args = ["-hide_banner", "-v", "error", "-f", "lavfi", "-i", "anullsrc=d=0.01", "-/af", str(graph)]
            code, err = run_quick([*args, "-f", "null", "-"], ffmpeg=path)
        if code != 0:
            raise ConfigError(
                f"{setting}: {line[:120]!r} does not accept -/OPTION FILE arguments (ffmpeg >= "
                f"{MIN_VERSION[0]}.{MIN_VERSION[1]} needed): {err.strip()[:200]}"
            )
        return line
    if found < MIN_VERSION:
        raise ConfigError(
            f"{setting}={resolve_ffmpeg(path)!r} is ffmpeg {found[0]}.{found[1]} ({line[:120]!r}); the worker needs "
            f"ffmpeg {MIN_VERSION[0]}.{MIN_VERSION[1]} or newer (its filter graphs go in with -/filter_complex)"
        )
    return line


def temp_output_path(final: Path, suffix: str) -> Path:
    """A sibling of ``final`` that is renamed into place only on success."""
    return final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.partial{suffix}")
