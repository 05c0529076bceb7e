"""Every ``RENDER_*`` setting, read from the environment in this one place.

Nothing else in the worker reads ``os.environ`` for configuration: the rest of
the code takes a :class:`Settings` (or plain arguments). Each setting has a
default and a one-line description; the README table and the deploy manifests
are checked against :data:`SETTINGS` by the test suite, so they cannot drift.
AWS credentials are read by boto3 itself from the standard ``AWS_*`` variables.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

from worker.errors import ConfigError

PREFIX = "RENDER_"

#: SigV4 presigned URLs cannot outlive seven days; below a second they are useless.
URL_EXPIRY_RANGE = (1, 7 * 24 * 3600)


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str  # the attribute name; the variable is PREFIX + name.upper()
    kind: type
    default: Any
    doc: str
    # Validation, checked whenever a Settings is built (so at every process start):
    choices: tuple[str, ...] = ()  # allowed values of a str setting
    min: float | None = None  # inclusive bounds of a number
    max: float | None = None

    @property
    def env(self) -> str:
        return PREFIX + self.name.upper()

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable for this setting, or None when it is."""
        if self.kind is float and not math.isfinite(value):
            return "must be a finite number"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}"
        if self.min is not None and value < self.min:
            return f"must be at least {self.min:g}" + (f" and at most {self.max:g}" if self.max is not None else "")
        if self.max is not None and value > self.max:
            return f"must be at most {self.max:g}" + (f" and at least {self.min:g}" if self.min is not None else "")
        return None


SETTINGS: tuple[Setting, ...] = (
    # Broker and state.
    Setting(
        "redis_url", str, "redis://localhost:6379/0", "Redis used as the Dramatiq broker and the render-record store."
    ),
    Setting("queue", str, "render", "Name of the render queue."),
    Setting("webhook_queue", str, "render-webhooks", "Name of the webhook-delivery queue."),
    Setting(
        "broker_heartbeat_timeout_ms",
        int,
        60_000,
        "A worker silent this long is presumed dead and its unacked jobs are requeued.",
    ),
    Setting(
        "broker_maintenance_chance",
        int,
        1000,
        "Broker calls per million that run the sweep requeueing dead workers' jobs.",
    ),
    Setting(
        "lease_ttl_s", float, 30.0, "A render's lease lapses this long after its worker stops renewing it (crash)."
    ),
    Setting("max_retries", int, 5, "Attempts for transient failures before the job fails for good.", min=0),
    Setting("retry_min_backoff_ms", int, 2_000, "First retry delay; it doubles each attempt."),
    Setting("retry_max_backoff_ms", int, 300_000, "Cap on the retry delay."),
    Setting("time_limit_s", float, 4 * 3600.0, "A render running longer is stopped and fails with `timeout`.", min=1),
    Setting(
        "shutdown_timeout_s", float, 600.0, "On SIGTERM, how long the current render may finish before it is requeued."
    ),
    Setting("record_ttl_s", int, 30 * 86400, "How long render records are kept in Redis."),
    # Storage.
    Setting("s3_endpoint_url", str, "", "S3-compatible endpoint; empty means AWS."),
    Setting("s3_region", str, "us-east-1", "Region used for signing S3 requests."),
    Setting(
        "s3_addressing_style",
        str,
        "path",
        "S3 addressing style: `path`, `virtual` or `auto`.",
        choices=("path", "virtual", "auto"),
    ),
    Setting(
        "s3_checksum",
        str,
        "when_required",
        "boto3 checksum mode: `when_required` (works with most S3-compatible stores) or `when_supported`.",
        choices=("when_required", "when_supported"),
    ),
    Setting("output_bucket", str, "renders", "Bucket outputs are written to."),
    Setting("output_prefix", str, "renders", "Key prefix: outputs go to `<prefix>/<render_id>/<render_id>.<ext>`."),
    Setting("multipart_threshold_bytes", int, 64 * 1024 * 1024, "Outputs at least this large are uploaded in parts."),
    Setting("multipart_chunk_bytes", int, 16 * 1024 * 1024, "Part size for multipart uploads."),
    Setting(
        "url_expiry_s",
        int,
        300,
        "Lifetime of minted download URLs, in seconds (1 s to 7 days, the SigV4 limit).",
        min=URL_EXPIRY_RANGE[0],
        max=URL_EXPIRY_RANGE[1],
    ),
    Setting("allow_file_uris", bool, False, "Whether `file://` source URIs are accepted (local testing only)."),
    Setting(
        "source_buckets",
        str,
        "",
        "Comma-separated buckets that `s3://` sources may come from; empty means any bucket.",
    ),
    # Rendering.
    Setting("work_dir", str, "", "Scratch directory for sources and outputs; empty means the system temp dir."),
    Setting("ffmpeg_path", str, "", "ffmpeg binary; empty means the one bundled with imageio-ffmpeg."),
    Setting(
        "nvenc",
        str,
        "auto",
        "`auto` probes NVENC once per process, `off` always uses the CPU presets.",
        choices=("auto", "off"),
    ),
    Setting("nvenc_probe_timeout_s", float, 15.0, "Time limit for the one-frame NVENC probe encode."),
    Setting("max_source_bytes", int, 50 * 1024**3, "Sources larger than this fail with `source_too_large`.", min=1),
    Setting("max_source_duration_s", float, 6 * 3600.0, "Sources longer than this fail with `source_too_large`."),
    Setting(
        "max_source_pixels",
        int,
        4096 * 2304,
        "Frames with more pixels than this fail with `source_too_large`; every frame is checked as it is decoded.",
        min=1,
    ),
    Setting("max_segments", int, 10_000, "Plans with more segments are rejected as `invalid_job`.", min=1),
    Setting("progress_interval_s", float, 0.5, "Minimum time between progress writes to the render record."),
    # Webhooks.
    Setting("webhook_timeout_s", float, 10.0, "Time limit for one webhook delivery attempt."),
    Setting("webhook_max_attempts", int, 8, "Delivery attempts before a webhook is given up."),
    Setting("webhook_min_backoff_ms", int, 5_000, "First webhook retry delay; it doubles each attempt."),
    Setting("webhook_max_backoff_ms", int, 3_600_000, "Cap on the webhook retry delay."),
    Setting(
        "webhook_allow_private",
        bool,
        False,
        "Deliver webhooks to loopback, private and link-local addresses (tests and on-premise only).",
    ),
    # Metrics.
    Setting("metrics_port", int, 9191, "Port the Prometheus metrics are served on (0 disables).", min=0, max=65535),
    Setting("metrics_host", str, "0.0.0.0", "Address the metrics server binds to."),
    Setting(
        "metrics_dir", str, "", "Directory for multiprocess metrics; empty means a fresh temp dir per worker start."
    ),
    Setting("queue_depth_interval_s", float, 15.0, "How often queue depth and GPU telemetry are sampled."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def _parse(setting: Setting, raw: str) -> Any:
    try:
        if setting.kind is bool:
            low = raw.strip().lower()
            if low in {"1", "true", "yes", "on"}:
                return True
            if low in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        return setting.kind(raw)
    except ValueError as exc:
        raise ConfigError(
            f"setting {setting.env}={raw[:80]!r} is not a valid {setting.kind.__name__}"
            + (f" (one of {', '.join(setting.choices)})" if setting.choices else "")
        ) from exc


@dataclasses.dataclass(frozen=True)
class Settings:
    redis_url: str = _BY_NAME["redis_url"].default
    queue: str = _BY_NAME["queue"].default
    webhook_queue: str = _BY_NAME["webhook_queue"].default
    broker_heartbeat_timeout_ms: int = _BY_NAME["broker_heartbeat_timeout_ms"].default
    broker_maintenance_chance: int = _BY_NAME["broker_maintenance_chance"].default
    lease_ttl_s: float = _BY_NAME["lease_ttl_s"].default
    max_retries: int = _BY_NAME["max_retries"].default
    retry_min_backoff_ms: int = _BY_NAME["retry_min_backoff_ms"].default
    retry_max_backoff_ms: int = _BY_NAME["retry_max_backoff_ms"].default
    time_limit_s: float = _BY_NAME["time_limit_s"].default
    shutdown_timeout_s: float = _BY_NAME["shutdown_timeout_s"].default
    record_ttl_s: int = _BY_NAME["record_ttl_s"].default
    s3_endpoint_url: str = _BY_NAME["s3_endpoint_url"].default
    s3_region: str = _BY_NAME["s3_region"].default
    s3_addressing_style: str = _BY_NAME["s3_addressing_style"].default
    s3_checksum: str = _BY_NAME["s3_checksum"].default
    output_bucket: str = _BY_NAME["output_bucket"].default
    output_prefix: str = _BY_NAME["output_prefix"].default
    multipart_threshold_bytes: int = _BY_NAME["multipart_threshold_bytes"].default
    multipart_chunk_bytes: int = _BY_NAME["multipart_chunk_bytes"].default
    url_expiry_s: int = _BY_NAME["url_expiry_s"].default
    allow_file_uris: bool = _BY_NAME["allow_file_uris"].default
    source_buckets: str = _BY_NAME["source_buckets"].default
    work_dir: str = _BY_NAME["work_dir"].default
    ffmpeg_path: str = _BY_NAME["ffmpeg_path"].default
    nvenc: str = _BY_NAME["nvenc"].default
    nvenc_probe_timeout_s: float = _BY_NAME["nvenc_probe_timeout_s"].default
    max_source_bytes: int = _BY_NAME["max_source_bytes"].default
    max_source_duration_s: float = _BY_NAME["max_source_duration_s"].default
    max_source_pixels: int = _BY_NAME["max_source_pixels"].default
    max_segments: int = _BY_NAME["max_segments"].default
    progress_interval_s: float = _BY_NAME["progress_interval_s"].default
    webhook_timeout_s: float = _BY_NAME["webhook_timeout_s"].default
    webhook_max_attempts: int = _BY_NAME["webhook_max_attempts"].default
    webhook_min_backoff_ms: int = _BY_NAME["webhook_min_backoff_ms"].default
    webhook_max_backoff_ms: int = _BY_NAME["webhook_max_backoff_ms"].default
    webhook_allow_private: bool = _BY_NAME["webhook_allow_private"].default
    metrics_port: int = _BY_NAME["metrics_port"].default
    metrics_host: str = _BY_NAME["metrics_host"].default
    metrics_dir: str = _BY_NAME["metrics_dir"].default
    queue_depth_interval_s: float = _BY_NAME["queue_depth_interval_s"].default

    def __post_init__(self) -> None:
        # Checked on every construction, so a bad value stops the process that
        # reads it at start-up, naming the variable, instead of failing jobs later.
        for setting in SETTINGS:
            why = setting.problem(getattr(self, setting.name))
            if why is not None:
                raise ConfigError(f"setting {setting.env}={getattr(self, setting.name)!r} {why}")

    @property
    def source_bucket_list(self) -> tuple[str, ...]:
        """``RENDER_SOURCE_BUCKETS`` as a tuple; empty means any bucket."""
        return tuple(b.strip() for b in self.source_buckets.split(",") if b.strip())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values = {s.name: _parse(s, env[s.env]) for s in SETTINGS if s.env in env}
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def load() -> Settings:
    """The settings of this process, from its environment."""
    return Settings.from_env()
