"""FCPXML 1.8, for Final Cut Pro."""

from __future__ import annotations

from fractions import Fraction
from pathlib import PurePosixPath
from xml.sax.saxutils import quoteattr

from worker.exports.cut import Cut, reel_name


def _seconds(units: int, rate: Fraction) -> str:
    """A time as FCPXML writes it: an exact rational number of seconds (``1001/30000s``, ``2s``)."""
    t = Fraction(units) / rate
    return f"{t.numerator}s" if t.denominator == 1 else f"{t.numerator}/{t.denominator}s"


def write(cut: Cut) -> str:
    """FCPXML 1.8 for Final Cut Pro: a format resource, the source as an asset, asset-clips on the spine.

    Every time is an exact multiple of the format's ``frameDuration`` (a rational, never a rounded decimal).
    An asset's ``start`` is its start timecode, so a clip's ``start`` is that plus its source in point.
    """
    tc_fmt = ' tcFormat="DF"' if cut.drop_frame else ' tcFormat="NDF"' if cut.video else ""
    size = f' width="{cut.width}" height="{cut.height}"' if cut.video else ""
    audio = ""
    if cut.channels:
        audio = f' audioSources="1" audioChannels="{cut.channels}" audioRate="{cut.sample_rate}"'
    stem = PurePosixPath(cut.source_name).stem or "source"
    clips = []
    for clip in cut.clips:
        clips.append(
            f'          <asset-clip ref="r2" name={quoteattr(stem)} offset="{_seconds(clip.record, cut.rate)}" '
            f'start="{_seconds(cut.start_tc + clip.src, cut.rate)}" duration="{_seconds(clip.length, cut.rate)}" '
            f'format="r1"{tc_fmt}/>\n'
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE fcpxml>\n<fcpxml version="1.8">\n'
        "  <resources>\n"
        f'    <format id="r1" frameDuration="{_seconds(1, cut.rate)}"{size}/>\n'
        f'    <asset id="r2" name={quoteattr(stem)} src={quoteattr(cut.source_url)} '
        f'start="{_seconds(cut.start_tc, cut.rate)}" duration="{_seconds(cut.source_units, cut.rate)}" '
        f'hasVideo="{int(cut.video)}" hasAudio="{int(bool(cut.channels))}" format="r1"{audio}>\n'
        # A child element, also because OTIO's reader tests the asset element's truth, which is its child count.
        f'      <metadata><md key="com.apple.proapps.studio.reel" value={quoteattr(reel_name(cut.source_name))}/>'
        "</metadata>\n    </asset>\n"
        "  </resources>\n"
        f"  <library>\n    <event name={quoteattr(cut.title)}>\n      <project name={quoteattr(cut.title)}>\n"
        f'        <sequence format="r1" duration="{_seconds(cut.total, cut.rate)}" tcStart="0s"{tc_fmt}>\n'
        f"          <spine>\n{''.join(clips)}          </spine>\n"
        "        </sequence>\n      </project>\n    </event>\n  </library>\n</fcpxml>\n"
    )
