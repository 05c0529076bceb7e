"""S3-compatible object storage through boto3: the storage the fleet really uses.

This module is the boundary where boto3/botocore errors become worker errors
(``raise ... from exc``); nothing above it imports boto3. The client is built
from :class:`~worker.settings.Settings`:

* ``s3_endpoint_url`` empty means AWS; anything else is an S3-compatible store.
* ``s3_checksum`` sets botocore's ``request_checksum_calculation`` and
  ``response_checksum_validation``. ``when_supported`` (boto3's own default since
  1.36) sends CRC32 headers on every upload, which some S3-compatible stores
  reject; ``when_required`` only sends them where the API demands it.
* botocore does not retry (``botocore_attempts`` = 1 by default, standard mode):
  :func:`~worker.storage.base.with_retries` owns the backoff and the attempt
  count, so attempts are not multiplied (they were 4 x 2), and timeouts are
  short so a dead endpoint fails fast.

Credentials come from boto3's usual chain (the ``AWS_*`` variables, profiles,
instance roles); pass ``session`` to use explicit ones (tests do).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import boto3
import boto3.exceptions
import botocore.exceptions
import s3transfer.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from worker.errors import (
    ConfigError,
    DiskFull,
    ErrorCode,
    RenderError,
    SourceError,
    StorageError,
    TransferStopped,
    disk_full_in,
)
from worker.settings import Settings
from worker.storage.base import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BASE_DELAY_S,
    DEFAULT_MAX_DELAY_S,
    SourceStat,
    Storage,
    content_disposition,
    not_found,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CHECKSUM_MODES = ("when_required", "when_supported")
ADDRESSING_STYLES = ("path", "virtual", "auto")

#: Everything boto3, botocore and s3transfer raise for a failed call.
_BOTO_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    boto3.exceptions.Boto3Error,
    s3transfer.exceptions.RetriesExceededError,
    s3transfer.exceptions.S3UploadFailedError,
    s3transfer.exceptions.S3DownloadFailedError,
)
#: Missing or half-set credentials: a configuration error, never retried.
_CREDENTIAL_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
)
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED_CODES = {"403", "AccessDenied", "Forbidden", "AllAccessDisabled"}


def build_client(
    settings: Settings,
    *,
    session: boto3.session.Session | None = None,
    botocore_attempts: int = 1,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 60.0,
    max_pool_connections: int = 16,
) -> S3Client:
    """An S3 client configured from settings; invalid storage settings are rejected here, at startup."""
    # Settings validates these at start-up; kept here for clients built from hand-made Settings.
    if settings.s3_checksum not in CHECKSUM_MODES:
        raise ConfigError(f"setting RENDER_S3_CHECKSUM={settings.s3_checksum!r} must be one of {CHECKSUM_MODES}")
    if settings.s3_addressing_style not in ADDRESSING_STYLES:
        raise ConfigError(
            f"setting RENDER_S3_ADDRESSING_STYLE={settings.s3_addressing_style!r} must be one of {ADDRESSING_STYLES}"
        )
    checksum = cast(Literal["when_supported", "when_required"], settings.s3_checksum)
    s3_options: Any = {"addressing_style": settings.s3_addressing_style}
    config = Config(
        region_name=settings.s3_region or None,
        signature_version="s3v4",  # botocore may still presign with SigV2 on custom endpoints otherwise
        s3=s3_options,
        retries={"total_max_attempts": botocore_attempts, "mode": "standard"},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        max_pool_connections=max_pool_connections,
        request_checksum_calculation=checksum,
        response_checksum_validation=checksum,
    )
    session = session or boto3.session.Session()
    return session.client("s3", endpoint_url=settings.s3_endpoint_url or None, config=config)


def check_config(settings: Settings, *, session: boto3.session.Session | None = None) -> None:
    """At start-up: the S3 client builds from the settings and credentials are there to sign with.

    Raises :class:`ConfigError` naming what is wrong, so a worker that could never store an output refuses
    to start instead of failing every job.
    """
    session = session or boto3.session.Session()
    try:
        build_client(settings, session=session)
        credentials = session.get_credentials()
    except ConfigError:
        raise
    except (botocore.exceptions.BotoCoreError, ValueError) as exc:
        raise ConfigError(
            f"the S3 client cannot be built from RENDER_S3_* settings (RENDER_S3_ENDPOINT_URL="
            f"{settings.s3_endpoint_url!r}, RENDER_S3_REGION={settings.s3_region!r}): {exc}"
        ) from exc
    if credentials is None:
        raise ConfigError(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or a role)"
        )


def _describe(exc: BaseException) -> tuple[str, int | None]:
    """The S3 error code and HTTP status of a boto error, when it carries them."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error: Any = exc.response.get("Error", {})
        meta: Any = exc.response.get("ResponseMetadata", {})
        return str(error.get("Code", "")), meta.get("HTTPStatusCode")
    return type(exc).__name__, None


def translate(exc: BaseException, what: str, *, source: bool = False) -> RenderError:
    """Map a boto error to the worker's errors.

    For a *source* read, "not there" (404, NoSuchKey, NoSuchBucket) and "not
    readable by us" (403) are permanent ``source_not_found``: no retry will make
    the object appear or the policy change. Everything else (connection trouble,
    timeouts, 5xx, throttling, and any error on our own output bucket) is a
    transient ``storage_failed``.
    """
    full = disk_full_in(exc)
    if full is not None:  # the download's write failed: our disk, not the store
        return DiskFull(f"{what}: the worker's disk is full ({full.strerror})", detail=str(exc))
    if isinstance(exc, _CREDENTIAL_ERRORS):
        # The operator's to fix, not an outage: retrying cannot make credentials appear.
        return ConfigError(
            f"{what}: no usable S3 credentials ({type(exc).__name__}); a configuration error: set"
            " AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role",
            detail=str(exc),
        )
    code, status = _describe(exc)
    if source and (code in _NOT_FOUND_CODES or status == 404):
        return not_found(what, detail=str(exc))
    if source and (code in _DENIED_CODES or status == 403):
        return SourceError(
            f"source {what} is not readable by the worker (access denied: check the bucket policy and credentials)",
            code=ErrorCode.SOURCE_NOT_FOUND,
            detail=str(exc),
        )
    status_text = f" (HTTP {status})" if status else ""
    return StorageError(f"{what}: {code}{status_text}: {exc}", detail=str(exc))


class S3Storage(Storage):
    """:class:`Storage` on an S3-compatible store; the output bucket and limits come from settings."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: S3Client | None = None,
        session: boto3.session.Session | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
        base_delay_s: float = DEFAULT_BASE_DELAY_S,
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
        sleep: Callable[[float], None] = time.sleep,
        botocore_attempts: int = 1,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(
            output_bucket=settings.output_bucket,
            allow_file_uris=settings.allow_file_uris,
            source_buckets=settings.source_bucket_list,
            attempts=attempts,
            base_delay_s=base_delay_s,
            max_delay_s=max_delay_s,
            sleep=sleep,
        )
        self.settings = settings
        self.client: S3Client = client or build_client(
            settings,
            session=session,
            botocore_attempts=botocore_attempts,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
        )
        # "classic" keeps transfers on the pure-Python s3transfer path everywhere, so
        # the thresholds below mean the same thing on every host (CRT may be installed).
        self.transfer_config = TransferConfig(
            multipart_threshold=settings.multipart_threshold_bytes,
            multipart_chunksize=settings.multipart_chunk_bytes,
            num_download_attempts=max(1, botocore_attempts),
            preferred_transfer_client="classic",
        )

    def _fetch_object(self, bucket: str, key: str, dest: Path, stop: threading.Event | None = None) -> int:
        what = f"s3://{bucket}/{key}"

        def progress(_: int) -> None:
            # s3transfer calls this as bytes arrive; an exception raised here fails the transfer, which
            # stops its other parts and removes its temporary file.
            if stop is not None and stop.is_set():
                raise TransferStopped(f"download of {what} stopped")

        try:
            # download_file writes to a temporary name and renames it into place,
            # so a failed download never leaves a truncated source at ``dest``.
            self.client.download_file(
                bucket, key, str(dest), Config=self.transfer_config, Callback=progress if stop is not None else None
            )
        except TransferStopped:
            raise
        except _BOTO_ERRORS as exc:
            raise translate(exc, what, source=True) from exc
        return dest.stat().st_size

    def _stat_object(self, bucket: str, key: str) -> SourceStat:
        what = f"s3://{bucket}/{key}"
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except _BOTO_ERRORS as exc:
            raise translate(exc, what, source=True) from exc
        # Stores that send no ETag (none known) fall back to the size and the modification time.
        version = str(head.get("ETag") or f"{head.get('LastModified')}-{head['ContentLength']}").strip('"')
        return SourceStat(int(head["ContentLength"]), version)

    def _put_object(self, path: Path, key: str, content_type: str, metadata: dict[str, str]) -> None:
        extra: dict[str, Any] = {"ContentType": content_type}
        if metadata:
            extra["Metadata"] = metadata
        try:
            self.client.upload_file(str(path), self.output_bucket, key, ExtraArgs=extra, Config=self.transfer_config)
        except _BOTO_ERRORS as exc:
            raise translate(exc, f"upload to s3://{self.output_bucket}/{key}") from exc

    def _output_metadata(self, key: str) -> dict[str, str] | None:
        try:
            head = self.client.head_object(Bucket=self.output_bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            code, status = _describe(exc)
            if status == 404 or code in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise translate(exc, f"head s3://{self.output_bucket}/{key}") from exc
        except _BOTO_ERRORS as exc:
            raise translate(exc, f"head s3://{self.output_bucket}/{key}") from exc
        return {str(k): str(v) for k, v in (head.get("Metadata") or {}).items()}

    def _presign(self, key: str, filename: str, expires_s: int) -> str:
        try:
            return self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.output_bucket,
                    "Key": key,
                    "ResponseContentDisposition": content_disposition(filename),
                },
                ExpiresIn=expires_s,
            )
        except _BOTO_ERRORS as exc:
            raise translate(exc, f"presign s3://{self.output_bucket}/{key}") from exc

    def _exists(self, key: str) -> bool:
        return self._output_metadata(key) is not None

    def _delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.output_bucket, Key=key)
        except _BOTO_ERRORS as exc:
            raise translate(exc, f"delete s3://{self.output_bucket}/{key}") from exc
