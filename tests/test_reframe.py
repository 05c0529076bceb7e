"""Reframing follows the speaker (issue 22): scikit-image's astronaut walking across a 1920x1080 set, cut to
9:16. Where the face is in every output frame is found by template matching against the photo the fixture
pasted (an oracle independent of the worker's detector), and where it really was comes from the fixture.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import av
import cv2
import mediacheck as mc
import numpy as np
import pytest

from fixtures import faces as scene
from fixtures import generate as gen
from worker import reframe
from worker.errors import Cancelled, RenderTimeout
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


@pytest.mark.parametrize("name", ["face_moving", "face_moving_ts"])
def test_the_detector_looks_a_few_times_a_second_where_the_speaker_moves_and_once_a_gop_where_they_hold(
    scenes: dict[str, Path], name: str
) -> None:
    """Every sighting is where the fixture put the face; the walk (2-5 s) and the cut after the hold (5-6 s) are
    seen at the design rate, the still stretches (0-2 s, 6-7 s) at the fixture's keyframes (1 s GOPs) only.
    The same in MPEG-TS with B-frames, whose demuxer seeks near a time rather than to a keyframe."""
    plan = plan_render(scenes[name], None, OutputSpec("mp4", aspect="9:16"))
    seen = faces.sightings(plan)
    fx, _, fw, _ = scene.FACE_BOX
    for f in seen:
        truth = (scene.face_left(round(f.t * scene.FPS)) + fx + fw / 2) / 1920
        assert abs(f.cx - truth) < 0.03, (f, truth)

    def within(a: float, b: float) -> int:
        return sum(a <= f.t < b for f in seen)

    assert within(2, 6) >= faces.SAMPLE_FPS * 4 * 0.75
    assert within(0, 2) == 2 and within(6, 7) == 1  # the keyframes at 0, 1 and 6 s: nothing decoded between
    # The walk's start is seen between the keyframes either side of it.
    assert any(2 < f.t < 3 for f in seen)


def test_a_file_whose_timestamps_start_late_is_searched_at_its_frames(scenes: dict[str, Path]) -> None:
    """Timestamps from 10 s (a recorder that does not start at zero): the sightings are still where the face
    is, at times from the first frame, as the plan counts them."""
    plan = plan_render(scenes["face_moving_late"], None, OutputSpec("mp4", aspect="9:16"))
    with av.open(str(scenes["face_moving_late"])) as container:
        assert container.start_time == 10_000_000
    seen = faces.sightings(plan)
    fx, _, fw, _ = scene.FACE_BOX
    assert len({f.t for f in seen}) >= scene.SECONDS
    for f in seen:
        assert 0 <= f.t < scene.SECONDS
        assert abs(f.cx - (scene.face_left(round(f.t * scene.FPS)) + fx + fw / 2) / 1920) < 0.03, f


def test_keyframes_vouch_only_for_a_speaker_who_holds_still() -> None:
    still = faces.Sample(1.0, (reframe.Face(1.0, 0.3, 0.1),))
    assert still.holds_with(faces.Sample(2.0, (reframe.Face(2.0, 0.3 + faces.HOLD / 2, 0.1),)))
    assert not still.holds_with(faces.Sample(2.0, (reframe.Face(2.0, 0.3 + faces.HOLD * 2, 0.1),)))
    assert not still.holds_with(faces.Sample(2.0, ()))  # the speaker left, or turned away
    assert not still.holds_with(faces.Sample(1.0 + faces.MAX_HOLD_S + 0.5, still.faces))  # too far apart
    assert faces.Sample(1.0, ()).holds_with(faces.Sample(2.0, ()))  # nobody, and nobody: nothing to follow
    grid = faces.grid([(0.0, 2.0)])
    assert len(grid) == 2 * faces.SAMPLE_FPS
    # Keyframes at 0 and 1 s hold, the one at 2 s does not: only the second GOP's points are wanted.
    moved = faces.Sample(2.0, (reframe.Face(2.0, 0.6, 0.1),))
    keys = [faces.Sample(0.0, still.faces), still, moved]
    assert faces.wanted(grid, keys) == [t for t in grid if 1.2 < t < 1.8]


def test_the_search_stops_when_the_render_is_cancelled_or_past_its_time(
    scenes: dict[str, Path], tmp_path: Path
) -> None:
    """The search is decode work like the render's: a cancel or the time limit stops it between packets, and
    the render leaves nothing behind."""
    plan = plan_render(scenes["face_moving"], None, OutputSpec("mp4", aspect="9:16"))
    t0 = time.monotonic()
    faces.sightings(plan)
    whole = time.monotonic() - t0
    stop = threading.Event()
    threading.Timer(whole / 4, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        render(scenes["face_moving"], None, OutputSpec("mp4", aspect="9:16"), tmp_path / "c.mp4", cancel=stop)
    assert time.monotonic() - t0 < whole and not (tmp_path / "c.mp4").exists()
    with pytest.raises(RenderTimeout):
        faces.sightings(plan, deadline=time.monotonic() + whole / 4)


def test_the_search_leaves_no_decoder_or_thread_behind(scenes: dict[str, Path]) -> None:
    """A worker renders job after job in one process: each search's decoders (one a lane, tens of MB at 1080p)
    are freed when it ends, finished or stopped, not when the garbage collector next runs."""
    import gc

    plan = plan_render(scenes["face_moving"], None, OutputSpec("mp4", aspect="9:16"))
    gc.collect()
    gc.disable()
    try:
        assert faces.sightings(plan)
        with pytest.raises(RenderTimeout):
            faces.sightings(plan, deadline=time.monotonic() + 0.2)
        alive = [o for o in gc.get_objects() if isinstance(o, faces._Lane | av.container.InputContainer)]
    finally:
        gc.enable()
    assert alive == []
    assert not [t for t in threading.enumerate() if t.name.startswith("faces-")]


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


def test_a_stray_sighting_does_not_pull_the_crop_but_a_cut_and_a_walk_do() -> None:
    seated = [reframe.Face(t / 3, 0.5, 0.07) for t in range(12)]
    stray = reframe.Face(4.1, 0.67, 0.07)  # a patch of shirt the cascade took for a face, once
    moved = [reframe.Face(4 + t / 3, 0.58, 0.07) for t in range(1, 9)]
    track = reframe.speaker([*seated, stray, *moved])
    assert stray not in track and track[-1].cx == 0.58
    cut = [*seated, *(reframe.Face(4 + t / 3, 0.8, 0.07) for t in range(6))]
    assert [f.cx for f in reframe.speaker(cut)].count(0.8) == 6  # the first sighting after a cut is kept
    walk = [reframe.Face(t * 2 / 3, 0.2 + 0.12 * t, 0.07) for t in range(6)]  # a walk seen every 2/3 s
    assert reframe.speaker(walk) == walk
    knots = reframe.crop_path([*seated, stray, *moved], [(0.0, 0, 240)], fps=30.0, picture_w=1920, crop_w=CROP_W)
    # The crop goes no further than the speaker's new place (and the lead's overshoot as they stop moving).
    assert max(k.x for k in knots) <= 0.58 * 1920 - CROP_W / 2 + 60
