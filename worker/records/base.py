"""The record's vocabulary and the :class:`RecordStore` interface every store implements (the contract is in
:mod:`worker.records`): states, the public fields, the results of ``start`` and ``cancel``, and how fields
are written and read."""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from worker.errors import redact

TERMINAL = ("completed", "failed", "cancelled")
#: Longest cancel reason kept in a record (it is free text from whoever asked).
MAX_REASON_CHARS = 200
# Fields of the public record (DESIGN.md); the rest of the hash is internal.
PUBLIC_FIELDS = (
    "id",
    "asset_id",
    "cut_id",
    "state",
    "output",
    "size_bytes",
    "duration_s",
    "error_code",
    "error_message",
    "created_at",
    "started_at",
    "completed_at",
    "cancelled_at",
    "cancel_reason",
    "progress",
    "encoder",
    "attempts",
    "loudness",
    "frames",
)
_INT_FIELDS = {"size_bytes", "attempts"}
_FLOAT_FIELDS = {"duration_s", "progress"}


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class StartResult:
    status: str  # "started", "terminal" or "busy"
    attempts: int = 0
    state: str | None = None


@dataclasses.dataclass(frozen=True)
class CancelResult:
    """What a cancel did: ``cancelled`` (it moved the record), ``terminal`` (nothing: it had ended) or ``missing``.

    ``state`` is the state the record was in when asked (None when missing); ``record`` the record afterwards.
    """

    status: str
    state: str | None = None
    record: dict[str, Any] | None = None

    @property
    def changed(self) -> bool:
        return self.status == "cancelled"


def clean_reason(reason: Any) -> str:
    """A cancel reason as stored: printable text on one line, secrets redacted, at most :data:`MAX_REASON_CHARS`.

    It is free text from the API or an operator and ends up in the public
    record, so it gets the same treatment as an error message: every
    character Python does not call printable (controls, line and paragraph
    separators, zero-width and bidirectional-override characters) becomes a
    space, so a reason cannot forge a log line or reorder what a reader sees;
    runs of spaces collapse; a ``whsec_`` secret is redacted before the text is
    cut, so a secret cut short is still hidden.
    """
    if reason is None:
        return ""
    text = reason if isinstance(reason, str) else str(reason)
    text = text[: MAX_REASON_CHARS * 8]  # bound the work on a huge value
    text = redact(" ".join("".join(c if c.isprintable() else " " for c in text).split()))
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def decode_record(raw: Mapping[str, str]) -> dict[str, Any]:
    """The stored strings as the public record: typed values, nulls for empty fields."""
    out: dict[str, Any] = {}
    for field in PUBLIC_FIELDS:
        value: Any = raw.get(field)
        if value in (None, ""):
            value = 0 if field == "attempts" else (0.0 if field == "progress" else None)
        elif field in _INT_FIELDS:
            value = int(value)
        elif field in _FLOAT_FIELDS:
            value = float(value)
        elif field in ("output", "loudness", "frames"):
            value = json.loads(value)
        out[field] = value
    out["output_key"] = raw.get("output_key") or None
    # The name a download is saved under (pipeline.download_name); internal, like output_key.
    out["download_name"] = raw.get("download_name") or None
    return out


def encode_fields(fields: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in fields.items():
        if v is None:
            out[k] = ""
        elif isinstance(v, dict | list):
            out[k] = json.dumps(v, separators=(",", ":"))
        else:
            out[k] = str(v)
    return out


class RecordStore(abc.ABC):
    """Where render records live. All transitions are guarded and atomic (see the module docstring)."""

    @abc.abstractmethod
    def create(self, render_id: str, fields: Mapping[str, Any]) -> bool:
        """A new pending record; False if one exists already."""

    @abc.abstractmethod
    def start(self, render_id: str, token: str, lease_ttl_s: float, defaults: Mapping[str, Any]) -> StartResult:
        """Take the lease and move to processing (counting the attempt), unless terminal or leased."""

    @abc.abstractmethod
    def progress(self, render_id: str, token: str, ratio: float, lease_ttl_s: float) -> bool:
        """Record progress and renew the lease; False if another token holds it or the record is not processing."""

    @abc.abstractmethod
    def note(self, render_id: str, token: str, fields: Mapping[str, Any]) -> bool:
        """Write ``fields`` into a processing record held by ``token`` (the encoder once it is known); False if
        the record is not processing or another token holds it."""

    @abc.abstractmethod
    def complete(self, render_id: str, token: str, fields: Mapping[str, Any]) -> bool:
        """processing → completed, for the lease holder; False if terminal, not started, or leased by another."""

    @abc.abstractmethod
    def fail(self, render_id: str, token: str | None, code: str, message: str, defaults: Mapping[str, Any]) -> bool:
        """Any non-terminal state → failed (creating the record if needed).

        False if already terminal or another token holds the lease. ``token`` is None where nothing was
        started (a message refused at intake, a job that could not be queued).
        """

    @abc.abstractmethod
    def release(self, render_id: str, token: str, note: Mapping[str, Any] | None = None) -> bool:
        """Drop our lease (the job will be retried), keeping the record in processing, with ``note`` written.

        False, changing nothing, unless the record is processing and the lease is ours (or lapsed).
        """

    @abc.abstractmethod
    def cancel(self, render_id: str, reason: Any = None) -> CancelResult:
        """pending | processing → cancelled, with ``cancelled_at`` and the cleaned ``reason``; drops the lease.

        Needs no token (the canceller holds none). Changes nothing for a terminal record (``terminal``) and
        never creates one (``missing``).
        """

    @abc.abstractmethod
    def get_raw(self, render_id: str) -> dict[str, str] | None: ...

    def state(self, render_id: str) -> str | None:
        """Just the state (cheap: a rendering worker asks this twice a second to notice a cancel)."""
        raw = self.get_raw(render_id)
        return raw.get("state") if raw else None

    @abc.abstractmethod
    def mark_event(self, render_id: str) -> None:
        """Note that the terminal event was handed to the webhook queue (never creates a record)."""

    # -- chunked renders: the parts of one render that run on many workers (DESIGN, "Chunked renders") --------
    #
    # ``part`` names a chunk ("chunk-7"), the audio ("audio") or the assembly. A part lease works as the render's lease
    # does, one level down: held by one token, renewed while it works, lapsing ``ttl_s`` after its holder stops,
    # so a crashed or stuck chunk is taken over by its redelivery while a duplicate delivery is told to wait.
    # ``chunk_stored`` is the barrier: the set of distinct parts stored (the chunks by index, the audio as index
    # ``count``), so a part stored twice (a duplicate delivery, a redelivery after a crash between upload and ack)
    # counts once.

    @abc.abstractmethod
    def part_lease(self, render_id: str, part: str, token: str, ttl_s: float) -> bool:
        """Take or renew the lease on ``part``; False while another token holds it."""

    @abc.abstractmethod
    def part_release(self, render_id: str, part: str, token: str) -> None:
        """Drop our lease on ``part`` (nothing if another token holds it)."""

    @abc.abstractmethod
    def chunk_stored(self, render_id: str, index: int) -> int:
        """Note chunk ``index`` as stored; returns how many distinct chunks are stored."""

    @abc.abstractmethod
    def chunk_progress(self, render_id: str, index: int, frames: int) -> int:
        """Note ``frames`` done in chunk ``index``; returns the sum over the render's chunks."""

    @abc.abstractmethod
    def chunks_clear(self, render_id: str) -> None:
        """Forget the render's chunk bookkeeping (leases, stored set, progress)."""

    def get(self, render_id: str) -> dict[str, Any] | None:
        raw = self.get_raw(render_id)
        return decode_record(raw) if raw else None

    def event_marked(self, render_id: str) -> bool:
        raw = self.get_raw(render_id)
        return bool(raw and raw.get("event_enqueued"))
