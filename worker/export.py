"""Editor exports: the cut as a timeline document (FCP 7 XML, FCPXML, CMX 3600 EDL, OpenTimelineIO JSON).

Pure: a probed source and the snapped :class:`~worker.plan.Timeline` the renderer builds go in, the text of
the document comes out. Because the clips are the renderer's own pieces (same source frames, same output
positions), an editor shows, frame for frame, what a render of the same job would show.

Units. A source with video is exported on its own frame grid: frame 0 is the source's first frame (the
grid the renderer anchors on), so a clip's source in point is ``piece.src`` frames into the media and its
record position is ``piece.out``. An audio-only source is exported on its sample grid (the rate of every
time in the document is the sample rate), which is the grid an audio-only render is cut on; a frame grid
could not hold its cut points exactly.

Start timecode. A camera's mov carries the timecode of its first frame (a ``tmcd`` track); editors place
source in points on that timecode, so it is added to every source time in xmeml, FCPXML and EDL (and to
the OTIO media reference's available range, which is where OTIO keeps it).

Why hand-written writers: OTIO's FCPXML writer leaves ``frameDuration`` empty at 30000/1001, so its
output cannot even be read back; the other documents are small, and writing all three here keeps one set
of rules (rates, drop-frame, reel names, channel codes, start timecode) in one place. Each is read back
with OTIO's own adapter for its format in the tests. The OTIO JSON is OTIO's own serialisation.

Known limit: a piece that runs outside the video's own frames (audio before the first frame, or after the
last) is exported as it is planned, so its video clip names frames the media does not have; the render
shows black (before) or holds the last frame (after) there, an editor shows the media as missing.
"""

from __future__ import annotations

import dataclasses
import math
import re
from fractions import Fraction
from pathlib import PurePosixPath
from xml.sax.saxutils import escape, quoteattr

from worker.errors import InvalidJob
from worker.output import EXPORT_FORMATS as _NAMES
from worker.plan import Timeline
from worker.probe import STANDARD_RATES, SourceInfo

#: Export format → (file extension, content type). The extension is the stored object's, as for renders.
EXPORT_FORMATS: dict[str, tuple[str, str]] = {
    "xmeml": ("xml", "application/xml"),
    "fcpxml": ("fcpxml", "application/xml"),
    "edl": ("edl", "text/plain"),
    "otio": ("otio", "application/json"),
}
#: CMX 3600 reel names are at most 8 characters.
REEL_CHARS = 8
#: The frame rate of the EDL of an audio-only source (EDL timecode cannot count samples).
EDL_AUDIO_RATE = Fraction(30)
_TC = re.compile(r"(\d{1,2})[:;.](\d{2})[:;.](\d{2})([:;.,])(\d{2,3})")
_NTSC = {Fraction(24000, 1001): 24, Fraction(30000, 1001): 30, Fraction(60000, 1001): 60}
#: The frame rates CMX 3600 timecode carries (the standard rates recorders write): an EDL at any other rate would
#: be read at the wrong speed.
EDL_RATES: tuple[Fraction, ...] = STANDARD_RATES


assert tuple(EXPORT_FORMATS) == _NAMES  # the intake's list (worker/output.py) and the writers agree


@dataclasses.dataclass(frozen=True)
class Clip:
    """One kept piece: ``src`` units into the source, ``length`` units long, at ``record`` on the timeline."""

    src: int
    length: int
    record: int


@dataclasses.dataclass(frozen=True)
class Cut:
    """What every writer needs, in units of ``rate`` (frames, or samples for an audio-only source)."""

    title: str
    source_name: str  # the file name, as editors show it
    source_url: str  # where the media is: a file:// URL, or the job's s3:// URI
    rate: Fraction
    video: bool
    width: int | None
    height: int | None
    channels: int  # audio channels (0: no audio)
    sample_rate: int | None
    source_units: int  # the source's length on the grid
    start_tc: int  # frames of the source's start timecode (0 without one; always 0 on the sample grid)
    drop_frame: bool
    clips: tuple[Clip, ...]

    @property
    def total(self) -> int:
        return sum(c.length for c in self.clips)


def _timecode_base(rate: Fraction) -> int:
    """Frames per timecode second: 30 for 29.97, 24 for 23.976, the rate itself for integer rates."""
    if rate in _NTSC:
        return _NTSC[rate]
    if rate.denominator == 1:
        return rate.numerator
    raise InvalidJob(f"a frame rate of {float(rate):.4f} fps has no timecode; editors cannot import it")


def _drop(rate: Fraction) -> int:
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
        base = _timecode_base(rate)
    except InvalidJob:
        return None
    if mm > 59 or ss > 59 or ff >= base:
        return None
    frames = ((hh * 60 + mm) * 60 + ss) * base + ff
    drop = _drop(rate)
    if drop and sep in ";,.":
        minutes = hh * 60 + mm
        if ss == 0 and ff < drop and mm % 10:
            return None  # a frame number drop-frame timecode skips
        frames -= drop * (minutes - minutes // 10)
    return frames


def timecode(frames: int, rate: Fraction, drop_frame: bool) -> str:
    """Frames since 00:00:00:00 → ``HH:MM:SS:FF``, or ``HH:MM:SS;FF`` in drop-frame (29.97 and 59.94)."""
    base = _timecode_base(rate)
    drop = _drop(rate) if drop_frame else 0
    n = frames
    if drop:
        per_10min = base * 600 - drop * 9
        per_min = base * 60 - drop
        tens, rest = divmod(n, per_10min)
        n += drop * 9 * tens + (drop * ((rest - drop) // per_min) if rest > drop else 0)
    ff = n % base
    secs = n // base
    return f"{secs // 3600 % 24:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}{';' if drop else ':'}{ff:02d}"


def build_cut(
    info: SourceInfo,
    timeline: Timeline,
    *,
    source_name: str,
    source_url: str,
    start_timecode: str | None = None,
    title: str | None = None,
) -> Cut:
    """The export of ``timeline`` (built for ``info`` by :func:`worker.render.plan_render`)."""
    video = info.video
    audio = info.audio
    if video is not None and timeline.rate == video.rate:
        rate = video.rate
        units = max(1, round(Fraction(video.duration) * rate))
        start_tc = parse_timecode(start_timecode, rate) or 0
        drop = bool(_drop(rate))
        _timecode_base(rate)  # refuse a rate editors have no timecode for, before writing anything
    else:
        assert audio is not None and timeline.sample_rate is not None
        rate = Fraction(timeline.sample_rate)
        units = max(1, round(Fraction(audio.duration) * rate))
        start_tc, drop = 0, False
    clips = tuple(Clip(src=p.src, length=p.length, record=p.out) for p in timeline.pieces)
    stem = PurePosixPath(source_name).stem or "source"
    return Cut(
        title=title or f"{stem} (cut)",
        source_name=source_name,
        source_url=source_url,
        rate=rate,
        video=video is not None and rate == video.rate,
        width=video.display_width if video is not None else None,
        height=video.display_height if video is not None else None,
        channels=audio.channels if audio is not None else 0,
        sample_rate=audio.sample_rate if audio is not None else None,
        source_units=units,
        start_tc=start_tc,
        drop_frame=drop,
        clips=clips,
    )


def export(cut: Cut, fmt: str) -> str:
    """The document text of ``cut`` in ``fmt`` (one of :data:`EXPORT_FORMATS`)."""
    writers = {"xmeml": to_xmeml, "fcpxml": to_fcpxml, "edl": to_edl, "otio": to_otio}
    if fmt not in writers:
        raise InvalidJob(f"not an export format: {fmt}")
    if fmt == "edl":
        check_edl_rate(cut)
    return writers[fmt](cut)


def _fps(rate: Fraction) -> str:
    return f"{float(rate):.3f}".rstrip("0").rstrip(".")


def check_edl_rate(cut: Cut) -> None:
    """Refuse an EDL of a video at a rate CMX 3600 does not carry (20 fps, 1 fps), naming what can carry it."""
    if cut.video and cut.rate not in EDL_RATES:
        carried = ", ".join(_fps(r) for r in EDL_RATES)
        raise InvalidJob(
            f"output.format=edl: the source is {_fps(cut.rate)} fps, and a CMX 3600 EDL carries only {carried} fps; "
            "xmeml, fcpxml and otio carry this rate"
        )


# --- FCP 7 XML (xmeml) ---------------------------------------------------------------------------------------


def _xml_rate(rate: Fraction) -> tuple[int, bool]:
    """(timebase, ntsc): xmeml writes 29.97 as timebase 30 with the ntsc flag, and can write nothing else odd."""
    if rate in _NTSC:
        return _NTSC[rate], True
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


def to_xmeml(cut: Cut) -> str:
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


# --- FCPXML ------------------------------------------------------------------------------------------------


def _seconds(units: int, rate: Fraction) -> str:
    """A time as FCPXML writes it: an exact rational number of seconds (``1001/30000s``, ``2s``)."""
    t = Fraction(units) / rate
    return f"{t.numerator}s" if t.denominator == 1 else f"{t.numerator}/{t.denominator}s"


def to_fcpxml(cut: Cut) -> str:
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


# --- CMX 3600 EDL ------------------------------------------------------------------------------------------


def reel_name(source_name: str) -> str:
    """The source's reel: its file name without extension, letters and digits only, at most 8 characters."""
    reel = re.sub(r"[^A-Za-z0-9]", "", PurePosixPath(source_name).stem).upper()[:REEL_CHARS]
    return reel or "AX"


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


def to_edl(cut: Cut) -> str:
    """A CMX 3600 EDL: one cut event per piece and channel group, record timecode from 00:00:00:00.

    Drop-frame timecode (``;``) at 29.97 and 59.94, as ``FCM: DROP FRAME`` says; each event carries
    ``* FROM CLIP NAME`` (and ``* FROM CLIP``/``* SOURCE FILE``, the source's URL) so editors can relink it.
    """
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


# --- OpenTimelineIO ----------------------------------------------------------------------------------------


def to_otio(cut: Cut) -> str:
    """OTIO's native JSON: a video track and one audio track per channel, clips on ExternalReferences."""
    import opentimelineio as otio

    rate = float(cut.rate)

    def rt(units: int) -> otio.opentime.RationalTime:
        return otio.opentime.RationalTime(units, rate)

    def track(kind: str, name: str) -> otio.schema.Track:
        t = otio.schema.Track(name=name, kind=kind)
        for clip in cut.clips:
            ref = otio.schema.ExternalReference(
                target_url=cut.source_url,
                available_range=otio.opentime.TimeRange(rt(cut.start_tc), rt(cut.source_units)),
            )
            ref.name = cut.source_name
            t.append(
                otio.schema.Clip(
                    name=cut.source_name,
                    media_reference=ref,
                    source_range=otio.opentime.TimeRange(rt(cut.start_tc + clip.src), rt(clip.length)),
                )
            )
        return t

    timeline = otio.schema.Timeline(name=cut.title, global_start_time=rt(0))
    if cut.video:
        timeline.tracks.append(track(otio.schema.TrackKind.Video, "V1"))
    for ch in range(1, cut.channels + 1):
        timeline.tracks.append(track(otio.schema.TrackKind.Audio, f"A{ch}"))
    timeline.metadata["render_worker"] = {
        "rate": f"{cut.rate.numerator}/{cut.rate.denominator}",
        "drop_frame": cut.drop_frame,
        "sample_rate": cut.sample_rate,
    }
    text: str = otio.adapters.write_to_string(timeline, "otio_json")
    return text


# --- I/O: the only part that touches files ----------------------------------------------------------------


def read_start_timecode(path: str, max_pixels: int) -> str | None:
    """The start timecode a source declares (a mov's ``tmcd`` track, or the container's tag), if any.

    Opened with the probe's allowlists; only tags are read, nothing is decoded.
    """
    import av

    from worker.probe import input_options

    try:
        with av.open(path, options=input_options(max_pixels), timeout=(10.0, 10.0)) as container:
            for stream in container.streams:
                tc = stream.metadata.get("timecode")
                if tc:
                    return str(tc)[:32]
            tc = container.metadata.get("timecode")
            return str(tc)[:32] if tc else None
    except av.error.FFmpegError:
        return None  # the probe, which ran first, decides what is unreadable


@dataclasses.dataclass(frozen=True)
class ExportResult:
    path: str
    format: str
    content_type: str
    duration_s: float
    source_duration_s: float
    size_bytes: int
    pieces: int
    rate: str  # the document's edit rate, "30000/1001"
    wall_s: float

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def media_format_for(info: SourceInfo) -> str:
    """The render an export stands for: mp4 when the source has video (cut on frames), else m4a (samples)."""
    return "mp4" if info.video is not None else "m4a"


def export_file(
    source: str,
    segments: list | None,
    fmt: str,
    output: str,
    *,
    settings: object | None = None,
    source_name: str | None = None,
    source_url: str | None = None,
) -> ExportResult:
    """Probe ``source``, plan the cut exactly as a render would, and write the ``fmt`` document to ``output``.

    Never runs ffmpeg. The document appears at ``output`` whole or not at all.
    """
    import os
    import time
    from pathlib import Path

    from worker.output import OutputSpec
    from worker.probe import probe
    from worker.render import Limits, plan_render
    from worker.settings import Settings

    started = time.monotonic()
    if fmt not in EXPORT_FORMATS:
        raise InvalidJob(f"not an export format: {fmt}")
    s = settings if isinstance(settings, Settings) else Settings()
    limits = Limits.from_settings(s)
    info = probe(source, max_pixels=limits.max_source_pixels)
    plan = plan_render(source, segments, OutputSpec(format=media_format_for(info)), limits=limits, info=info)
    out = Path(output)
    cut = build_cut(
        info,
        plan.timeline,
        source_name=source_name or Path(source).name,
        source_url=source_url or Path(source).resolve().as_uri(),
        start_timecode=read_start_timecode(str(source), limits.max_source_pixels) if info.video else None,
    )
    data = export(cut, fmt).encode("utf-8")
    doc_rate = edl_events(cut)[0] if fmt == "edl" else cut.rate  # an audio-only EDL counts frames, not samples
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return ExportResult(
        path=str(out),
        format=fmt,
        content_type=EXPORT_FORMATS[fmt][1],
        duration_s=float(Fraction(cut.total) / cut.rate),
        source_duration_s=info.duration,
        size_bytes=len(data),
        pieces=len(cut.clips),
        rate=f"{doc_rate.numerator}/{doc_rate.denominator}",
        wall_s=time.monotonic() - started,
    )
