"""What one delivery is given: its collaborators (:class:`Deps`), the metric hooks, and how it ends."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from worker.jobs import Webhook
from worker.records import RecordStore
from worker.render import RenderResult, render
from worker.settings import Settings
from worker.source_cache import SourceCache
from worker.storage.base import Storage


class Outcome(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # the record was cancelled: stopped (or never started), acknowledged
    DUPLICATE = "duplicate"  # already terminal: nothing done
    DISPATCHED = "dispatched"  # a chunked render: its chunks are on the queue, the assembly completes it
    STORED = "stored"  # one part (a chunk, the audio) of a chunked render stored under its temporary prefix


class EventSender(Protocol):
    def __call__(
        self, event_type: str, render_id: str, asset_id: str, webhook: Webhook | None, extra: Mapping[str, Any]
    ) -> None: ...


class Observer:
    """Hooks for metrics; the default does nothing (render-cli, unit tests)."""

    def started(self, fmt: str) -> None: ...

    def finished(
        self, outcome: str, fmt: str, encoder: str, wall_s: float, output_s: float, source_s: float
    ) -> None: ...

    def encoding(self, encoder: str) -> None:
        """The job started encoding with ``encoder`` (until then, and for exports, it counts under "none")."""

    def failed(self, code: str, fmt: str) -> None: ...

    def cancelled(self, fmt: str) -> None: ...

    def uploaded(self, size: int, seconds: float) -> None: ...

    def frames(self, fmt: str, copied: int, encoded: int) -> None:
        """A completed video render's frames: ``copied`` from the source (smart render), ``encoded``."""


@dataclasses.dataclass
class Deps:
    settings: Settings
    records: RecordStore
    storage: Storage
    send_event: EventSender
    observer: Observer = dataclasses.field(default_factory=Observer)
    renderer: Callable[..., RenderResult] = render
    #: Sends a part of a chunked render as a message of its own (``"chunk"``, ``"audio"`` or ``"assembly"``, body); None
    #: (render-cli, unit tests) renders everything whole on this worker.
    dispatch: Callable[[str, dict[str, Any]], None] | None = None
    #: The source kept between the parts of a chunked render on this process; None downloads it every time.
    sources: SourceCache | None = None
