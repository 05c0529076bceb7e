"""Reframing follows the speaker (issue 22): scikit-image's astronaut walking across a 1920x1080 set, cut to
9:16. Where the face is in every output frame is found by template matching against the photo the fixture
pasted (an oracle independent of the worker's detector), and where it really was comes from the fixture.
"""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import mediacheck as mc
import numpy as np
import pytest

from fixtures import faces as scene
from fixtures import generate as gen
from worker import reframe
from worker.output import OutputSpec
from worker.planner import plan_render
from worker.render import faces, render

CROP_W = 608  # 9:16 of 1080 rows


@pytest.fixture(scope="session")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = gen.cache_dir() or tmp_path_factory.mktemp("faces")
    return {name: scene.make(name, out) for name in scene.SCENES}


def face_positions(path: Path) -> list[float | None]:
    """The face's left edge in each output frame (None where it is not in the frame)."""
    fx, fy, fw, fh = scene.FACE_BOX
    template = scene.photo()[fy : fy + fh, fx : fx + fw].astype(np.float32)
    found: list[float | None] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            gray = mc.luma(frame).astype(np.float32)
            score = cv2.matchTemplate(gray, template, cv2.TM_CCOEFF_NORMED)
            _, best, _, (x, _y) = cv2.minMaxLoc(score)
            found.append(float(x) if best > 0.8 else None)
    return found


def test_the_crop_follows_the_speaker_smoothly(scenes: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    result = render(scenes["face_moving"], None, OutputSpec("mp4", aspect="9:16"), out)
    assert (result.width, result.height) == (CROP_W, 1080)
    seen = face_positions(out)
    assert len(seen) == scene.FPS * scene.SECONDS
    fx, _, fw, _ = scene.FACE_BOX
    centred = [x is not None and abs(x + fw / 2 - CROP_W / 2) <= 0.2 * CROP_W for x in seen]
    assert sum(centred) >= 0.9 * len(seen), f"face near the middle in {sum(centred)} of {len(seen)} frames"
    # Where the crop was, frame by frame: the face's place on the set minus its place in the output.
    crop = [scene.face_left(n) + fx - x for n, x in enumerate(seen) if x is not None]
    steps = np.abs(np.diff(crop))
    big = [i for i, s in enumerate(steps) if s > reframe.MAX_SPEED * CROP_W / scene.FPS + 3]
    assert len(big) <= 1, f"the crop jumped at {big}"  # one cut: where the recording cuts (6 s)
    # It holds still while the speaker does (the first two seconds), never jittering.
    assert np.ptp(crop[:55]) <= 2


def test_a_chunked_render_crops_as_the_whole_does(scenes: dict[str, Path], tmp_path: Path) -> None:
    whole = render(scenes["face_moving"], None, OutputSpec("mp4", aspect="9:16"), tmp_path / "w.mp4")
    chunked = render(scenes["face_moving"], None, OutputSpec("mp4", aspect="9:16"), tmp_path / "c.mp4", chunks=3)
    a, b = face_positions(Path(whole.path)), face_positions(Path(chunked.path))
    assert len(a) == len(b)
    assert all((x is None) == (y is None) and (x is None or abs(x - y) <= 1) for x, y in zip(a, b, strict=True))


def test_no_face_gives_the_centred_crop(scenes: dict[str, Path]) -> None:
    plan = faces.follow_speaker(plan_render(scenes["face_none"], None, OutputSpec("mp4", aspect="9:16")))
    assert plan.crop_path == (reframe.Knot(0, (1920 - CROP_W) // 2),)


def test_the_detector_finds_the_speaker_a_few_times_a_second(scenes: dict[str, Path]) -> None:
    plan = plan_render(scenes["face_moving"], None, OutputSpec("mp4", aspect="9:16"))
    seen = faces.sightings(plan)
    fx, _, fw, _ = scene.FACE_BOX
    assert len(seen) >= faces.SAMPLE_FPS * scene.SECONDS * 0.8
    for f in seen:
        truth = (scene.face_left(round(f.t * scene.FPS)) + fx + fw / 2) / 1920
        assert abs(f.cx - truth) < 0.03, (f, truth)


def test_the_speaker_is_the_largest_face_and_a_passer_by_does_not_pull() -> None:
    talker = [reframe.Face(t / 3, 0.3, 0.12) for t in range(30)]
    passer = [reframe.Face(t / 3, 0.8, 0.05) for t in range(10, 13)]
    track = reframe.speaker(talker + passer)
    assert {f.cx for f in track} == {0.3}
    jitter = [reframe.Face(t / 3, 0.3 + (0.004 if t % 2 else -0.004), 0.12) for t in range(30)]
    knots = reframe.crop_path(jitter, [(0.0, 0, 300)], fps=30.0, picture_w=1920, crop_w=CROP_W)
    assert len({k.x for k in knots}) == 1  # inside the dead zone: held still


def test_at_a_cut_the_crop_starts_where_the_speaker_is() -> None:
    seen = [reframe.Face(t / 3, 0.2, 0.1) for t in range(0, 15)] + [
        reframe.Face(t / 3, 0.75, 0.1) for t in range(30, 45)
    ]
    knots = reframe.crop_path(seen, [(0.0, 0, 150), (10.0, 150, 150)], fps=30.0, picture_w=1920, crop_w=CROP_W)
    assert reframe.x_at(knots, 149) == pytest.approx(0.2 * 1920 - CROP_W / 2, abs=2)
    assert reframe.x_at(knots, 150) == pytest.approx(0.75 * 1920 - CROP_W / 2, abs=2)
