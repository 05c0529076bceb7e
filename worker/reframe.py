"""Reframing (``output.aspect``): the crop's path across the output, from where the speaker's face is. Pure.

``render/faces.py`` finds faces on a few frames a second; :func:`crop_path` turns those sightings into the
crop's left edge for every output frame, as knots of a piecewise-linear path:

* the speaker is the largest face seen, followed from sighting to sighting by nearness (a passer-by or a
  poster further away does not pull the crop);
* the crop holds still while the face stays inside the middle of the crop (:data:`DEAD_ZONE`), and glides
  (at most :data:`MAX_SPEED` of the crop's width a second, aimed :data:`LEAD_S` ahead of a walking face)
  when it leaves it, so it never jitters; a face
  that moved half a crop's width between two sightings was cut to in the recording, and the crop cuts too;
* at a cut the crop starts where the speaker is in the new piece: a jump at a cut reads as a cut, a glide
  across it would not;
* no face at all: the centred crop.

:func:`x_expression` writes the path as one ffmpeg expression of the output frame number, flat (a sum of
one term a segment, no nesting), so a chunk of the output evaluates the same path from its own first frame.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

#: The face may move this share of the crop's width either side of the crop's middle before the crop follows;
#: once following, the crop stops when the face is back within the inner zone.
DEAD_ZONE = 0.12
INNER_ZONE = 0.04
#: The crop glides at most this share of its own width a second.
MAX_SPEED = 1.0
#: A face that moves is followed this far ahead (seconds): about the time to the next sighting.
LEAD_S = 0.3
#: A sighting further than this share of the picture's width from the last one is another face.
TRACK_JUMP = 0.25
#: ... until the speaker has been seen nowhere else for this many sightings running (about a second).
SWITCH_AFTER = 3
#: A sighting this far (share of the picture's width) from the sightings either side of it, and from the line
#: between them, is the detector's mistake (a patch of shirt taken for a face), not the speaker: dropped. A
#: cut is near the sighting after it, and a walk near that line, so neither is taken for one.
STRAY = 0.08


@dataclasses.dataclass(frozen=True)
class Face:
    """A face seen at source time ``t`` (seconds): its centre and width as shares of the picture's width."""

    t: float
    cx: float
    width: float


@dataclasses.dataclass(frozen=True)
class Knot:
    frame: int  # output frame
    x: int  # the crop's left edge, pixels of the (displayed) source picture


def speaker(faces: Sequence[Face]) -> list[Face]:
    """The sightings of the speaker: the largest face, then at each time the face nearest the last sighting.

    A face far from the last sighting is someone else, unless nobody is seen near it for :data:`SWITCH_AFTER`
    sightings running: then the speaker has moved (a cut in the recording) and the track follows the largest.
    """
    if not faces:
        return []
    times = sorted({f.t for f in faces})
    last = max(faces, key=lambda f: f.width)
    track: list[Face] = []
    away: list[Face] = []  # the largest face of each sighting running with nobody near the speaker
    for t in times:
        here = [f for f in faces if f.t == t]
        near = min(here, key=lambda f: abs(f.cx - last.cx))
        if abs(near.cx - last.cx) > TRACK_JUMP:
            away.append(max(here, key=lambda f: f.width))
            if len(away) < SWITCH_AFTER:
                continue
            # The speaker moved: the track takes them from the first of those sightings on.
            track += away[:-1]
            near = away[-1]
        away = []
        track.append(near)
        last = near
    return _without_strays(track)


def _without_strays(track: list[Face]) -> list[Face]:
    """``track`` less each sighting that is :data:`STRAY` from both neighbours and from the line between."""
    kept = track[:1]
    for prev, f, after in zip(track, track[1:], track[2:], strict=False):
        line = prev.cx + (after.cx - prev.cx) * (f.t - prev.t) / (after.t - prev.t) if after.t > prev.t else prev.cx
        if min(abs(f.cx - prev.cx), abs(f.cx - after.cx), abs(f.cx - line)) <= STRAY:
            kept.append(f)
    return kept + track[-1:] if len(track) > 1 else kept


def _position(knots: Sequence[tuple[int, float]], frame: int) -> float:
    """Where a path of (frame, x) knots is at ``frame``: linear between knots, held after the last."""
    for (f0, x0), (f1, x1) in zip(knots, knots[1:], strict=False):
        if frame < f1:
            return x0 + (x1 - x0) * (frame - f0) / (f1 - f0) if frame > f0 else x0
    return knots[-1][1]


def _cut_at(knots: list[tuple[int, float]], frame: int) -> list[tuple[int, float]]:
    """The path up to ``frame``, ending with a knot there (where the path was)."""
    x = _position(knots, frame)
    kept = [k for k in knots if k[0] < frame]
    return [*kept, (frame, x)]


def _follow(targets: Sequence[tuple[int, float]], start: float, fps: float, crop_w: float) -> list[tuple[int, float]]:
    """The path, as (frame, x) knots, that follows ``targets`` (frame, where the crop should be) from ``start``.

    Hysteresis: the crop starts to move when the face leaves the dead zone and keeps following, retargeted at
    every sighting from wherever it is then, until the face is back in the inner zone; so it neither jitters
    nor lags a face that walks.
    """
    knots: list[tuple[int, float]] = [(0, start)]
    step = MAX_SPEED * crop_w / fps
    moving = False
    seen = start  # where the face was at the last sighting
    for frame, target in targets:
        jumped = abs(target - seen) > crop_w / 2
        seen = target
        if jumped:
            # Half a crop's width from one sighting to the next (a third of a second): the recording cut (nobody
            # walks that fast on a set), so the crop cuts too, instead of panning across it.
            knots = (_cut_at(knots, frame - 1) if frame > 0 else []) + [(frame, target)]
            moving = False
            continue
        gap = abs(target - _position(knots, frame))
        if gap <= (INNER_ZONE if moving else DEAD_ZONE) * crop_w:
            moving = moving and gap > INNER_ZONE * crop_w
            continue
        knots = _cut_at(knots, frame)
        knots.append((frame + max(1, math.ceil(gap / step)), target))
        moving = True
    return knots


def crop_path(
    faces: Sequence[Face],
    pieces: Sequence[tuple[float, int, int]],
    *,
    fps: float,
    picture_w: int,
    crop_w: int,
) -> tuple[Knot, ...]:
    """The crop's knots over the output. ``pieces``: (source start time, first output frame, frames) each.

    Positions are the crop's left edge in pixels, kept inside the picture and on even pixels (4:2:0).
    """
    span = picture_w - crop_w
    centre = span // 4 * 2
    track = speaker(faces)
    if not track or span <= 0:
        return (Knot(0, centre),)

    def left(cx: float) -> float:
        return min(max(cx * picture_w - crop_w / 2, 0.0), float(span))

    knots: list[Knot] = []
    for src_start, out_first, frames in pieces:
        src_end = src_start + frames / fps
        inside = [f for f in track if src_start <= f.t < src_end]
        if not inside:  # no sighting in the piece: where the speaker was last seen before it (or first after)
            before = [f for f in track if f.t < src_start]
            inside = [before[-1] if before else min(track, key=lambda f: abs(f.t - src_start))]
        targets = []
        for prev, f in zip([None, *inside], inside, strict=False):
            cx = f.cx
            if prev is not None and f.t > prev.t and abs(f.cx - prev.cx) <= TRACK_JUMP:
                # Walking: aim where the face will be by the next sighting, not where it was at this one.
                cx += (f.cx - prev.cx) / (f.t - prev.t) * LEAD_S
            targets.append((max(0, round((f.t - src_start) * fps)), left(cx)))
        path = [Knot(frame, round(x)) for frame, x in _follow(targets, targets[0][1], fps, crop_w)]
        local = [k for k in path if k.frame < frames]
        local.append(Knot(frames - 1, round(x_at(path, frames - 1))))
        knots += [Knot(out_first + k.frame, k.x // 2 * 2) for k in local]
    # One knot a frame, in order; a run of knots at one position keeps only its ends.
    out: list[Knot] = []
    for k in sorted(knots, key=lambda k: k.frame):
        if out and k.frame == out[-1].frame or len(out) >= 2 and out[-1].x == k.x == out[-2].x:
            out[-1] = k
        else:
            out.append(k)
    return tuple(out)


def x_at(knots: Sequence[Knot], frame: int) -> float:
    """The path at output ``frame`` (what the expression evaluates to): linear between knots, held outside."""
    return _position([(k.frame, float(k.x)) for k in knots], frame)


def x_expression(knots: Sequence[Knot], offset: int = 0) -> str:
    """The path as an ffmpeg expression of ``n`` (the filter's frame number) + ``offset`` (the output frame of
    the filter's first frame): one ``between`` term a segment, summed, so its depth does not grow with length.
    Even pixels: the value is rounded down to an even number by the caller's ``trunc(.../2)*2``."""
    f = f"(n+{offset})" if offset else "n"
    if len(knots) == 1:
        return str(knots[0].x)
    terms = [f"lt({f},{knots[0].frame})*{knots[0].x}"]
    for a, b in zip(knots, knots[1:], strict=False):
        if a.x == b.x or b.frame - a.frame <= 1:
            terms.append(f"between({f},{a.frame},{b.frame}-0.5)*{a.x}")
        else:
            slope = (b.x - a.x) / (b.frame - a.frame)
            terms.append(f"between({f},{a.frame},{b.frame}-0.5)*({a.x}+{slope:.6f}*({f}-{a.frame}))")
    terms.append(f"gte({f},{knots[-1].frame})*{knots[-1].x}")
    return "trunc((" + "+".join(terms) + ")/2)*2"
