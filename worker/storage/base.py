"""The storage interface: where sources come from and where outputs go.

A render reads one source object and writes one output object. Everything the
pipeline needs from object storage fits in a handful of calls, so the rest of
the worker depends on this small :class:`Storage` interface and never on
boto3: :class:`~worker.storage.s3.S3Storage` talks to S3-compatible stores and
:class:`~worker.storage.memory.MemoryStorage` keeps objects in a dict for unit
tests and ``render-cli``.

Error mapping (the same for every implementation)::

    bad URI or scheme, file:// not allowed   InvalidJob    invalid_job       permanent
    source missing or not readable           SourceError   source_not_found  permanent
    network, 5xx, throttling, timeouts       StorageError  storage_failed    transient

Transient failures are retried in-process by :func:`with_retries` (tenacity; seconds of
backoff, for blips); when those run out the :class:`StorageError` still says
``transient`` so the queue layer may retry the whole job later (minutes of
backoff, for outages) before the render finally fails with ``storage_failed``.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import random
import re
import shutil
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import tenacity

from worker.errors import (
    DiskFull,
    ErrorCode,
    InvalidJob,
    RenderError,
    SourceError,
    StorageError,
    TransferStopped,
    disk_full_in,
    excerpt,
)
from worker.settings import URL_EXPIRY_RANGE

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Default in-process retry policy: four tries over roughly 0.5 + 1 + 2 s.
DEFAULT_ATTEMPTS = 4
DEFAULT_BASE_DELAY_S = 0.5
DEFAULT_MAX_DELAY_S = 8.0

#: SigV4 presigned URLs cannot outlive seven days.
MAX_PRESIGN_EXPIRY_S = URL_EXPIRY_RANGE[1]

_SAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")
# Path separators, quotes, backslashes and control characters: never in a download's name, whatever the script.
_UNSAFE_DISPLAY = re.compile(r'[\x00-\x1f\x7f"/\\]+')
_SAFE_KEY_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Lenient on purpose (S3-compatible stores allow more than AWS does); it only has
# to stop URIs whose "bucket" is really userinfo, a port or garbage. Always used
# with fullmatch: "$" would let a trailing newline through.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
# C0 controls, DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

#: S3's own limit on the length of a key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024


@dataclasses.dataclass(frozen=True)
class SourceURI:
    """A parsed source location: ``s3://bucket/key`` or ``file:///abs/path``."""

    scheme: str  # "s3" or "file"
    bucket: str = ""  # s3 only
    key: str = ""  # s3 only
    path: Path | None = None  # file only

    def __str__(self) -> str:
        if self.scheme == "file" and self.path is not None:
            return self.path.as_uri()
        return f"s3://{self.bucket}/{self.key}"


def parse_uri(uri: str) -> SourceURI:
    """Parse a source URI, rejecting anything the worker cannot fetch as ``invalid_job``.

    S3 keys are taken verbatim (``s3://b/my file.mp4`` is the key ``my file.mp4``,
    as the AWS CLI writes them), so what intake checks is exactly what goes on
    the wire; see :func:`check_key` for what a key may not hold. ``file://``
    URIs are percent-decoded, as :meth:`pathlib.Path.as_uri` encodes them.
    Whether ``file://`` and a given bucket are *allowed* is the storage's
    decision (and intake's, with the same settings), not the parser's.

    Any string gives a :class:`SourceURI` or :class:`InvalidJob`, never another
    exception: the URI is a tenant's value.
    """
    if not isinstance(uri, str) or not uri:
        raise InvalidJob(f"source.uri must be a non-empty string, got {excerpt(uri)}")
    if uri[:5].lower() == "s3://":
        # Split by hand rather than with urlsplit: "s3://b?x/key" must not parse
        # as bucket "b", and the key must be exactly the bytes after the bucket.
        bucket, slash, key = uri[5:].partition("/")
        if not _BUCKET.fullmatch(bucket) or not slash or not key:
            raise InvalidJob(f"source.uri must look like s3://bucket/key, got {excerpt(uri)}")
        check_key(key, what="source.uri key")
        return SourceURI("s3", bucket=bucket, key=key)
    if _CONTROL.search(uri):
        raise InvalidJob(f"source.uri may not contain control characters, got {excerpt(uri)}")
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError as exc:  # "file://[" and the like
        raise InvalidJob(f"source.uri is not a valid URI, got {excerpt(uri)}") from exc
    if parts.scheme.lower() == "file":
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise InvalidJob(f"source.uri must look like file:///absolute/path, got {excerpt(uri)}")
        path = Path(urllib.request.url2pathname(parts.path))
        if not path.is_absolute() or ".." in path.parts or _CONTROL.search(str(path)):
            raise InvalidJob(f"source.uri must name an absolute path, no '..' or control characters: {excerpt(uri)}")
        return SourceURI("file", path=path)
    if parts.scheme.lower() == "s3":  # "s3:", "s3:/b/k"
        raise InvalidJob(f"source.uri must look like s3://bucket/key, got {excerpt(uri)}")
    raise InvalidJob(f"source.uri scheme must be s3:// (or file:// where allowed), got {excerpt(uri)}")


def check_key(key: str, *, what: str = "object key") -> str:
    """``key`` if it is an S3 key that every S3-compatible store reads the same way.

    Refused: empty, ``.`` and ``..`` segments (a normalising server resolves
    ``media/../renders/x`` to another object, or another bucket in path-style
    addressing), control characters (they end up in logs and temp paths), text
    that is not valid UTF-8 (lone surrogates from JSON), and keys over S3's
    1024-byte limit.
    """
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidJob(f"{what} is not valid UTF-8: {excerpt(key)}") from exc
    if size > MAX_KEY_BYTES:
        raise InvalidJob(f"{what} is {size} bytes long, over the S3 limit of {MAX_KEY_BYTES}")
    if _CONTROL.search(key):
        raise InvalidJob(f"{what} may not contain control characters, got {excerpt(key)}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidJob(f"{what} may not have empty, '.' or '..' path segments, got {excerpt(key)}")
    return key


def check_source_bucket(src: SourceURI, allowed: Collection[str]) -> None:
    """Refuse an ``s3://`` source outside ``allowed`` (``RENDER_SOURCE_BUCKETS``; empty means any bucket).

    The allowed names are not quoted back: the error goes to the tenant.
    """
    if src.scheme == "s3" and allowed and src.bucket not in allowed:
        raise InvalidJob(f"source.uri bucket {excerpt(src.bucket)} is not one the worker may read sources from")


def output_key(prefix: str, render_id: str, ext: str) -> str:
    """The deterministic output key ``<prefix>/<render_id>/<render_id>.<ext>``.

    Deterministic so that a redelivered job overwrites its own output instead
    of leaving an orphan; the parts are checked so an odd id can never escape
    the prefix (``..``, slashes).
    """
    if not isinstance(render_id, str) or not _SAFE_KEY_PART.fullmatch(render_id):
        raise InvalidJob(f"render_id must be letters, digits, '.', '_' or '-', got {excerpt(render_id)}")
    if not isinstance(ext, str) or not re.fullmatch(r"[A-Za-z0-9]+", ext):
        raise InvalidJob(f"output extension must be alphanumeric, got {excerpt(ext)}")
    prefix = prefix.strip("/")
    name = f"{render_id}/{render_id}.{ext}"
    return f"{prefix}/{name}" if prefix else name


def safe_filename(filename: str, default: str = "download") -> str:
    """A filename that is safe inside ``Content-Disposition: attachment; filename="..."``.

    Anything outside ``[A-Za-z0-9._-]`` becomes ``_`` (quotes, slashes, CR/LF,
    non-ASCII), leading dots are dropped so the download is not a hidden file,
    and the length is capped. Browsers then save exactly this name.
    """
    name = _SAFE_FILENAME.sub("_", filename).strip("._")
    if len(name) > 150:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 150 - len(ext) - 1] + dot + ext) if dot and len(ext) <= 10 else name[:150]
    return name or default


def display_filename(filename: str, default: str = "download") -> str:
    """``filename`` as a user would want it saved, any script kept: no path, control or quote characters, no
    leading dots, at most 150 characters."""
    name = _UNSAFE_DISPLAY.sub("_", filename).strip(" ._")
    return name[:150] or default


def content_disposition(filename: str) -> str:
    """``attachment`` (browsers download, not play, the output) with the file name as RFC 6266 has it: an
    ASCII ``filename`` every client understands, and ``filename*`` (RFC 5987, UTF-8) when the name has more."""
    ascii_name = safe_filename(filename)
    shown = display_filename(filename)
    header = f'attachment; filename="{ascii_name}"'
    if shown != ascii_name:
        header += f"; filename*=UTF-8''{urllib.parse.quote(shown, safe='')}"
    return header


def with_retries(
    fn: Callable[[], T],
    attempts: int,
    base_delay_s: float,
    max_delay_s: float,
    sleep: Callable[[float], None] = time.sleep,
    *,
    what: str = "storage operation",
    rng: random.Random | None = None,
) -> T:
    """Call ``fn`` until it succeeds, retrying transient :class:`StorageError` with backoff.

    Backoff is exponential (``base * 2**n`` capped at ``max``) with equal jitter
    (half fixed, half random) so a fleet that failed together does not retry
    together. Permanent errors (missing source, bad URI) propagate at once:
    retrying them only delays the inevitable. When the attempts run out, the
    last error is re-raised as a :class:`StorageError` saying so, chained to it.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    rand = rng or random

    def equal_jitter(state: tenacity.RetryCallState) -> float:
        cap = min(max_delay_s, base_delay_s * (2 ** (state.attempt_number - 1)))
        return cap / 2 + rand.uniform(0, cap / 2)

    def warn(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        why = exc.message if isinstance(exc, RenderError) else repr(exc)
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "%s failed (attempt %d/%d), retrying in %.2fs: %s", what, state.attempt_number, attempts, delay, why
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=equal_jitter,
        retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, StorageError) and exc.transient),
        sleep=sleep,
        before_sleep=warn,
    )
    try:
        return retrying(fn)
    except tenacity.RetryError as exc:
        last = exc.last_attempt.exception()
        assert isinstance(last, StorageError)
        raise StorageError(
            f"{what} failed after {attempts} attempts, retries exhausted: {last.message}", detail=last.detail
        ) from last


#: A download is given this long plus its size at :data:`MIN_FETCH_BPS` before it counts as stalled.
FETCH_BASE_S = 60.0
#: The slowest transfer rate a healthy link to the store keeps up (8 Mbit/s); far below any datacenter's.
MIN_FETCH_BPS = 1_000_000


def fetch_deadline_s(size: int) -> float:
    """The wall-clock time one download attempt of ``size`` bytes may take."""
    return FETCH_BASE_S + size / MIN_FETCH_BPS


class _AttemptDeadline:
    """A stop event for one attempt: set by the caller's ``stop`` or when ``seconds`` have passed."""

    def __init__(self, outer: threading.Event | None, seconds: float) -> None:
        self.stop = threading.Event()
        self.expired = False
        self._outer = outer
        self._until = time.monotonic() + seconds
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fetch-deadline", daemon=True)

    def __enter__(self) -> _AttemptDeadline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(0.05):
            if self._outer is not None and self._outer.is_set():
                self.stop.set()
                return
            if time.monotonic() >= self._until:
                self.expired = True
                self.stop.set()
                return


@dataclasses.dataclass(frozen=True)
class SourceStat:
    """What a HEAD of a source says: its size, and a version that changes whenever its bytes do.

    The version is the object's ETag on S3 (``mtime_ns-size`` for a ``file://`` source, a digest in memory):
    the parts of a chunked render check that they all read the same bytes.
    """

    size: int
    version: str


class Storage(abc.ABC):
    """Object storage as the pipeline sees it.

    ``fetch``/``size`` read *sources* (from the allowed buckets, or ``file://``
    where allowed: intake checks the same, and this is the second line);
    ``put``/``presign``/``exists``/``delete`` work on *outputs* in the one
    output bucket, by key. Subclasses implement the ``_``-prefixed primitives,
    which raise :class:`StorageError` for transient trouble; this class adds
    URI parsing, ``file://`` handling and the retry loop, so every
    implementation behaves the same from the outside.
    """

    def __init__(
        self,
        *,
        output_bucket: str,
        allow_file_uris: bool = False,
        source_buckets: Sequence[str] = (),
        attempts: int = DEFAULT_ATTEMPTS,
        base_delay_s: float = DEFAULT_BASE_DELAY_S,
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.output_bucket = output_bucket
        self.allow_file_uris = allow_file_uris
        #: Buckets sources may be read from (``RENDER_SOURCE_BUCKETS``); empty means any.
        self.source_buckets = tuple(source_buckets)
        self.attempts = attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._sleep = sleep

    # -- public interface ---------------------------------------------------------------

    def fetch(
        self, uri: str, dest: Path, *, stop: threading.Event | None = None, deadline_s: float | None = None
    ) -> int:
        """Download the source at ``uri`` to ``dest`` (parents created); returns its size in bytes.

        Setting ``stop`` ends a download part-way with :class:`TransferStopped` and nothing at ``dest``: a
        cancel or shutdown need not wait for gigabytes to arrive. ``deadline_s`` bounds each attempt's wall
        time (:func:`fetch_deadline_s`): a transfer that stalls or trickles is stopped there and retried as a
        transient :class:`StorageError`, within the storage's bounded attempts.
        """
        src = self._source(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.path is not None:
            return self._fetch_file(src.path, dest)

        def attempt() -> int:
            try:
                return bounded_attempt()
            except OSError as exc:
                if disk_full_in(exc) is None:
                    raise
                dest.unlink(missing_ok=True)
                raise DiskFull(f"fetch {src}: the worker's disk is full ({exc.strerror})") from exc

        def bounded_attempt() -> int:
            if deadline_s is None:
                return self._fetch_object(src.bucket, src.key, dest, stop)
            with _AttemptDeadline(stop, deadline_s) as bounded:
                try:
                    return self._fetch_object(src.bucket, src.key, dest, bounded.stop)
                except TransferStopped:
                    if not bounded.expired:
                        raise
                    dest.unlink(missing_ok=True)
                    raise StorageError(
                        f"fetch {src}: the download did not finish within {deadline_s:.0f} s (stalled or too slow)"
                    ) from None

        return self._retry(f"fetch {src}", attempt)

    def size(self, uri: str) -> int:
        """Size of the source in bytes (a HEAD), so limits are enforced before downloading."""
        return self.stat(uri).size

    def stat(self, uri: str) -> SourceStat:
        """Size and version of the source (a HEAD)."""
        src = self._source(uri)
        if src.path is not None:
            size = self._stat_file(src.path)
            return SourceStat(size, f"{src.path.stat().st_mtime_ns}-{size}")
        return self._retry(f"size {src}", lambda: self._stat_object(src.bucket, src.key))

    def put(self, path: Path, key: str, content_type: str, metadata: Mapping[str, str] | None = None) -> None:
        """Upload a local file to ``key`` in the output bucket (overwriting), with its content type.

        ``metadata``: short ASCII values stored with the object (S3 user metadata, 2 KB in all), read back with
        :meth:`output_metadata`.
        """
        if not path.is_file():
            raise RenderError(f"cannot upload {path}: not a file", code=ErrorCode.INTERNAL_ERROR)
        meta = dict(metadata or {})
        self._retry(f"put {key}", lambda: self._put_object(path, key, content_type, meta))

    def output_metadata(self, key: str) -> dict[str, str] | None:
        """The metadata ``key`` was stored with (a HEAD), or None when there is no such object."""
        return self._retry(f"head {key}", lambda: self._output_metadata(key))

    def presign(self, key: str, filename: str, expires_s: int) -> str:
        """A GET URL for ``key`` valid ``expires_s`` seconds, served as a download named ``filename``."""
        if not 1 <= expires_s <= MAX_PRESIGN_EXPIRY_S:
            raise ValueError(f"expires_s must be within 1..{MAX_PRESIGN_EXPIRY_S}, got {expires_s}")
        return self._presign(key, filename, expires_s)

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists in the output bucket."""
        return self._retry(f"exists {key}", lambda: self._exists(key))

    def delete(self, key: str) -> None:
        """Delete ``key`` from the output bucket; deleting a missing key is not an error."""
        self._retry(f"delete {key}", lambda: self._delete(key))

    def download(self, key: str, dest: Path, *, stop: threading.Event | None = None) -> int:
        """Download ``key`` from the output bucket to ``dest`` (the worker's own intermediates: chunk pieces)."""
        check_key(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return self._retry(f"get {key}", lambda: self._fetch_object(self.output_bucket, key, dest, stop))

    # -- primitives -----------------------------------------------------------------------

    @abc.abstractmethod
    def _fetch_object(self, bucket: str, key: str, dest: Path, stop: threading.Event | None = None) -> int: ...

    @abc.abstractmethod
    def _stat_object(self, bucket: str, key: str) -> SourceStat: ...

    @abc.abstractmethod
    def _put_object(self, path: Path, key: str, content_type: str, metadata: dict[str, str]) -> None: ...

    @abc.abstractmethod
    def _output_metadata(self, key: str) -> dict[str, str] | None: ...

    @abc.abstractmethod
    def _presign(self, key: str, filename: str, expires_s: int) -> str: ...

    @abc.abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def _delete(self, key: str) -> None: ...

    # -- shared helpers -------------------------------------------------------------------

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        return with_retries(fn, self.attempts, self.base_delay_s, self.max_delay_s, self._sleep, what=what)

    def _source(self, uri: str) -> SourceURI:
        src = parse_uri(uri)
        if src.scheme == "file" and not self.allow_file_uris:
            raise InvalidJob(f"source.uri {excerpt(uri)}: file:// sources are disabled (set RENDER_ALLOW_FILE_URIS=1)")
        # Intake refuses these already; checked again here so that no caller
        # (a future actor, a script using the library) can read another bucket.
        check_source_bucket(src, self.source_buckets)
        return src

    @staticmethod
    def _stat_file(path: Path) -> int:
        try:
            if not path.is_file():
                raise SourceError(f"source file {path} does not exist", code=ErrorCode.SOURCE_NOT_FOUND)
            return path.stat().st_size
        except PermissionError as exc:
            raise SourceError(f"source file {path} is not readable", code=ErrorCode.SOURCE_NOT_FOUND) from exc

    def _fetch_file(self, path: Path, dest: Path) -> int:
        """Copy a local source; a ``file://`` fetch is a plain copy with the same error mapping."""
        self._stat_file(path)
        if path.resolve() == dest.resolve():
            return path.stat().st_size
        try:
            shutil.copyfile(path, dest)
        except PermissionError as exc:
            raise SourceError(f"source file {path} is not readable", code=ErrorCode.SOURCE_NOT_FOUND) from exc
        return dest.stat().st_size


def not_found(what: str, detail: str | None = None) -> SourceError:
    """The permanent ``source_not_found`` error, worded the same by every implementation."""
    return SourceError(f"source {what} does not exist", code=ErrorCode.SOURCE_NOT_FOUND, detail=detail)
