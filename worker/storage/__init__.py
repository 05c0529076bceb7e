"""Object storage behind one small interface, with a real and an in-memory implementation.

* :mod:`worker.storage.base`   the :class:`Storage` interface, URI parsing, output keys, retries
* :mod:`worker.storage.s3`     :class:`S3Storage`, boto3 on any S3-compatible store
* :mod:`worker.storage.memory` :class:`MemoryStorage`, a dict (unit tests, ``render-cli``)

``S3Storage`` is imported lazily so that code paths without S3 (``render-cli``)
do not pay for importing boto3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker.storage.base import (
    SourceStat,
    SourceURI,
    Storage,
    content_disposition,
    output_key,
    parse_uri,
    safe_filename,
    with_retries,
)
from worker.storage.memory import MemoryStorage

if TYPE_CHECKING:
    from worker.storage.s3 import S3Storage

__all__ = [
    "MemoryStorage",
    "S3Storage",
    "SourceStat",
    "SourceURI",
    "Storage",
    "content_disposition",
    "output_key",
    "parse_uri",
    "safe_filename",
    "with_retries",
]


def __getattr__(name: str) -> Any:
    if name == "S3Storage":
        from worker.storage.s3 import S3Storage

        return S3Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
