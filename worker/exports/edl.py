"""CMX 3600 EDL: cut events on timecode, at the rates CMX timecode carries."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from worker.errors import InvalidJob
from worker.exports.cut import Clip, Cut, reel_name
from worker.exports.timecode import timecode
from worker.probe import STANDARD_RATES

#: The frame rate of the EDL of an audio-only source (EDL timecode cannot count samples).
EDL_AUDIO_RATE = Fraction(30)
#: The frame rates CMX 3600 timecode carries (the standard rates recorders write): an EDL at any other rate would
#: be read at the wrong speed.
EDL_RATES: tuple[Fraction, ...] = STANDARD_RATES


def _fps(rate: Fraction) -> str:
    return f"{float(rate):.3f}".rstrip("0").rstrip(".")


def check_rate(cut: Cut) -> None:
    """Refuse an EDL of a video at a rate CMX 3600 does not carry (20 fps, 1 fps), naming what can carry it."""
    if cut.video and cut.rate not in EDL_RATES:
        carried = ", ".join(_fps(r) for r in EDL_RATES)
        raise InvalidJob(
            f"output.format=edl: the source is {_fps(cut.rate)} fps, and a CMX 3600 EDL carries only {carried} fps; "
            "xmeml, fcpxml and otio carry this rate"
        )


def _channel_codes(cut: Cut) -> list[str]:
    """The CMX channel codes of one piece: ``AA/V`` (picture, A1, A2), ``B`` (picture, A1), ``V``, ``A``, ``AA``.

    Channels past the second go on events of their own (``A3``, ``A4``, ...).
    """
    first = {(True, 0): "V", (True, 1): "B", (False, 1): "A", (False, 2): "AA"}
    codes = [first.get((cut.video, min(cut.channels, 2)), "AA/V")]
    codes += [f"A{ch}" for ch in range(3, cut.channels + 1)]
    return codes


def _round(x: Fraction) -> int:
    return int((x + Fraction(1, 2)) // 1)


def edl_events(cut: Cut) -> tuple[Fraction, list[Clip]]:
    """The EDL's rate and clips, in its frames.

    A source with video is written on its own frames, exactly. EDL timecode has no room for samples, so an
    audio-only source is written at :data:`EDL_AUDIO_RATE` with every boundary rounded to the nearest frame
    (source in, and record boundaries from the cumulative positions so they stay contiguous): within half a
    frame of the render's sample-exact cut points. xmeml, FCPXML and OTIO keep the samples exactly.
    """
    if cut.video:
        return cut.rate, list(cut.clips)
    scale = EDL_AUDIO_RATE / cut.rate
    # The last whole EDL frame of the media: no out point may lie past it.
    media_end = math.floor(cut.source_units * scale)
    out = []
    for clip in cut.clips:
        rec_in, rec_out = _round(clip.record * scale), _round((clip.record + clip.length) * scale)
        # One rounding, as in the render: the source frame at record frame k is k plus the piece's offset,
        # rounded once, so both the in and the out point are within half a frame of the plan.
        src_in = rec_in + _round((clip.src - clip.record) * scale)
        rec_out = min(rec_out, rec_in + media_end - src_in)
        if rec_out > rec_in:
            out.append(Clip(src=src_in, length=rec_out - rec_in, record=rec_in))
    return EDL_AUDIO_RATE, out


def write(cut: Cut) -> str:
    """A CMX 3600 EDL: one cut event per piece and channel group, record timecode from 00:00:00:00.

    Drop-frame timecode (``;``) at 29.97 and 59.94, as ``FCM: DROP FRAME`` says; each event carries
    ``* FROM CLIP NAME`` (and ``* FROM CLIP``/``* SOURCE FILE``, the source's URL) so editors can relink it.
    """
    check_rate(cut)
    reel = reel_name(cut.source_name)
    title = re.sub(r"[\r\n]", " ", cut.title)[:70]
    rate, clips = edl_events(cut)
    drop = cut.drop_frame

    def tc(frames: int) -> str:
        return timecode(frames, rate, drop)

    lines = [f"TITLE: {title}", f"FCM: {'DROP FRAME' if drop else 'NON-DROP FRAME'}", ""]
    event = 0
    for clip in clips:
        src_in, src_out = cut.start_tc + clip.src, cut.start_tc + clip.src + clip.length
        for code in _channel_codes(cut):
            event += 1
            lines.append(
                f"{event:03d}  {reel:<8} {code:<5} C        {tc(src_in)} {tc(src_out)} "
                f"{tc(clip.record)} {tc(clip.record + clip.length)}"
            )
            lines.append(f"* FROM CLIP NAME: {cut.source_name}")
            # Where the media is: "FROM CLIP" as Avid writes it (and OTIO reads it), "SOURCE FILE" as Resolve does.
            lines.append(f"* FROM CLIP: {cut.source_url}")
            lines.append(f"* SOURCE FILE: {cut.source_url}")
            lines.append("")
    return "\r\n".join(lines)


def document_rate(cut: Cut) -> Fraction:
    """The rate the document counts in: an audio-only EDL counts frames, not samples."""
    return edl_events(cut)[0]
