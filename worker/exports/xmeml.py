"""FCP 7 XML (xmeml), as Premiere Pro and DaVinci Resolve import it."""

from __future__ import annotations

from fractions import Fraction
from xml.sax.saxutils import escape

from worker.errors import InvalidJob
from worker.exports.cut import Clip, Cut
from worker.exports.timecode import NTSC, timecode


def _xml_rate(rate: Fraction) -> tuple[int, bool]:
    """(timebase, ntsc): xmeml writes 29.97 as timebase 30 with the ntsc flag, and can write nothing else odd."""
    if rate in NTSC:
        return NTSC[rate], True
    if rate.denominator != 1:
        raise InvalidJob(f"a frame rate of {float(rate):.4f} fps cannot be written to FCP 7 XML")
    return rate.numerator, False


def _rate_el(rate: Fraction, pad: str) -> str:
    timebase, ntsc = _xml_rate(rate)
    return f"{pad}<rate><timebase>{timebase}</timebase><ntsc>{'TRUE' if ntsc else 'FALSE'}</ntsc></rate>\n"


def _tc_el(cut: Cut, frames: int, pad: str) -> str:
    if not cut.video:  # no timecode on the sample grid: the frame count alone places the media
        return f"{pad}<timecode>{_rate_el(cut.rate, '').strip()}<frame>{frames}</frame></timecode>\n"
    tc = timecode(frames, cut.rate, cut.drop_frame)
    fmt = "DF" if cut.drop_frame else "NDF"
    return (
        f"{pad}<timecode>{_rate_el(cut.rate, '').strip()}<string>{tc}</string><frame>{frames}</frame>"
        f"<displayformat>{fmt}</displayformat></timecode>\n"
    )


def _xml_file(cut: Cut, first: bool, pad: str) -> str:
    if not first:
        return f'{pad}<file id="file-1"/>\n'
    media = ""
    if cut.video:
        media += (
            f"{pad}    <video><samplecharacteristics>{_rate_el(cut.rate, '').strip()}"
            f"<width>{cut.width}</width><height>{cut.height}</height></samplecharacteristics></video>\n"
        )
    if cut.channels:
        media += (
            f"{pad}    <audio><samplecharacteristics><depth>16</depth><samplerate>{cut.sample_rate}</samplerate>"
            f"</samplecharacteristics><channelcount>{cut.channels}</channelcount></audio>\n"
        )
    return (
        f'{pad}<file id="file-1">\n'
        f"{pad}  <name>{escape(cut.source_name)}</name>\n"
        f"{pad}  <pathurl>{escape(cut.source_url)}</pathurl>\n"
        f"{_rate_el(cut.rate, pad + '  ')}"
        f"{pad}  <duration>{cut.source_units}</duration>\n"
        f"{_tc_el(cut, cut.start_tc, pad + '  ')}"
        f"{pad}  <media>\n{media}{pad}  </media>\n"
        f"{pad}</file>\n"
    )


def _clipitem(cut: Cut, clip: Clip, n: int, kind: str, channel: int, first_file: bool) -> str:
    pad = "          "
    source_track = ""
    if kind == "audio":
        source_track = (
            f"{pad}  <sourcetrack><mediatype>audio</mediatype><trackindex>{channel}</trackindex></sourcetrack>\n"
        )
    return (
        f'{pad}<clipitem id="{kind}-{channel}-{n}">\n'
        f"{pad}  <name>{escape(cut.source_name)}</name>\n"
        f"{pad}  <duration>{cut.source_units}</duration>\n"
        f"{_rate_el(cut.rate, pad + '  ')}"
        f"{pad}  <start>{clip.record}</start>\n"
        f"{pad}  <end>{clip.record + clip.length}</end>\n"
        f"{pad}  <in>{clip.src}</in>\n"
        f"{pad}  <out>{clip.src + clip.length}</out>\n"
        f"{_xml_file(cut, first_file, pad + '  ')}"
        f"{source_track}"
        f"{pad}</clipitem>\n"
    )


def write(cut: Cut) -> str:
    """FCP 7 XML, as Premiere Pro and DaVinci Resolve import it: a sequence, one clipitem per piece per track.

    ``in``/``out`` count from the media's first frame; the file's ``timecode`` carries its start timecode.
    """
    first = True
    video = ""
    if cut.video:
        items = []
        for n, clip in enumerate(cut.clips, 1):
            items.append(_clipitem(cut, clip, n, "video", 1, first))
            first = False
        video = (
            "      <video>\n        <format><samplecharacteristics>"
            f"{_rate_el(cut.rate, '').strip()}<width>{cut.width}</width><height>{cut.height}</height>"
            "</samplecharacteristics></format>\n"
            f"        <track>\n{''.join(items)}        </track>\n      </video>\n"
        )
    audio = ""
    if cut.channels:
        tracks = []
        for ch in range(1, cut.channels + 1):
            items = []
            for n, clip in enumerate(cut.clips, 1):
                items.append(_clipitem(cut, clip, n, "audio", ch, first))
                first = False
            tracks.append(f"        <track>\n{''.join(items)}        </track>\n")
        audio = f"      <audio>\n        <numOutputChannels>{cut.channels}</numOutputChannels>\n"
        audio += "".join(tracks) + "      </audio>\n"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE xmeml>\n<xmeml version="4">\n'
        '  <sequence id="sequence-1">\n'
        f"    <name>{escape(cut.title)}</name>\n"
        f"    <duration>{cut.total}</duration>\n"
        f"{_rate_el(cut.rate, '    ')}"
        f"{_tc_el(cut, 0, '    ')}"
        f"    <media>\n{video}{audio}    </media>\n"
        "  </sequence>\n</xmeml>\n"
    )
