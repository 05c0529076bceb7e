"""SMPTE timecode at the rates sources carry: parse a source's start timecode, write record and source times.

Why not ``opentimelineio.opentime``: its timecode functions refuse rates that are not SMPTE ones (20, 12
or 1 fps, which phones and screen recorders write and which xmeml and FCPXML carry as plain frame counts),
and its drop-frame parsing accepts frame numbers drop-frame skips. The arithmetic here is small, and the
tests check it against OTIO's at every rate both know (tests/test_export.py).
"""

from __future__ import annotations

import re
from fractions import Fraction

from worker.errors import InvalidJob

_TC = re.compile(r"(\d{1,2})[:;.](\d{2})[:;.](\d{2})([:;.,])(\d{2,3})")
NTSC = {Fraction(24000, 1001): 24, Fraction(30000, 1001): 30, Fraction(60000, 1001): 60}


def timecode_base(rate: Fraction) -> int:
    """Frames per timecode second: 30 for 29.97, 24 for 23.976, the rate itself for integer rates."""
    if rate in NTSC:
        return NTSC[rate]
    if rate.denominator == 1:
        return rate.numerator
    raise InvalidJob(f"a frame rate of {float(rate):.4f} fps has no timecode; editors cannot import it")


def drop_frames(rate: Fraction) -> int:
    """Frame numbers dropped per minute (except every tenth) by drop-frame timecode at ``rate``; 0 if none."""
    return {Fraction(30000, 1001): 2, Fraction(60000, 1001): 4}.get(rate, 0)


def parse_timecode(text: str | None, rate: Fraction) -> int | None:
    """``HH:MM:SS:FF`` (``;`` before FF: drop-frame) → frames since 00:00:00:00 at ``rate``, or None if unusable.

    The text comes from a tenant's file, so anything that does not parse, or names a frame the rate has no
    room for, is ignored rather than trusted.
    """
    if not text or len(text) > 16:
        return None
    m = _TC.fullmatch(text.strip())
    if m is None:
        return None
    hh, mm, ss, sep, ff = int(m[1]), int(m[2]), int(m[3]), m[4], int(m[5])
    try:
        base = timecode_base(rate)
    except InvalidJob:
        return None
    if mm > 59 or ss > 59 or ff >= base:
        return None
    frames = ((hh * 60 + mm) * 60 + ss) * base + ff
    drop = drop_frames(rate)
    if drop and sep in ";,.":
        minutes = hh * 60 + mm
        if ss == 0 and ff < drop and mm % 10:
            return None  # a frame number drop-frame timecode skips
        frames -= drop * (minutes - minutes // 10)
    return frames


def timecode(frames: int, rate: Fraction, drop_frame: bool) -> str:
    """Frames since 00:00:00:00 → ``HH:MM:SS:FF``, or ``HH:MM:SS;FF`` in drop-frame (29.97 and 59.94)."""
    base = timecode_base(rate)
    drop = drop_frames(rate) if drop_frame else 0
    n = frames
    if drop:
        per_10min = base * 600 - drop * 9
        per_min = base * 60 - drop
        tens, rest = divmod(n, per_10min)
        n += drop * 9 * tens + (drop * ((rest - drop) // per_min) if rest > drop else 0)
    ff = n % base
    secs = n // base
    return f"{secs // 3600 % 24:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}{';' if drop else ':'}{ff:02d}"
