"""The versioned job message of the render queue (DESIGN.md, "Job message").

Job messages come from users (through the API), so everything is validated
before any work starts and every complaint names the field and the value.
Identifiers end up in Redis keys and object keys, so they are restricted to a
safe alphabet: no slashes, no spaces, no dots at the start.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from worker import webhooks
from worker.errors import InvalidJob
from worker.output import OutputSpec
from worker.plan import Segment, parse_segments
from worker.storage.base import parse_uri

VERSION = 1
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_FIELDS = {"version", "render_id", "asset_id", "cut_id", "source", "segments", "output", "webhook"}


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

    def to_message(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "render_id": self.render_id,
            "asset_id": self.asset_id,
            "cut_id": self.cut_id,
            "source": {"uri": self.source_uri},
            "segments": None if self.segments is None else [{"start": s.start, "end": s.end} for s in self.segments],
            "output": self.output.to_dict(),
            "webhook": None if self.webhook is None else {"url": self.webhook.url, "secret": self.webhook.secret},
        }


def _id(raw: dict[str, Any], field: str, *, optional: bool = False) -> str | None:
    value = raw.get(field)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidJob(f"{field} must be an id of letters, digits, '_' or '-' (max 128), got {value!r}")
    return value


def render_id_of(raw: Any) -> str | None:
    """The render id of a message, if it has a usable one (even when the rest is invalid)."""
    if isinstance(raw, dict):
        value = raw.get("render_id")
        if isinstance(value, str) and _ID.match(value):
            return value
    return None


def parse_webhook(raw: Any) -> Webhook | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"url", "secret"}:
        raise InvalidJob(f"webhook must be null or an object with url and secret, got {raw!r}")
    url, secret = raw.get("url"), raw.get("secret")
    # The same checks delivery applies, so a webhook that passes intake can be delivered.
    webhooks.validate_url(url)  # type: ignore[arg-type]
    if not isinstance(secret, str) or not secret.startswith(webhooks.SECRET_PREFIX):
        raise InvalidJob("webhook.secret must be a 'whsec_' secret")
    if len(webhooks.secret_key(secret)) < 16:
        raise InvalidJob("webhook.secret is shorter than 16 bytes")
    return Webhook(url=url, secret=secret)  # type: ignore[arg-type]


def parse_job(raw: Any, *, max_segments: int = 10_000) -> Job:
    if not isinstance(raw, dict):
        raise InvalidJob(f"the job message must be a JSON object, got {type(raw).__name__}")
    version = raw.get("version")
    if version != VERSION:
        raise InvalidJob(f"version must be {VERSION}, got {version!r}")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise InvalidJob(f"unknown field(s) in the job message: {', '.join(sorted(unknown))}")
    render_id = _id(raw, "render_id")
    asset_id = _id(raw, "asset_id")
    cut_id = _id(raw, "cut_id", optional=True)
    source = raw.get("source")
    uri = source.get("uri") if isinstance(source, dict) else None
    if not isinstance(uri, str):
        raise InvalidJob(f"source.uri must be a non-empty string, got {uri!r}")
    parse_uri(uri)  # the parser storage fetches with: a URI that passes here can be fetched
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
        webhook=parse_webhook(raw.get("webhook")),
    )
