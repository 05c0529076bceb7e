"""The versioned job message of the render queue (DESIGN.md, "Job message").

Job messages come from users (through the API), so everything is validated
before any work starts and every complaint names the field and a short,
secret-free excerpt of the value (:func:`worker.errors.excerpt`): messages end
up in render records, webhooks and logs. Identifiers end up in Redis keys and
object keys, so they are restricted to a safe alphabet and matched against the
*whole* string: no slashes, no spaces, no dots, no trailing newline.

:func:`parse_job` is total: whatever JSON value it is handed, it returns a
:class:`Job` or raises :class:`InvalidJob`. Each check is written to refuse a
value of the wrong type before using it; should one still raise something else,
that is a bug, and it leaves as :class:`IntakeBug` (an ``invalid_job`` all the
same, so the record fails instead of the message being dead-lettered).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Callable, Collection
from typing import Any, ParamSpec, TypeVar

from worker import webhooks
from worker.errors import IntakeBug, InvalidJob, excerpt, redact
from worker.output import OutputSpec
from worker.plan import Segment, parse_segments
from worker.storage.base import check_source_bucket, parse_uri

log = logging.getLogger(__name__)

VERSION = 1
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # always with fullmatch
_FIELDS = {"version", "render_id", "asset_id", "cut_id", "source", "segments", "output", "webhook"}
#: A Standard Webhooks secret is ``whsec_`` + base64 of 24..64 bytes; far longer is not a secret.
MAX_SECRET_CHARS = 256
#: Longest part of a message raised by another module (webhooks) that is passed on.
_REASON_CHARS = 160

P = ParamSpec("P")
T = TypeVar("T")


def _total(fn: Callable[P, T]) -> Callable[P, T]:
    """Make a validator total: anything but InvalidJob becomes :class:`IntakeBug` (with no excerpt of the input)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except InvalidJob:
            raise
        except Exception as exc:  # noqa: BLE001 - the tenant's value must end as invalid_job, whatever it is
            log.exception("job validation raised %s (a bug: it should refuse with InvalidJob)", type(exc).__name__)
            raise IntakeBug(f"the job message could not be validated ({type(exc).__name__})") from exc

    return wrapper


@dataclasses.dataclass(frozen=True)
class Webhook:
    url: str
    secret: str


@dataclasses.dataclass(frozen=True)
class Job:
    render_id: str
    asset_id: str
    cut_id: str | None
    source_uri: str
    segments: list[Segment] | None
    output: OutputSpec
    webhook: Webhook | None


def is_id(value: Any) -> bool:
    """Whether ``value`` is a usable identifier (the whole string, so no trailing newline)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def _id(raw: dict[str, Any], field: str, *, optional: bool = False) -> str | None:
    value = raw.get(field)
    if value is None and optional:
        return None
    if not is_id(value):
        raise InvalidJob(f"{field} must be an id of letters, digits, '_' or '-' (max 128), got {excerpt(value)}")
    return str(value)


def render_id_of(raw: Any) -> str | None:
    """The render id of a message, if it has a usable one (even when the rest is invalid)."""
    value = raw.get("render_id") if isinstance(raw, dict) else None
    return value if isinstance(value, str) and is_id(value) else None


def asset_id_of(raw: Any) -> str | None:
    """The asset id of a message, if it has a usable one (to salvage into a failed record)."""
    value = raw.get("asset_id") if isinstance(raw, dict) else None
    return value if isinstance(value, str) and is_id(value) else None


def _url_and_secret(raw: dict[str, Any], allow_private: bool) -> Webhook:
    url, secret = raw.get("url"), raw.get("secret")
    if not isinstance(url, str):
        raise InvalidJob(f"webhook.url must be a string, got {excerpt(url)}")
    # The same checks delivery applies, so a webhook that passes intake can be
    # delivered. Their messages are passed on bounded and redacted, whatever they quote.
    try:
        webhooks.validate_url(url, allow_private=allow_private)
    except InvalidJob as exc:
        reason = redact(exc.message)
        if len(reason) > _REASON_CHARS:
            reason = reason[: _REASON_CHARS - 1] + "…"
        raise InvalidJob(reason) from exc
    if not isinstance(secret, str) or not secret.startswith(webhooks.SECRET_PREFIX):
        raise InvalidJob("webhook.secret must be a 'whsec_' secret")
    if len(secret) > MAX_SECRET_CHARS:
        raise InvalidJob(f"webhook.secret is longer than {MAX_SECRET_CHARS} characters")
    if len(webhooks.secret_key(secret)) < 16:
        raise InvalidJob("webhook.secret is shorter than 16 bytes")
    return Webhook(url=url, secret=secret)


@_total
def parse_webhook(raw: Any, *, allow_private: bool = False) -> Webhook | None:
    """The ``webhook`` field: null, or an object with exactly ``url`` and ``secret``."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidJob(f"webhook must be null or an object with url and secret, got {type(raw).__name__}")
    unknown = set(raw) - {"url", "secret"}
    if unknown:
        # Only the names are quoted, bounded and redacted: the values may hold a secret.
        raise InvalidJob(f"webhook has unknown field(s): {excerpt(sorted(map(str, unknown)))}")
    return _url_and_secret(raw, allow_private)


def webhook_of(raw: Any, *, allow_private: bool = False) -> Webhook | None:
    """The webhook of an invalid message, if its url and secret pass every check, else None.

    So that the tenant hears ``render.failed`` even when the message is
    malformed elsewhere, or carries an extra key inside ``webhook`` itself.
    The url gets the same checks as at intake and delivery.
    """
    hook = raw.get("webhook") if isinstance(raw, dict) else None
    if not isinstance(hook, dict):
        return None
    try:
        return _total(_url_and_secret)(hook, allow_private)
    except InvalidJob:
        return None


def _source_uri(raw: dict[str, Any], source_buckets: Collection[str]) -> str:
    source = raw.get("source")
    if not isinstance(source, dict):
        raise InvalidJob(f"source must be an object with a uri, got {type(source).__name__}")
    unknown = set(source) - {"uri"}
    if unknown:
        raise InvalidJob(f"source has unknown field(s): {excerpt(sorted(map(str, unknown)))}")
    uri = source.get("uri")
    if not isinstance(uri, str) or not uri:
        raise InvalidJob(f"source.uri must be a non-empty string, got {excerpt(uri)}")
    # The parser and bucket check storage fetches with: a URI that passes here can be fetched.
    check_source_bucket(parse_uri(uri), source_buckets)
    return uri


@_total
def parse_job(
    raw: Any,
    *,
    max_segments: int = 10_000,
    allow_private_webhooks: bool = False,
    source_buckets: Collection[str] = (),
) -> Job:
    """Validate a job message; :class:`InvalidJob` (code ``invalid_job``) for anything malformed.

    ``allow_private_webhooks`` is ``RENDER_WEBHOOK_ALLOW_PRIVATE``;
    ``source_buckets`` is ``RENDER_SOURCE_BUCKETS`` (empty: any bucket).
    """
    if not isinstance(raw, dict):
        raise InvalidJob(f"the job message must be a JSON object, got {type(raw).__name__}")
    version = raw.get("version")
    # type() and not ==: True == 1 and 1.0 == 1 in Python, neither is version 1.
    if type(version) is not int or version != VERSION:
        raise InvalidJob(f"version must be {VERSION}, got {excerpt(version)}")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise InvalidJob(f"unknown field(s) in the job message: {excerpt(sorted(map(str, unknown)))}")
    render_id = _id(raw, "render_id")
    asset_id = _id(raw, "asset_id")
    cut_id = _id(raw, "cut_id", optional=True)
    uri = _source_uri(raw, source_buckets)
    if "output" not in raw:
        raise InvalidJob("output is required")
    assert render_id is not None and asset_id is not None
    return Job(
        render_id=render_id,
        asset_id=asset_id,
        cut_id=cut_id,
        source_uri=uri,
        segments=parse_segments(raw.get("segments"), max_segments=max_segments),
        output=OutputSpec.from_dict(raw["output"]),
        webhook=parse_webhook(raw.get("webhook"), allow_private=allow_private_webhooks),
    )
