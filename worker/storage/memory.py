"""Objects in a dict: the storage for unit tests and for ``render-cli``.

It keeps the exact contract of :class:`~worker.storage.base.Storage` (same
URIs, same errors, same retry loop) so code tested against it behaves the same
on S3. Two test hooks make the unhappy paths cheap to reach:

* :meth:`MemoryStorage.fail_next` makes the next *n* calls of an operation
  raise a transient :class:`~worker.errors.StorageError`, to exercise retries.
* :attr:`MemoryStorage.calls` counts primitive calls per operation.

:meth:`~MemoryStorage.presign` returns a ``memory://`` URL. It carries the key,
filename and expiry for assertions but is **not downloadable**: there is no
server behind it. Use :meth:`MemoryStorage.get` to read an output back.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

from worker.errors import StorageError, TransferStopped
from worker.settings import Settings
from worker.storage.base import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BASE_DELAY_S,
    DEFAULT_MAX_DELAY_S,
    SourceStat,
    Storage,
    content_disposition,
    not_found,
    parse_uri,
)

#: Operation names accepted by :meth:`MemoryStorage.fail_next` ("*" means any).
OPERATIONS = ("fetch", "size", "put", "exists", "delete")


@dataclasses.dataclass(frozen=True)
class MemoryObject:
    data: bytes
    content_type: str
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)


class MemoryStorage(Storage):
    """:class:`Storage` keeping ``(bucket, key) -> MemoryObject`` in memory; thread-safe."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        output_bucket: str | None = None,
        allow_file_uris: bool | None = None,
        source_buckets: Sequence[str] | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
        base_delay_s: float = DEFAULT_BASE_DELAY_S,
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        settings = settings or Settings()
        super().__init__(
            output_bucket=output_bucket if output_bucket is not None else settings.output_bucket,
            allow_file_uris=allow_file_uris if allow_file_uris is not None else settings.allow_file_uris,
            source_buckets=source_buckets if source_buckets is not None else settings.source_bucket_list,
            attempts=attempts,
            base_delay_s=base_delay_s,
            max_delay_s=max_delay_s,
            sleep=sleep,
        )
        self.objects: dict[tuple[str, str], MemoryObject] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        self._failures: collections.Counter[str] = collections.Counter()
        self._fetch_s = 0.0
        self._lock = threading.Lock()

    # -- test and CLI helpers -------------------------------------------------------------

    def seed(self, uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store a source object at ``s3://bucket/key`` so that :meth:`fetch` finds it."""
        src = parse_uri(uri)
        if src.scheme != "s3":
            raise ValueError(f"seed takes an s3:// URI, got {uri!r}")
        with self._lock:
            self.objects[(src.bucket, src.key)] = MemoryObject(bytes(data), content_type)

    def get(self, key: str) -> MemoryObject:
        """The output object at ``key`` (KeyError when absent): how tests read uploads back."""
        with self._lock:
            return self.objects[(self.output_bucket, key)]

    def fail_next(self, n: int, op: str = "*") -> None:
        """Make the next ``n`` calls of ``op`` (or of any operation, ``"*"``) raise a transient StorageError."""
        if op != "*" and op not in OPERATIONS:
            raise ValueError(f"op must be '*' or one of {OPERATIONS}, got {op!r}")
        with self._lock:
            self._failures[op] += n

    def slow_fetch(self, seconds: float) -> None:
        """Make every download take ``seconds`` (stoppable as a real one is): a large source on a slow link."""
        self._fetch_s = seconds

    def _enter(self, op: str) -> None:
        """Count the call and raise an injected failure if one is pending."""
        with self._lock:
            self.calls[op] += 1
            for name in (op, "*"):
                if self._failures[name] > 0:
                    self._failures[name] -= 1
                    raise StorageError(f"{op}: injected failure (MemoryStorage.fail_next)")

    # -- primitives -----------------------------------------------------------------------

    def _fetch_object(self, bucket: str, key: str, dest: Path, stop: threading.Event | None = None) -> int:
        self._enter("fetch")
        with self._lock:
            obj = self.objects.get((bucket, key))
        if obj is None:
            raise not_found(f"s3://{bucket}/{key}")
        until = time.monotonic() + self._fetch_s
        while True:  # the bytes "arrive" until then; a stop is seen as S3Storage sees it, while they do
            if stop is not None and stop.is_set():
                raise TransferStopped(f"download of s3://{bucket}/{key} stopped")
            if time.monotonic() >= until:
                break
            time.sleep(min(0.05, until - time.monotonic()))
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(obj.data)
        tmp.replace(dest)
        return len(obj.data)

    def _stat_object(self, bucket: str, key: str) -> SourceStat:
        self._enter("size")
        with self._lock:
            obj = self.objects.get((bucket, key))
        if obj is None:
            raise not_found(f"s3://{bucket}/{key}")
        return SourceStat(len(obj.data), hashlib.md5(obj.data, usedforsecurity=False).hexdigest())

    def _put_object(self, path: Path, key: str, content_type: str, metadata: dict[str, str]) -> None:
        self._enter("put")
        data = path.read_bytes()
        with self._lock:
            self.objects[(self.output_bucket, key)] = MemoryObject(data, content_type, dict(metadata))

    def _output_metadata(self, key: str) -> dict[str, str] | None:
        self._enter("exists")
        with self._lock:
            obj = self.objects.get((self.output_bucket, key))
        return None if obj is None else dict(obj.metadata)

    def _presign(self, key: str, filename: str, expires_s: int) -> str:
        query = urllib.parse.urlencode(
            {
                "response-content-disposition": content_disposition(filename),
                "expires": str(int(time.time()) + expires_s),
            }
        )
        return f"memory://{self.output_bucket}/{urllib.parse.quote(key)}?{query}"

    def _exists(self, key: str) -> bool:
        self._enter("exists")
        with self._lock:
            return (self.output_bucket, key) in self.objects

    def _delete(self, key: str) -> None:
        self._enter("delete")
        with self._lock:
            self.objects.pop((self.output_bucket, key), None)
