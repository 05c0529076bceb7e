"""No secret in any log line, at any level, from any logger.

Secrets pass through this process in plain text: a job message carries its webhook's ``whsec_`` secret (and
Dramatiq logs every message it receives at DEBUG, arguments included), the Redis URL may carry a password, and
boto3 holds the AWS credentials (botocore logs request headers at DEBUG). Rather than trusting every library
never to log one, :func:`install` wraps the :class:`logging.LogRecord` factory: every record, from every logger
and at every level, has its message (and its traceback text) redacted before any handler or filter sees it.
What is redacted: anything shaped like a webhook secret, and the literal secret values the worker was given
(:func:`worker.settings.secret_values`).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

from worker.errors import redact

REDACTED = "<redacted>"
# Literals shorter than this are not redacted: "a" would turn every log line to mush, and no real secret is short.
_MIN_SECRET = 6
_lock = threading.Lock()
_literals: set[str] = set()
_pattern: re.Pattern[str] | None = None
_installed: list[Callable[..., logging.LogRecord]] = []


def scrub(text: str) -> str:
    """``text`` with every webhook secret and every registered secret value replaced."""
    text = redact(text)
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    return text


def add_secrets(values: Iterable[str | None]) -> None:
    """Register literal secret values (a Redis password, an AWS secret key) to be redacted from every record."""
    global _pattern
    with _lock:
        _literals.update(v for v in values if v and len(v) >= _MIN_SECRET)
        if _literals:
            # Longest first, so that a secret containing another is replaced whole.
            alternatives = sorted(_literals, key=len, reverse=True)
            _pattern = re.compile("|".join(re.escape(v) for v in alternatives))


def _safe(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string is the handler's to report; keep the record as it is
        return record
    clean = scrub(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        # Formatted now, redacted, and kept where every Formatter looks before formatting it again.
        record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)
    return record


def install(secrets: Iterable[str | None] = ()) -> None:
    """Redact every log record of this process from now on (idempotent); ``secrets``: literal values too."""
    add_secrets(secrets)
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return _safe(previous(*args, **kwargs))

        logging.setLogRecordFactory(factory)
        _installed.append(previous)
