"""``output.aspect`` (issue 22, first part): 9:16, 1:1, 4:5 and 16:9 outputs cropped from the source's picture.

The crop is centred (following the speaker is the issue's next part). Sizes follow the tier's shorter edge, up
or down; the cut stays exact frame for frame, checked against the fixture's own pictures, cropped by the test.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import mediacheck as mc
import numpy as np
import oracle
import pytest

from fixtures import generate as gen
from worker.encoding import aspect_size
from worker.errors import InvalidJob
from worker.output import ASPECTS, OutputSpec
from worker.plan import Segment
from worker.planner import plan_render
from worker.presets import load_tiers
from worker.render import render

SEGMENTS = [Segment(0.5, 1.6), Segment(3.0, 4.05), Segment(9.9, 11.0)]
#: What the encoder's loss leaves between an output frame and its source rectangle (luma MSE; a neighbouring frame
#: or a rectangle 2 px off measure over 50).
MAX_MSE = 20.0


@pytest.mark.parametrize(
    ("size", "aspect", "tier", "want", "crop"),
    [
        ((1920, 1080), "9:16", "1080p", (1080, 1920), (608, 1080, 656, 0)),  # what Shorts and Reels expect
        ((1920, 1080), "9:16", None, (608, 1080), (608, 1080, 656, 0)),  # no tier: the crop's own size
        ((1920, 1080), "1:1", "720p", (720, 720), (1080, 1080, 420, 0)),
        ((1920, 1080), "4:5", None, (864, 1080), (864, 1080, 528, 0)),
        ((1080, 1920), "16:9", "1080p", (1920, 1080), (1080, 608, 0, 656)),  # a phone's portrait, made landscape
        ((1920, 1080), "16:9", None, (1920, 1080), None),  # at the aspect already: not cropped
        ((1280, 720), "16:9", "1080p", (1920, 1080), None),  # the tier scales up with an aspect
    ],
)
def test_sizes(size: tuple[int, int], aspect: str, tier: str | None, want: tuple[int, int], crop: object) -> None:
    w, h, got_crop = aspect_size(*size, ASPECTS[aspect], tier, load_tiers())
    assert (w, h) == want and got_crop == crop
    assert w % 2 == 0 and h % 2 == 0
    assert abs(Fraction(w, h) / ASPECTS[aspect] - 1) < Fraction(1, 100)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"format": "mp4", "aspect": "3:2"}, "output.aspect must be one of 9:16, 1:1, 4:5, 16:9"),
        ({"format": "mp4", "aspect": 0.5625}, "output.aspect must be one of"),
        ({"format": "m4a", "aspect": "9:16"}, "output.aspect (9:16) needs a video format; m4a has no picture"),
        ({"format": "mp3", "aspect": "1:1"}, "output.aspect (1:1) needs a video format; mp3 has no picture"),
    ],
)
def test_a_bad_aspect_is_invalid_naming_the_field(raw: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidJob) as info:
        OutputSpec.from_dict(raw)
    assert needle in info.value.message


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [mc.luma(f).astype(np.float64) for f in container.decode(video=0)]


@pytest.mark.parametrize("chunks", [None, 3])
def test_a_vertical_cut_shows_the_planned_frames_cropped(
    media: dict[str, Path], tmp_path: Path, chunks: int | None
) -> None:
    """Every output frame is the crop of the source frame the oracle puts there (whole and chunked alike)."""
    out = tmp_path / "v.mp4"
    result = render(media["cfr30"], SEGMENTS, OutputSpec("mp4", aspect="9:16"), out, chunks=chunks)
    assert (result.width, result.height) == (102, 180)
    v = gen.VARIANTS["cfr30"]
    exp = oracle.expected(
        [(s.start, s.end) for s in SEGMENTS], rate=Fraction(30), origin=Fraction(0), first=0, end=v.frames or 0
    )
    slots = list(exp.slots())
    frames = _frames(out)
    assert len(frames) == len(slots)
    x = 108  # the centred crop of 320 x 180 at 9:16: 102 px wide, on an even x
    wrong = []
    for k, (got, want) in enumerate(zip(frames, slots, strict=True)):
        errors = {
            s: float(np.mean((got - gen.frame_luma(s, 320, 180)[:, x : x + 102].astype(np.float64)) ** 2))
            for s in (want - 1, want, want + 1)
            if 0 <= s < (v.frames or 0)
        }
        # The planned frame, and the centred rectangle of it: anything else (a neighbour, another crop) is far off.
        if min(errors, key=errors.__getitem__) != want or errors[want] > MAX_MSE:
            wrong.append((k, want, errors))
    assert not wrong, f"{len(wrong)} frames are not the planned source frame, first {wrong[:3]}"


def test_the_tier_sets_the_shorter_edge_of_the_crop(media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    result = render(media["cfr30"], SEGMENTS, OutputSpec("mp4", resolution="720p", aspect="9:16"), out)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (720, 1280)
        frames = sum(1 for p in container.demux(stream) if p.size)
    assert (result.width, result.height) == (720, 1280)
    plan = plan_render(media["cfr30"], SEGMENTS, OutputSpec("mp4", resolution="720p", aspect="9:16"))
    assert frames == plan.timeline.total_units


def test_the_crop_is_taken_after_rotation(media: dict[str, Path], tmp_path: Path) -> None:
    """A phone's portrait clip (stored landscape, displayed rotated) asked for 16:9 keeps a band of its height."""
    v = gen.VARIANTS["rotated"]
    assert v.display_size is not None
    dw, dh = v.display_size
    assert dh > dw
    result = render(media["rotated"], None, OutputSpec("mp4", aspect="16:9"), tmp_path / "r.mp4")
    assert result.width == dw - dw % 2 and result.height is not None and result.height < dh
    assert result.width is not None and abs(Fraction(result.width, result.height) / Fraction(16, 9) - 1) < 0.02


def test_a_source_at_the_aspect_already_is_not_cropped(media: dict[str, Path]) -> None:
    plan = plan_render(media["cfr30"], SEGMENTS, OutputSpec("mp4", aspect="16:9"))
    assert plan.encode.crop is None and (plan.encode.width, plan.encode.height) == (320, 180)
    assert "crop=" not in plan.graph(plan.preset)


def test_a_vertical_cut_keeps_sync(media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    render(media["cfr30"], SEGMENTS, OutputSpec("mp4", aspect="9:16"), out, chunks=3)
    exp = oracle.expected(
        [(s.start, s.end) for s in SEGMENTS], rate=Fraction(30), origin=Fraction(0), first=0, end=6000
    )
    rep = oracle.measure_sync(out, exp, gen.source_audio("cfr30").mean(axis=0), 48000)
    assert rep.measured == len(exp.spans) and rep.worst_s <= 0.001, f"A/V offset {rep.worst_s * 1000:.3f} ms"
