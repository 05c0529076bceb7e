"""Editor exports: the cut as a timeline document, one writer a format behind one signature.

Every writer is ``write(cut: Cut) -> str``, pure: the :class:`~worker.exports.cut.Cut` (built from the
planner's own timeline, so an editor shows frame for frame what a render of the same job shows) goes in, the
document's text comes out. :data:`FORMATS` is the one table of the export formats: name, the stored
object's extension and content type, and the writer. A new format is a module with a ``write`` and a row
here; the job's ``output.format`` accepts it from then on (worker/output.py reads the names from here).

Why hand-written writers: OTIO's FCPXML writer leaves ``frameDuration`` empty at 30000/1001, so its
output cannot even be read back; the other documents are small, and writing them here keeps one set of
rules (rates, drop-frame, reel names, channel codes, start timecode) in one place. Each is read back with
OTIO's own adapter for its format in the tests. The OTIO JSON is OTIO's own serialisation.

:func:`worker.exports.file.export_file` runs one on a local file (the CLI and the queue's export jobs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from fractions import Fraction

from worker.errors import InvalidJob
from worker.exports import edl, fcpxml, otio, xmeml
from worker.exports.cut import Clip, Cut


def _own_rate(cut: Cut) -> Fraction:
    return cut.rate


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    name: str
    extension: str  # the stored object's, as for renders
    content_type: str
    write: Callable[[Cut], str]
    #: The rate the document counts in (the result's ``rate``): the cut's own, but an audio-only EDL's frames.
    rate_of: Callable[[Cut], Fraction] = _own_rate


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("xmeml", "xml", "application/xml", xmeml.write),
        ExportFormat("fcpxml", "fcpxml", "application/xml", fcpxml.write),
        ExportFormat("edl", "edl", "text/plain", edl.write, edl.document_rate),
        ExportFormat("otio", "otio", "application/json", otio.write),
    )
}
#: The export formats' names, in the table's order: what ``output.format`` accepts besides the media formats.
NAMES: tuple[str, ...] = tuple(FORMATS)


def export(cut: Cut, fmt: str) -> str:
    """The document text of ``cut`` in ``fmt`` (one of :data:`FORMATS`)."""
    kind = FORMATS.get(fmt)
    if kind is None:
        raise InvalidJob(f"not an export format: {fmt}")
    return kind.write(cut)


__all__ = ["FORMATS", "NAMES", "Clip", "Cut", "ExportFormat", "export"]
