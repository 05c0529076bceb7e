"""The ``output`` object of a job: the public API's vocabulary for what to make.

Kept apart from the graph builder because it is the contract with the API
(format, resolution tier, bitrate tiers), validated at intake, while the graph
builder only consumes a validated :class:`OutputSpec`.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any

from worker import exports, loudness
from worker.errors import InvalidJob, excerpt
from worker.presets import FORMATS, Tiers, load_preset, load_tiers

#: Editor exports (DESIGN, "Editor exports"): timeline documents, never encoded; their table is worker/exports.
EXPORT_FORMATS = exports.NAMES
#: Everything ``output.format`` accepts: the media formats (one a preset file), then the exports.
OUTPUT_FORMATS = FORMATS + EXPORT_FORMATS
#: ``output.aspect``: width over height of the output picture, cropped from the source's.
ASPECTS: dict[str, Fraction] = {
    "9:16": Fraction(9, 16),
    "1:1": Fraction(1),
    "4:5": Fraction(4, 5),
    "16:9": Fraction(16, 9),
}


def extension_of(fmt: str) -> str:
    """The stored object's extension for ``fmt``: the preset's for media, the export table's for a document."""
    kind = exports.FORMATS.get(fmt)
    return kind.extension if kind is not None else load_preset(fmt).extension


def content_type_of(fmt: str) -> str:
    """The stored object's content type for ``fmt`` (from the same two tables as :func:`extension_of`)."""
    kind = exports.FORMATS.get(fmt)
    return kind.content_type if kind is not None else load_preset(fmt).content_type


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    format: str
    resolution: str | None = None
    video_bitrate: int | None = None  # Mbps
    audio_bitrate: int | None = None  # kbps
    loudness: str | None = None  # a target of worker/loudness.py; None keeps the source's level
    aspect: str | None = None  # one of ASPECTS; None keeps the source's picture
    smart: bool = True  # copy whole GOPs where the source's video can go out unchanged (worker/smart.py)

    @classmethod
    def from_dict(cls, raw: Any, tiers: Tiers | None = None) -> OutputSpec:
        """Validate the ``output`` object of a job; errors name the field and a short excerpt of the value.

        Values are compared only after their type is checked: a tenant can send
        any JSON here (``{}``, ``[]``), and an unhashable value must end as
        ``invalid_job``, not as a ``TypeError`` out of a dict lookup.
        """
        tiers = tiers or load_tiers()
        if not isinstance(raw, dict):
            raise InvalidJob(f"output must be an object, got {excerpt(raw)}")
        unknown = set(raw) - {"format", "resolution", "video_bitrate", "audio_bitrate", "loudness", "aspect", "smart"}
        if unknown:
            raise InvalidJob(f"output has unknown field(s): {excerpt(sorted(unknown))}")
        fmt = raw.get("format")
        if not isinstance(fmt, str) or fmt not in OUTPUT_FORMATS:
            raise InvalidJob(f"output.format must be one of {', '.join(OUTPUT_FORMATS)}; got {excerpt(fmt)}")
        res = raw.get("resolution")
        if res is not None and (not isinstance(res, str) or res not in tiers.resolutions):
            allowed = ", ".join(tiers.resolutions)
            raise InvalidJob(f"output.resolution must be one of {allowed} or null; got {excerpt(res)}")
        vb = raw.get("video_bitrate")
        if vb is not None and (type(vb) is not int or vb not in tiers.video_allowed_mbps):
            allowed = ", ".join(map(str, tiers.video_allowed_mbps))
            raise InvalidJob(f"output.video_bitrate must be one of {allowed} (Mbps) or null; got {excerpt(vb)}")
        ab = raw.get("audio_bitrate")
        if ab is not None and (type(ab) is not int or ab not in tiers.audio_allowed_kbps):
            allowed = ", ".join(map(str, tiers.audio_allowed_kbps))
            raise InvalidJob(f"output.audio_bitrate must be one of {allowed} (kbps) or null; got {excerpt(ab)}")
        level = raw.get("loudness")
        if level is not None and (not isinstance(level, str) or level not in loudness.TARGETS):
            allowed = ", ".join(loudness.TARGETS)
            raise InvalidJob(f"output.loudness must be one of {allowed} or null; got {excerpt(level)}")
        aspect = raw.get("aspect")
        if aspect is not None and (not isinstance(aspect, str) or aspect not in ASPECTS):
            raise InvalidJob(f"output.aspect must be one of {', '.join(ASPECTS)} or null; got {excerpt(aspect)}")
        if aspect is not None and fmt in FORMATS and not load_preset(fmt).has_video:
            raise InvalidJob(f"output.aspect ({aspect}) needs a video format; {fmt} has no picture")
        smart = raw.get("smart")
        if smart is None:
            smart = True  # absent or null: the default, as for every other option
        elif type(smart) is not bool:
            raise InvalidJob(f"output.smart must be true, false or null; got {excerpt(smart)}")
        # An export's resolution, bitrates, loudness and aspect are checked like any (a typo is still refused) but
        # change nothing: a timeline document has no pixels, bits or samples to size.
        return cls(
            format=fmt, resolution=res, video_bitrate=vb, audio_bitrate=ab, loudness=level, aspect=aspect, smart=smart
        )

    @property
    def is_export(self) -> bool:
        """Whether this output is an editor export (a document, never an encode)."""
        return self.format in EXPORT_FORMATS

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for optional in ("loudness", "aspect"):
            if out[optional] is None:
                # Absent, as in every job before the option existed: the record and the fingerprint of an older
                # job are what they were.
                del out[optional]
        if out["smart"]:
            del out["smart"]  # the default, absent as before the option existed
        return out
