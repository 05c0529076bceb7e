"""The delivered files (issue 23.6): no encoder tags, ``moov`` first in mov as in mp4."""

from __future__ import annotations

import re
from pathlib import Path

import av
import pytest

from worker.output import OutputSpec
from worker.plan import Segment
from worker.render import render
from worker.settings import Settings

CPU = Settings(nvenc="off")


def top_level_boxes(path: Path) -> list[str]:
    """The ISO BMFF box types at the top level of an mp4/mov/m4a, in file order."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        out.append(kind)
        if size < 8:
            break
        pos += size
    return out


@pytest.mark.parametrize("fmt", ["mp4", "mov", "m4a", "mp3"])
def test_no_encoder_tag_and_the_index_first(media, tmp_path, fmt):
    src = media["cfr2997"] if fmt in ("mp4", "mov") else media["audio_mp3"]
    out = tmp_path / f"out.{fmt}"
    render(src, [Segment(1.0, 3.0)], OutputSpec(fmt), out, settings=CPU)
    with av.open(str(out)) as c:
        tags = {**c.metadata, **{k: v for s in c.streams for k, v in s.metadata.items()}}
    if fmt == "mp3":
        # The LAME header's encoder field, which its gapless data needs: with no version in it.
        assert tags.pop("encoder", "Lavf") in ("Lavf", "Lavf lame")
    assert not {k: v for k, v in tags.items() if k.lower() in ("encoder", "encoded_by") or "Lav" in str(v)}, tags
    data = out.read_bytes()
    assert b"\xa9swr" not in data and b"TSSE" not in data  # QuickTime's and ID3's encoder tags
    assert not re.search(rb"Lav[fc]\d", data)  # no library version anywhere in the file
    if fmt != "mp3":
        boxes = top_level_boxes(out)
        assert boxes.index("moov") < boxes.index("mdat"), boxes  # +faststart: playable before it is all there
