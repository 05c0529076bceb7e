"""Encoding presets, loaded from the TOML files in ``presets/``.

Presets are data so that operators can tune encoder flags without touching
code. Each output format has one file with a ``cpu`` and an ``nvenc`` variant,
and the formats are the files: a new media format is a new ``presets/<name>.toml``
(its container, muxer flags, codecs, and for a video format the formats of its
chunk pieces), plus an encoder entry only where it has a GPU variant.
``tiers.toml`` holds the public option vocabulary (resolutions, bitrate tiers)
and the Auto defaults.

The files live at the top of the repository; a wheel carries them inside the
package as ``worker/_presets`` (see pyproject.toml), which is looked up first.
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from pathlib import Path
from typing import Any

from worker.errors import InvalidJob, RenderError

VARIANTS = ("cpu", "nvenc")
#: The data file that is not a format.
_TIERS_FILE = "tiers.toml"


def presets_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "_presets", here.parent / "presets"):
        if (candidate / "tiers.toml").is_file():
            return candidate
    raise RenderError("preset files not found (expected worker/_presets or presets/ next to the package)")


@dataclasses.dataclass(frozen=True)
class Preset:
    format: str
    variant: str  # "cpu" or "nvenc"
    extension: str
    content_type: str
    muxer: str
    muxer_args: tuple[str, ...]
    has_video: bool
    video_codec: str | None
    video_args: tuple[str, ...]
    audio_codec: str
    audio_args: tuple[str, ...]
    audio_max_channels: int
    audio_sample_rates: tuple[int, ...]
    source_file: str
    #: A video format's chunk pieces: the format each chunk's frames are encoded into, and the audio's.
    piece_format: str | None = None
    audio_piece_format: str | None = None

    @property
    def encoder(self) -> str:
        """Which encoder family produced the file, as the result and metrics report it."""
        return "nvenc" if self.video_codec and "nvenc" in self.video_codec else "cpu"


@dataclasses.dataclass(frozen=True)
class Tiers:
    resolutions: dict[str, int]
    video_allowed_mbps: tuple[int, ...]
    video_auto: tuple[tuple[int, int], ...]  # (max short edge, mbps)
    maxrate_factor: float
    bufsize_factor: float
    audio_allowed_kbps: tuple[int, ...]
    audio_auto_kbps: int

    def auto_video_bps(self, short_edge: int) -> int:
        for max_edge, mbps in self.video_auto:
            if short_edge <= max_edge:
                return mbps * 1_000_000
        return self.video_auto[-1][1] * 1_000_000


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RenderError(f"cannot load preset file {path}: {exc}") from exc


@functools.cache
def media_formats() -> tuple[str, ...]:
    """The media output formats: one per preset file, in the files' ``order``."""
    found = []
    for path in presets_dir().glob("*.toml"):
        if path.name != _TIERS_FILE:
            data = _load_toml(path)
            found.append((int(data.get("order", 1000)), path.stem))
    return tuple(name for _, name in sorted(found))


FORMATS = media_formats()


@functools.cache
def load_tiers() -> Tiers:
    data = _load_toml(presets_dir() / "tiers.toml")
    return Tiers(
        resolutions={k: int(v) for k, v in data["resolution"].items()},
        video_allowed_mbps=tuple(data["video"]["allowed_mbps"]),
        video_auto=tuple((int(r["max_short_edge"]), int(r["mbps"])) for r in data["video"]["auto"]),
        maxrate_factor=float(data["video"]["maxrate_factor"]),
        bufsize_factor=float(data["video"]["bufsize_factor"]),
        audio_allowed_kbps=tuple(data["audio"]["allowed_kbps"]),
        audio_auto_kbps=int(data["audio"]["auto_kbps"]),
    )


@functools.cache
def load_preset(fmt: str, variant: str = "cpu") -> Preset:
    if fmt not in FORMATS:
        raise InvalidJob(f"output.format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if variant not in VARIANTS:
        raise RenderError(f"unknown preset variant {variant!r}")
    path = presets_dir() / f"{fmt}.toml"
    data = _load_toml(path)
    try:
        var = data["variants"][variant]
        video = var.get("video") if data["video"] else None
        audio = data["audio"]
        preset = Preset(
            format=data["format"],
            variant=variant,
            extension=data["extension"],
            content_type=data["content_type"],
            muxer=data["muxer"],
            muxer_args=tuple(data.get("muxer_args", ())),
            has_video=bool(data["video"]),
            video_codec=video["codec"] if video else None,
            video_args=tuple(video.get("args", ())) if video else (),
            audio_codec=audio["codec"],
            audio_args=tuple(audio.get("args", ())),
            audio_max_channels=int(audio["max_channels"]),
            audio_sample_rates=tuple(int(x) for x in audio["sample_rates"]),
            source_file=str(path),
            piece_format=data.get("piece") if data["video"] else None,
            audio_piece_format=data.get("audio_piece") if data["video"] else None,
        )
    except (KeyError, TypeError) as exc:
        raise RenderError(f"preset file {path} is missing or mistypes a field: {exc}") from exc
    for piece in (preset.piece_format, preset.audio_piece_format):
        if piece is not None and piece not in FORMATS:
            raise RenderError(f"preset file {path} names a piece format with no preset: {piece!r}")
    return preset


def all_presets() -> list[Preset]:
    return [load_preset(f, v) for f in FORMATS for v in VARIANTS]
