"""Every ``RENDER_*`` setting, read from the environment in this one place.

Nothing else in the worker reads ``os.environ`` for configuration: the rest of
the code takes a :class:`Settings` (or plain arguments). Each setting has a
default and a one-line description; the README table and the deploy manifests
are checked against :data:`SETTINGS` by the test suite, so they cannot drift.
AWS credentials are read by boto3 itself from the standard ``AWS_*`` variables.

:class:`Settings` is a ``pydantic-settings`` model: it finds the ``RENDER_*``
variables and turns their text into numbers and booleans. :data:`SETTINGS`
holds what it cannot say in types (bounds, choices, shapes, the words the
README and every message use), checked on every construction; a value
pydantic refuses is reported the same way, naming the variable and what it
allows. ``Settings()`` built by hand reads no environment (its defaults and
arguments only): :meth:`Settings.from_env` is where the environment comes in.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import pydantic
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from worker.errors import ConfigError

log = logging.getLogger(__name__)

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
    # A shape check for a str setting: returns why the value is wrong, or None.
    check: Callable[[str], str | None] | None = None

    @property
    def env(self) -> str:
        return PREFIX + self.name.upper()

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable for this setting, or None when it is."""
        if self.kind is float and not math.isfinite(value):
            return f"must be a finite number, {self.allowed}"
        if self.choices and value not in self.choices:
            return f"must be {self.allowed}"
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            return f"must be {self.allowed}"
        if self.check is not None:
            return self.check(value)
        return None

    @property
    def allowed(self) -> str:
        """The allowed values, in words, for messages and the README."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "1/true/yes/on or 0/false/no/off"
        if self.min is not None and self.max is not None:
            return f"{_num(self.min)} to {_num(self.max)}"
        if self.min is not None:
            return f"at least {_num(self.min)}"
        return f"a {self.kind.__name__}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# S3 bucket names: 3-63 lower-case letters, digits, dots and hyphens, starting and ending alphanumeric.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _queue_name(value: str) -> str | None:
    if not _QUEUE_NAME.fullmatch(value) or value.endswith((".DQ", ".XQ")):
        return "must be 1-100 letters, digits, '.', '_' or '-' (not ending in .DQ or .XQ)"
    return None


def _bucket_name(value: str) -> str | None:
    return None if _BUCKET_NAME.fullmatch(value) else "must be an S3 bucket name (3-63 of a-z, 0-9, '.', '-')"


def _bucket_list(value: str) -> str | None:
    for name in (b.strip() for b in value.split(",")):
        if name and _bucket_name(name) is not None:
            return f"lists {name[:64]!r}, which is not an S3 bucket name"
    return None


def _url(*schemes: str, empty_ok: bool = False) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if empty_ok and value == "":
            return None
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.lower() not in schemes or not rest or any(c.isspace() for c in value):
            return f"must be a {'/'.join(schemes)} URL" + (" or empty" if empty_ok else "")
        return None

    return check


def _not_empty(value: str) -> str | None:
    return "must not be empty" if not value.strip() else None


SETTINGS: tuple[Setting, ...] = (
    # Broker and state.
    Setting(
        "redis_url",
        str,
        "redis://localhost:6379/0",
        "Redis used as the Dramatiq broker and the render-record store.",
        check=_url("redis", "rediss", "unix"),
    ),
    Setting("queue", str, "render", "Name of the render queue.", check=_queue_name),
    Setting("webhook_queue", str, "render-webhooks", "Name of the webhook-delivery queue.", check=_queue_name),
    Setting(
        "broker_heartbeat_timeout_ms",
        int,
        60_000,
        "A worker silent this long is presumed dead and its unacked jobs are requeued.",
        min=5_000,
        max=3_600_000,
    ),
    Setting(
        "broker_sweep_interval_s",
        float,
        15.0,
        "Every worker requeues dead workers' unacked jobs this often (so a crashed render restarts"
        " within heartbeat timeout + this).",
        min=1,
        max=600,
    ),
    Setting(
        "broker_maintenance_chance",
        int,
        1000,
        "Broker calls per million that also run that sweep (Dramatiq's own, by chance; the timer is what bounds it).",
        min=0,
        max=1_000_000,
    ),
    Setting(
        "lease_ttl_s",
        float,
        30.0,
        "A render's lease lapses this long after its worker stops renewing it (crash).",
        min=1,
        max=3600,
    ),
    Setting("max_retries", int, 5, "Attempts for transient failures before the job fails for good.", min=0, max=100),
    Setting("retry_min_backoff_ms", int, 2_000, "First retry delay; it doubles each attempt.", min=0, max=3_600_000),
    Setting("retry_max_backoff_ms", int, 300_000, "Cap on the retry delay.", min=0, max=86_400_000),
    Setting(
        "time_limit_s",
        float,
        4 * 3600.0,
        "A render running longer is stopped and fails with `timeout`.",
        min=1,
        max=7 * 86400,
    ),
    Setting(
        "shutdown_timeout_s",
        float,
        600.0,
        "On SIGTERM, how long the current render may finish before it is requeued.",
        min=0,
        max=7 * 86400,
    ),
    Setting("record_ttl_s", int, 30 * 86400, "How long render records are kept in Redis.", min=60, max=3650 * 86400),
    # Storage.
    Setting(
        "s3_endpoint_url",
        str,
        "",
        "S3-compatible endpoint; empty means AWS.",
        check=_url("http", "https", empty_ok=True),
    ),
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
    Setting("output_bucket", str, "renders", "Bucket outputs are written to.", check=_bucket_name),
    Setting("output_prefix", str, "renders", "Key prefix: outputs go to `<prefix>/<render_id>/<render_id>.<ext>`."),
    Setting(
        "multipart_threshold_bytes",
        int,
        64 * 1024 * 1024,
        "Outputs at least this large are uploaded in parts.",
        min=5 * 1024 * 1024,
        max=5 * 1024**3,
    ),
    Setting(
        "multipart_chunk_bytes",
        int,
        16 * 1024 * 1024,
        "Part size for multipart uploads (S3 allows 5 MiB to 5 GiB).",
        min=5 * 1024 * 1024,
        max=5 * 1024**3,
    ),
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
        check=_bucket_list,
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
    Setting("nvenc_probe_timeout_s", float, 15.0, "Time limit for the one-frame NVENC probe encode.", min=1, max=600),
    Setting(
        "max_source_bytes",
        int,
        50 * 1024**3,
        "Sources larger than this fail with `source_too_large`.",
        min=1,
        max=5 * 1024**4,
    ),
    Setting(
        "max_source_duration_s",
        float,
        6 * 3600.0,
        "Sources longer than this fail with `source_too_large`.",
        min=1,
        max=7 * 86400,
    ),
    Setting(
        "max_source_pixels",
        int,
        4096 * 2304,
        "Frames with more pixels than this fail with `source_too_large`; every frame is checked as it is decoded.",
        min=1,
        max=16384 * 16384,
    ),
    Setting(
        "max_segments", int, 10_000, "Plans with more segments are rejected as `invalid_job`.", min=1, max=1_000_000
    ),
    # Chunked renders. Each chunk costs about its 2 s pre-roll in extra encoding (BENCHMARKS.md, "Chunked
    # renders": +3 % CPU for 2 chunks of a 90 s render, about 2 % more per further chunk), so 60 s chunks stay
    # near 3 % over the whole render while an hour still splits 60 ways.
    Setting(
        "chunk_s",
        float,
        60.0,
        "A chunked render's output is cut into chunks of about this many seconds, rendered apart and joined.",
        min=5,
        max=3600,
    ),
    Setting(
        "chunk_min_s",
        float,
        60.0,
        "Only outputs longer than this are rendered in chunks; shorter ones render whole.",
        min=10,
        max=7 * 86400,
    ),
    Setting(
        "progress_interval_s",
        float,
        0.5,
        "Minimum time between progress writes to the render record.",
        min=0.01,
        max=3600,
    ),
    # Webhooks.
    Setting(
        "webhook_timeout_s",
        float,
        10.0,
        "Time limit for one webhook delivery attempt, all of it: connect, send, the reply's headers.",
        min=0.1,
        max=300,
    ),
    Setting("webhook_max_attempts", int, 8, "Delivery attempts before a webhook is given up.", min=1, max=100),
    Setting(
        "webhook_threads", int, 2, "Threads per worker process that deliver webhooks (never renders).", min=1, max=64
    ),
    Setting(
        "webhook_min_backoff_ms",
        int,
        5_000,
        "First webhook retry delay; it doubles each attempt.",
        min=0,
        max=3_600_000,
    ),
    Setting("webhook_max_backoff_ms", int, 3_600_000, "Cap on the webhook retry delay.", min=0, max=86_400_000),
    Setting(
        "webhook_allow_private",
        bool,
        False,
        "Deliver webhooks to loopback, private and link-local addresses (tests and on-premise only).",
    ),
    Setting(
        "log_level",
        str,
        "INFO",
        "Level of the worker's logs (every logger: the worker's, Dramatiq's, botocore's); secrets are redacted at all.",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    ),
    # Metrics.
    Setting("metrics_port", int, 9191, "Port the Prometheus metrics are served on (0 disables).", min=0, max=65535),
    Setting("metrics_host", str, "0.0.0.0", "Address the metrics server binds to.", check=_not_empty),
    Setting(
        "metrics_dir", str, "", "Directory for multiprocess metrics; empty means a fresh temp dir per worker start."
    ),
    Setting(
        "queue_depth_interval_s",
        float,
        15.0,
        "How often queue depth and GPU telemetry are sampled.",
        min=0.1,
        max=3600,
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def default_of(name: str) -> Any:
    """The documented default of setting ``name``."""
    return _BY_NAME[name].default


def _blank_is_false(value: Any) -> Any:
    """``RENDER_X=`` (set, empty) turns a switch off, as it always has; pydantic alone would refuse it."""
    return False if isinstance(value, str) and value.strip() == "" else value


_ENV_NAMES = frozenset(s.env for s in SETTINGS)

#: The environment :meth:`Settings.from_env` reads from, while it builds one (None: no environment at all).
_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("render_environ", default=None)


class _Environ(EnvSettingsSource):
    """pydantic-settings' environment source, over the mapping :meth:`Settings.from_env` was given."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Exactly the documented names (RENDER_QUEUE, never render_queue): anything else is warned about instead.
        exact = {k: v for k, v in self._environ.items() if k in _ENV_NAMES}
        return parse_env_vars(exact, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def _config_error(exc: pydantic.ValidationError) -> ConfigError:
    """pydantic's refusal as the worker's: the variable, the value (bounded), and what it allows."""
    for error in exc.errors():
        loc = error.get("loc") or ()
        setting = _BY_NAME.get(str(loc[0])) if loc else None
        if setting is not None:
            raw = error.get("input")
            shown = raw[:80] if isinstance(raw, str) else raw
            return ConfigError(f"setting {setting.env}={shown!r} is not valid: allowed: {setting.allowed}"[:400])
        if error.get("type") == "extra_forbidden" and loc:
            return ConfigError(f"there is no setting {str(loc[0])[:80]!r}")
    return ConfigError(f"settings are not valid: {exc.error_count()} error(s)")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        frozen=True,
        extra="forbid",  # a misspelt keyword is a bug in the caller; a misspelt variable is warned about below
        validate_default=True,
    )

    redis_url: str = _BY_NAME["redis_url"].default
    queue: str = _BY_NAME["queue"].default
    webhook_queue: str = _BY_NAME["webhook_queue"].default
    broker_heartbeat_timeout_ms: int = _BY_NAME["broker_heartbeat_timeout_ms"].default
    broker_sweep_interval_s: float = _BY_NAME["broker_sweep_interval_s"].default
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
    chunk_s: float = _BY_NAME["chunk_s"].default
    chunk_min_s: float = _BY_NAME["chunk_min_s"].default
    progress_interval_s: float = _BY_NAME["progress_interval_s"].default
    webhook_timeout_s: float = _BY_NAME["webhook_timeout_s"].default
    webhook_max_attempts: int = _BY_NAME["webhook_max_attempts"].default
    webhook_threads: int = _BY_NAME["webhook_threads"].default
    webhook_min_backoff_ms: int = _BY_NAME["webhook_min_backoff_ms"].default
    webhook_max_backoff_ms: int = _BY_NAME["webhook_max_backoff_ms"].default
    webhook_allow_private: bool = _BY_NAME["webhook_allow_private"].default
    log_level: str = _BY_NAME["log_level"].default
    metrics_port: int = _BY_NAME["metrics_port"].default
    metrics_host: str = _BY_NAME["metrics_host"].default
    metrics_dir: str = _BY_NAME["metrics_dir"].default
    queue_depth_interval_s: float = _BY_NAME["queue_depth_interval_s"].default

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        environ = _ENVIRON.get()
        if environ is None:  # built by hand: its arguments and the defaults, nothing from the environment
            return (init_settings,)
        return (init_settings, _Environ(settings_cls, environ))

    @pydantic.field_validator("allow_file_uris", "webhook_allow_private", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        return _blank_is_false(value)

    @pydantic.model_validator(mode="after")
    def _check(self) -> Settings:
        # Checked on every construction, so a bad value stops the process that
        # reads it at start-up, naming the variable, instead of failing jobs later.
        for setting in SETTINGS:
            why = setting.problem(getattr(self, setting.name))
            if why is not None:
                raise ConfigError(f"setting {setting.env}={getattr(self, setting.name)!r} {why}"[:400])
        # Checks across settings.
        if self.queue == self.webhook_queue:
            raise ConfigError(f"settings RENDER_QUEUE and RENDER_WEBHOOK_QUEUE must differ (both {self.queue!r})")
        for lo, hi in (
            ("retry_min_backoff_ms", "retry_max_backoff_ms"),
            ("webhook_min_backoff_ms", "webhook_max_backoff_ms"),
        ):
            if getattr(self, lo) > getattr(self, hi):
                lo_env, hi_env = _BY_NAME[lo].env, _BY_NAME[hi].env
                raise ConfigError(f"setting {lo_env}={getattr(self, lo)} must be at most {hi_env}={getattr(self, hi)}")
        if self.broker_sweep_interval_s * 1000 >= self.broker_heartbeat_timeout_ms:
            # A sweep slower than the heartbeat timeout would only add to the recovery time.
            raise ConfigError(
                f"setting RENDER_BROKER_SWEEP_INTERVAL_S={self.broker_sweep_interval_s:g} must be shorter than"
                f" RENDER_BROKER_HEARTBEAT_TIMEOUT_MS={self.broker_heartbeat_timeout_ms} (in seconds)"
            )
        if self.output_prefix.strip("/").split("/")[0] == "tmp":
            # Chunk pieces live under tmp/ and deploy/s3-lifecycle.json expires that prefix after a day:
            # outputs stored there would silently expire too.
            raise ConfigError(
                f"setting RENDER_OUTPUT_PREFIX={self.output_prefix!r} must not start with 'tmp' (reserved for chunk"
                " pieces, which expire)"
            )
        return self

    @property
    def source_bucket_list(self) -> tuple[str, ...]:
        """``RENDER_SOURCE_BUCKETS`` as a tuple; empty means any bucket."""
        return tuple(b.strip() for b in self.source_buckets.split(",") if b.strip())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, warn_unknown: bool = True) -> Settings:
        env = os.environ if environ is None else environ
        token = _ENVIRON.set(env)
        try:
            settings = cls()
        except pydantic.ValidationError as exc:  # text pydantic could not read as the setting's type
            raise _config_error(exc) from None
        finally:
            _ENVIRON.reset(token)
        unknown = unknown_names(env)
        if unknown and warn_unknown:
            # A misspelt name would otherwise be ignored without a word, leaving the default in force.
            log.warning("ignoring unknown settings (not RENDER_* names this worker reads): %s", ", ".join(unknown))
        return settings

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``, checked like any construction (``model_copy`` would not check them)."""
        try:
            return type(self)(**{**self.model_dump(), **changes})
        except pydantic.ValidationError as exc:
            raise _config_error(exc) from None


#: ``RENDER_*`` names read by something other than the worker's settings (none today).
NOT_SETTINGS: frozenset[str] = frozenset()


def unknown_names(environ: Mapping[str, str]) -> list[str]:
    """The ``RENDER_*`` variables in ``environ`` that are no setting: misspellings, most likely."""
    known = _ENV_NAMES | NOT_SETTINGS
    return sorted(k for k in environ if k.startswith(PREFIX) and k not in known)


# What a child process (ffmpeg parses tenant media) may inherit: a path, a home, the locale, a temp dir, and
# what the NVIDIA runtime needs to reach the GPU. Everything else (AWS_* credentials, RENDER_REDIS_URL with its
# password, RENDER_* settings) stays in the worker.
CHILD_ENV_NAMES = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"})
CHILD_ENV_PREFIXES = ("LC_", "CUDA_", "NVIDIA_")


def child_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The minimal environment every child process is started with (see :data:`CHILD_ENV_NAMES`)."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k in CHILD_ENV_NAMES or k.startswith(CHILD_ENV_PREFIXES)}


#: Credentials boto3 reads from the environment (Settings never holds them).
AWS_SECRET_NAMES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def secret_values(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret values this process holds, for :mod:`worker.logsafe` to redact: the Redis password (and the
    whole Redis URL that carries it) and the AWS credentials."""
    from urllib.parse import urlsplit

    env = os.environ if environ is None else environ
    out = [env.get(name, "") for name in AWS_SECRET_NAMES]
    try:
        password = urlsplit(settings.redis_url).password
    except ValueError:
        password = None
    if password:
        out += [password, settings.redis_url]
    return [v for v in out if v]


def load() -> Settings:
    """The settings of this process, from its environment."""
    return Settings.from_env()
