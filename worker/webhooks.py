"""Terminal events, signed with Standard Webhooks and delivered over plain HTTP.

Each job ends with ``render.completed`` or ``render.failed`` posted to the
job's webhook URL (DESIGN.md, "Terminal events"). The pieces here are small
and pure where they can be, so the queue layer can schedule attempts with its
own retries and ``render-cli`` can simply block:

* :func:`build_event` — the JSON body, compact and deterministic.
* :func:`event_id` — ``webhook-id``, stable per render and event type, so a
  redelivered job or a retried attempt carries the same id and receivers dedupe.
* :func:`sign` — ``v1,<base64 HMAC-SHA256 over "id.timestamp.body">``.
* :func:`deliver_once` — one POST; never raises for delivery trouble, it
  returns a :class:`DeliveryResult` saying whether another attempt makes sense.
* :func:`backoff_schedule` / :func:`deliver_with_retries` — a bounded schedule
  and a blocking loop over it.

Only the standard library is used (``http.client``): redirects are *not*
followed (a POST silently turned into a GET would look delivered), and the
timeout applies to connecting and to each read.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import http.client
import json
import logging
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from worker.errors import InvalidJob

log = logging.getLogger(__name__)

RENDER_COMPLETED = "render.completed"
RENDER_FAILED = "render.failed"
EVENT_TYPES = (RENDER_COMPLETED, RENDER_FAILED)

SECRET_PREFIX = "whsec_"
USER_AGENT = "render-worker/0.1 (Standard Webhooks)"

#: How much of a receiver's response body is kept in :attr:`DeliveryResult.reason`.
_REASON_BYTES = 200


@dataclasses.dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one delivery attempt (or, from :func:`deliver_with_retries`, of the last one).

    ``retryable`` is False when delivered, and when the receiver answered
    ``410 Gone`` (the Standard Webhooks way of saying "stop sending").
    """

    delivered: bool
    retryable: bool
    status: int | None  # HTTP status, None when no response arrived
    reason: str  # short human text: "HTTP 500: <body start>", "timeout after 10s", ...
    msg_id: str
    elapsed_s: float = 0.0
    attempts: int = 1


def validate_url(url: str, *, allow_private: bool = False) -> str:
    """Accept only ``http``/``https`` URLs with a host, as ``invalid_job`` otherwise.

    Checked before any work starts, so a job with an unusable webhook is
    rejected up front instead of rendering and then failing to report.
    """
    if not isinstance(url, str):
        raise InvalidJob(f"webhook.url must be a string, got {url!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidJob(f"webhook.url is not a valid URL: {url!r}") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidJob(f"webhook.url must use http or https, got {url!r}")
    if not parts.hostname:
        raise InvalidJob(f"webhook.url must name a host, got {url!r}")
    if any(c in url for c in "\r\n\t ") or port == 0:
        raise InvalidJob(f"webhook.url is not a valid URL: {url!r}")
    return url


def secret_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64 after an optional ``whsec_`` prefix.

    Matches the reference libraries (which decode with or without the prefix),
    so a receiver verifying with the same secret string agrees with us.
    """
    if not isinstance(secret, str) or not secret:
        raise InvalidJob("webhook.secret must be a non-empty string")
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidJob("webhook.secret must be base64, optionally prefixed with 'whsec_'") from exc
    if not key:
        raise InvalidJob("webhook.secret decodes to an empty key")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 over ``id.timestamp.body``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def event_id(render_id: str, event_type: str) -> str:
    """A ``webhook-id`` that is the same for every attempt and redelivery of one render's event."""
    digest = hashlib.sha256(f"{render_id}\x00{event_type}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def build_event(event_type: str, render_id: str, asset_id: str, extra: Mapping[str, Any] | None = None) -> bytes:
    """The event body: ``{"type": ..., "data": {"entity_id": ..., "asset_id": ..., **extra}}`` as compact JSON.

    ``extra`` carries optional fields such as ``error_code``/``error_message``;
    it may not override the identifying fields.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"event_type must be one of {EVENT_TYPES}, got {event_type!r}")
    data: dict[str, Any] = {"entity_id": render_id, "asset_id": asset_id}
    for key, value in (extra or {}).items():
        if key in data:
            raise ValueError(f"extra may not override {key!r}")
        data[key] = value
    return json.dumps({"type": event_type, "data": data}, separators=(",", ":"), ensure_ascii=False).encode()


def headers_for(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """All request headers of one attempt (the signature covers this attempt's timestamp)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def deliver_once(
    url: str,
    secret: str,
    msg_id: str,
    body: bytes,
    timeout_s: float,
    now: Callable[[], float] = time.time,
) -> DeliveryResult:
    """POST one signed attempt. 2xx is delivered; everything else is a result, never an exception.

    Timeouts, connection errors, TLS errors, 3xx/4xx/5xx are retryable except
    ``410 Gone``. Only a bad URL or secret raises (:class:`InvalidJob`), since
    no retry can fix those.
    """
    validate_url(url)
    headers = headers_for(secret, msg_id, int(now()), body)
    parts = urllib.parse.urlsplit(url)
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout_s, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout_s)
    started = time.monotonic()

    def result(delivered: bool, retryable: bool, status: int | None, reason: str) -> DeliveryResult:
        return DeliveryResult(delivered, retryable, status, reason, msg_id, time.monotonic() - started)

    try:
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        snippet = response.read(_REASON_BYTES).decode("utf-8", "replace").strip()
    except TimeoutError:
        return result(False, True, None, f"timeout after {timeout_s:g}s")
    except (OSError, http.client.HTTPException) as exc:
        return result(False, True, None, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    status = response.status
    reason = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    if 200 <= status < 300:
        return result(True, False, status, reason)
    if status == 410:
        return result(False, False, status, reason + " (endpoint gone, giving up)")
    return result(False, True, status, reason)


def backoff_schedule(attempts: int, min_ms: int, max_ms: int) -> list[float]:
    """Delays in **seconds** before attempts 2..n: ``min_ms`` doubling, capped at ``max_ms``.

    ``attempts`` includes the first one, so the list has ``attempts - 1``
    entries and its sum bounds how long delivery can take (plus timeouts).
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    if min_ms < 0 or max_ms < min_ms:
        raise ValueError(f"need 0 <= min_ms <= max_ms, got {min_ms}, {max_ms}")
    return [min(max_ms, min_ms * 2**i) / 1000.0 for i in range(attempts - 1)]


def deliver_with_retries(
    url: str,
    secret: str,
    msg_id: str,
    body: bytes,
    *,
    attempts: int,
    min_backoff_ms: int,
    max_backoff_ms: int,
    timeout_s: float,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
) -> DeliveryResult:
    """Deliver, blocking, over :func:`backoff_schedule`; returns the last attempt's result.

    For ``render-cli`` and local use. The worker does not call this: it runs
    :func:`deliver_once` from a queue actor so delivery never blocks a render.
    """
    validate_url(url)
    secret_key(secret)  # a bad secret is a job error, not N failed attempts
    delays = backoff_schedule(attempts, min_backoff_ms, max_backoff_ms)
    result: DeliveryResult | None = None
    for attempt in range(1, attempts + 1):
        result = dataclasses.replace(deliver_once(url, secret, msg_id, body, timeout_s, now), attempts=attempt)
        if result.delivered or not result.retryable:
            break
        if attempt < attempts:
            log.warning("webhook %s attempt %d/%d failed: %s", msg_id, attempt, attempts, result.reason)
            sleep(delays[attempt - 1])
    assert result is not None
    if not result.delivered:
        log.error("webhook %s not delivered after %d attempts: %s", msg_id, result.attempts, result.reason)
    return result
