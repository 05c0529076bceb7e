"""Terminal events, signed with Standard Webhooks and delivered only to public addresses.

Each job ends with ``render.completed``, ``render.failed`` or ``render.cancelled`` posted to the
job's webhook URL (DESIGN.md, "Terminal events"). The pieces here are small
and pure where they can be, so the queue layer schedules attempts with its
own retries:

* :func:`validate_url` — the intake check (``invalid_job``): http/https, a host,
  no credentials, at most :data:`MAX_URL_CHARS` of printable ASCII, and no host
  that is a loopback name or a literal non-public address in any spelling.
  No DNS here: names are checked at delivery, against what they resolve to then.
* :func:`build_event` — the JSON body, compact and deterministic.
* :func:`event_id` — ``webhook-id``, stable per render and event type, so a
  redelivered job or a retried attempt carries the same id and receivers dedupe.
* :func:`sign` — ``v1,<base64 HMAC-SHA256 over "id.timestamp.body">``.
* :func:`deliver_once` — one POST; never raises for delivery trouble, it
  returns a :class:`DeliveryResult` saying whether another attempt makes sense.

The tenant chooses the URL, so delivery is where server-side request forgery
is stopped (DESIGN.md, "Trust boundary"; the address policy is
:mod:`worker.netguard`). :func:`deliver_once` resolves the host once, refuses
the attempt if *any* answer is not a public address, and then connects to
exactly the addresses it checked: the connection classes below never look the
name up again, so DNS rebinding cannot switch the address between the check
and the connect. The ``Host`` header stays the URL's host, and HTTPS sends
that name as SNI and verifies the certificate against it. ``allow_private``
(``RENDER_WEBHOOK_ALLOW_PRIVATE``, off by default) lifts the address policy
for tests and on-premise receivers; resolution and pinning stay the same.

Only the standard library is used (``http.client``): redirects are *not*
followed (a POST silently turned into a GET would look delivered, and a
redirect could point inside; a 3xx is a failed attempt), and the timeout bounds
the whole attempt (connect, send, the reply's status and headers), not each
read: a receiver dripping one byte at a time cannot stretch an attempt. The
receiver's reply body is never read: a result keeps the status
code and a short, sanitised reason phrase only, since results are logged and
a forged request's reply is exactly what an attacker would like to read.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime
import hashlib
import http.client
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from standardwebhooks.webhooks import Webhook as StandardWebhook

from worker import netguard
from worker.errors import InvalidJob, excerpt

RENDER_COMPLETED = "render.completed"
RENDER_FAILED = "render.failed"
RENDER_CANCELLED = "render.cancelled"
EVENT_TYPES = (RENDER_COMPLETED, RENDER_FAILED, RENDER_CANCELLED)

SECRET_PREFIX = "whsec_"
USER_AGENT = "render-worker/0.1 (Standard Webhooks)"

#: Longest webhook URL accepted at intake (browsers and proxies agree on about this much).
MAX_URL_CHARS = 2048
#: Longest receiver-supplied text (the HTTP reason phrase) kept in a result.
_REASON_CHARS = 60
#: How many of a name's (all checked) addresses one attempt tries, so an attempt's time stays bounded.
_MAX_CONNECT_ADDRESSES = 4

# A host name (not a bracketed IPv6 literal): ASCII labels only, so what is
# checked is exactly what the resolver and the Host header get (IDNs must come
# as punycode).
_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")
_NOT_URL_CHARS = re.compile(r"[^\x21-\x7e]")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")

Resolver = Callable[[str, int], list[str]]


@dataclasses.dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one delivery attempt.

    ``retryable`` is False when delivered, when the address policy refused the
    host (no retry changes that), and when the receiver answered ``410 Gone``
    (the Standard Webhooks way of saying "stop sending").
    """

    delivered: bool
    retryable: bool
    status: int | None  # HTTP status, None when no response arrived
    reason: str  # short, sanitised: "HTTP 500 Internal Server Error", "timeout after 10s", ...
    msg_id: str
    elapsed_s: float = 0.0


def _split(url: Any) -> urllib.parse.SplitResult:
    """The parts of a well-formed webhook URL, or :class:`InvalidJob` saying what is wrong with it."""
    if not isinstance(url, str):
        raise InvalidJob(f"webhook.url must be a string, got {type(url).__name__}")
    if len(url) > MAX_URL_CHARS:
        raise InvalidJob(f"webhook.url is longer than {MAX_URL_CHARS} characters")
    # Spaces and control characters split or smuggle request lines; non-ASCII
    # would be encoded differently by each layer. Percent-encoding covers both.
    if _NOT_URL_CHARS.search(url):
        raise InvalidJob(f"webhook.url must be printable ASCII without spaces, got {excerpt(url)}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidJob(f"webhook.url is not a valid URL: {excerpt(url)}") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidJob(f"webhook.url must use http or https, got {excerpt(url)}")
    if "@" in parts.netloc:
        # Not quoted: the user-info part is where a password would be.
        raise InvalidJob("webhook.url may not carry credentials (user:password@host)")
    host = parts.hostname
    if not host:
        raise InvalidJob(f"webhook.url must name a host, got {excerpt(url)}")
    if port == 0 or ("[" not in parts.netloc and not _HOST_NAME.fullmatch(host)):
        raise InvalidJob(f"webhook.url is not a valid URL: {excerpt(url)}")
    return parts


def _host_refusal(host: str, allow_private: bool) -> str | None:
    """Why ``host`` may not be contacted before any DNS is done (a loopback name, a literal non-public address)."""
    if allow_private:
        return None
    if netguard.is_local_name(host):
        return f"webhook.url must name a public host, got {excerpt(host)} (a loopback name)"
    addr = netguard.parse_literal(host)
    why = netguard.refusal(addr) if addr is not None else None
    if why:
        return f"webhook.url must name a public address, got {excerpt(host)} ({why}: {addr})"
    return None


def validate_url(url: str, *, allow_private: bool = False) -> str:
    """Accept a webhook URL at intake, or raise :class:`InvalidJob` saying why not.

    Checked before any work starts, so a job with an unusable webhook is
    rejected up front instead of rendering and then failing to report. Refuses
    loopback names and literal non-public addresses in any spelling unless
    ``allow_private``; names are not resolved here (their answers may change
    by delivery time, so :func:`deliver_once` checks them then).
    """
    parts = _split(url)
    why = _host_refusal(parts.hostname or "", allow_private)
    if why:
        raise InvalidJob(why)
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
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 over ``id.timestamp.body``.

    Signed by the Standard Webhooks reference library (what receivers verify with); the secret is checked by
    :func:`secret_key` first, with the intake's rules and messages.
    """
    stamp = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return str(StandardWebhook(secret_key(secret)).sign(msg_id, stamp, body.decode("utf-8")))


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


def _clean(text: str | None, limit: int = _REASON_CHARS) -> str:
    """Receiver- or network-supplied text made safe to log: printable ASCII, one line, at most ``limit`` chars."""
    text = _UNPRINTABLE.sub(" ", text or "").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _connect_checked(addresses: list[str], port: int, timeout: float | None) -> socket.socket:
    """A TCP connection to the first of ``addresses`` that answers; never a name lookup.

    ``AI_NUMERICHOST`` only turns an address string into a socket address (an
    IPv6 zone included); it fails rather than ask DNS.
    """
    error: OSError = OSError("no address to connect to")
    for address in addresses[:_MAX_CONNECT_ADDRESSES]:
        try:
            family, type_, proto, _canon, sockaddr = socket.getaddrinfo(
                address, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            )[0]
        except OSError as exc:
            error = exc
            continue
        sock = socket.socket(family, type_, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    raise error


class _CheckedHTTPConnection(http.client.HTTPConnection):
    """HTTP to addresses already checked by the policy; ``host`` is only the Host header.

    The stock ``connect`` resolves ``host`` again, and a second answer is the
    one DNS rebinding controls.
    """

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._addresses = addresses

    def connect(self) -> None:
        self.sock = _connect_checked(self._addresses, self.port, self.timeout)


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to addresses already checked; SNI and certificate verification use the URL's host."""

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._addresses = addresses
        self._tls = context

    def connect(self) -> None:
        raw = _connect_checked(self._addresses, self.port, self.timeout)
        try:
            # server_hostname sends SNI and, with check_hostname (the default
            # context's), makes the handshake fail unless the certificate names
            # this host: connecting by address does not weaken verification.
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


def _address_refusal(address: str) -> str | None:
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    return netguard.refusal(addr)


def deliver_once(
    url: str,
    secret: str,
    msg_id: str,
    body: bytes,
    timeout_s: float,
    now: Callable[[], float] = time.time,
    *,
    allow_private: bool = False,
    resolve: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> DeliveryResult:
    """POST one signed attempt. 2xx is delivered; everything else is a result, never an exception.

    The host is resolved once (``resolve``, default :func:`netguard.resolve`);
    unless ``allow_private``, a loopback name, or a host any of whose addresses
    is not public, is refused without connecting, and that result is not
    retryable. The connection then goes to those same addresses.

    Timeouts, resolution, connection and TLS errors, and 3xx/4xx/5xx are
    retryable except ``410 Gone``. Only a malformed URL or secret raises
    (:class:`InvalidJob`): intake refuses both, and no retry can fix them.
    ``ssl_context`` replaces the default verifying context (tests use it to
    trust their own CA).
    """
    parts = _split(url)
    headers = headers_for(secret, msg_id, int(now()), body)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (http.client.HTTPS_PORT if https else http.client.HTTP_PORT)
    started = time.monotonic()

    def result(delivered: bool, retryable: bool, status: int | None, reason: str) -> DeliveryResult:
        return DeliveryResult(delivered, retryable, status, reason, msg_id, time.monotonic() - started)

    refused = _host_refusal(host, allow_private)
    if refused:
        return result(False, False, None, refused + "; not sent")
    try:
        addresses = (resolve or netguard.resolve)(host, port)
    except OSError as exc:
        detail = _clean(exc.strerror or type(exc).__name__)
        return result(False, True, None, f"cannot resolve {excerpt(host)}: {detail}")
    if not addresses:
        return result(False, True, None, f"cannot resolve {excerpt(host)}: no address")
    if not allow_private:
        for address in addresses:
            why = _address_refusal(address)
            if why:
                shown = address if why != "not an IP address" else excerpt(address)
                return result(
                    False, False, None, f"{excerpt(host)} resolves to {shown} ({why}), not a public address; not sent"
                )

    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    remaining = max(0.001, timeout_s - (time.monotonic() - started))
    conn: http.client.HTTPConnection
    if https:
        context = ssl_context or ssl.create_default_context()
        conn = _CheckedHTTPSConnection(host, port, addresses, remaining, context)
    else:
        conn = _CheckedHTTPConnection(host, port, addresses, remaining)
    # The whole attempt is bounded, not each socket operation: a receiver that drips its reply a byte at a
    # time never lets one read time out. At the deadline the socket is shut down under http.client's feet.
    watchdog = _Watchdog(conn, remaining)
    try:
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        # Status line only: the body is never read, let alone kept.
        status, phrase = response.status, _clean(response.reason)
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        if watchdog.fired or isinstance(exc, TimeoutError):
            return result(False, True, None, f"timeout after {timeout_s:g}s (the attempt's whole time)")
        return _failed_attempt(exc, result)
    finally:
        watchdog.cancel()
        conn.close()
    reason = f"HTTP {status}" + (f" {phrase}" if phrase else "")
    if 200 <= status < 300:
        return result(True, False, status, reason)
    if status == 410:
        return result(False, False, status, reason + " (endpoint gone, giving up)")
    # A 3xx is a failed attempt like a 5xx: never followed (see the module's notes), retried to the same URL.
    return result(False, True, status, reason)


def _failed_attempt(
    exc: BaseException, result: Callable[[bool, bool, int | None, str], DeliveryResult]
) -> DeliveryResult:
    """What a connection, TLS or protocol error says about an attempt (retryable, with a short reason)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return result(False, True, None, f"TLS certificate not accepted: {_clean(exc.verify_message)}")
    if isinstance(exc, ssl.SSLError):
        return result(False, True, None, f"TLS error: {_clean(exc.reason or type(exc).__name__)}")
    if isinstance(exc, OSError):
        return result(False, True, None, f"{type(exc).__name__}: {_clean(exc.strerror or str(exc))}")
    # Not str(exc): BadStatusLine and friends quote what the receiver sent.
    return result(False, True, None, f"bad HTTP response ({type(exc).__name__})")


class _Watchdog:
    """Shuts a connection's socket down once ``seconds`` have passed, whatever it is waiting for."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self.fired = False
        self._conn = conn
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()
