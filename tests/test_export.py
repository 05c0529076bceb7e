"""Editor exports (issue 10): every format read back by OTIO's own adapter, clip for clip what a render keeps.

The reference is never worker/plan.py: for sources with video it is the frames a real render of the same
plan shows (each source frame carries its index as a barcode, tests/mediacheck.py), for audio-only sources
the test oracle's sample-grid timeline (tests/oracle.py). Start timecodes are constants worked out by hand
(10:00:00:00 at 25 fps is 900,000 frames; 01:00:00;00 drop-frame at 29.97 is 107,892).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path
from typing import Any

import mediacheck as mc
import opentimelineio as otio
import oracle
import pytest
from click.testing import CliRunner

from fixtures import generate as gen
from worker.cli import main
from worker.errors import InvalidJob
from worker.exports import FORMATS as EXPORTS
from worker.exports.cut import reel_name
from worker.exports.file import export_file
from worker.exports.timecode import parse_timecode, timecode
from worker.jobs import parse_job
from worker.output import OutputSpec
from worker.plan import Segment
from worker.render import render

# Touching segments (0.95) are joined into one clip; a segment shorter than a frame keeps at most one frame.
SEGMENTS = [
    Segment(0.31, 0.95),
    Segment(0.95, 1.62),
    Segment(1.9, 2.333),
    Segment(2.5, 2.52),
    Segment(3.1, 3.85),
]
ADAPTERS = {"xmeml": "fcp_xml", "fcpxml": "fcpx_xml", "edl": "cmx_3600", "otio": "otio_json"}
R2997 = Fraction(30000, 1001)
# name → (frame rate, start timecode in frames, drop-frame timecode)
VIDEO = {
    "cfr30": (Fraction(30), 0, False),
    "cfr2997": (R2997, 0, True),
    "tc25": (Fraction(25), 900_000, False),
    "tc2997": (R2997, 107_892, True),
    "offset_mkv": (Fraction(30), 0, False),  # the video starts at 0.021 s, off zero and off the audio's grid
}
# Stereo and mono WAV: their first sample is unambiguously at 0 (an mp3's start depends on how its decoder
# honours the encoder delay, so the oracle's origin for it would be a guess).
AUDIO_ONLY = ("audio_wav", "tone_wav")


def source_path(media: dict[str, Path], name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if name in media:
        return media[name]
    return gen.make(name, gen.cache_dir() or tmp_path_factory.getbasetemp() / "export-media")


@pytest.fixture(scope="module")
def rendered(media: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One real mp4 render of SEGMENTS per source, rendered once: the source frame each output frame shows."""
    done: dict[str, tuple[Path, list[int]]] = {}

    def get(name: str) -> tuple[Path, list[int]]:
        if name not in done:
            src = source_path(media, name, tmp_path_factory)
            out = tmp_path_factory.mktemp(f"render-{name}") / "out.mp4"
            render(src, SEGMENTS, OutputSpec("mp4"), out)
            shown = [i for _, i in mc.frame_indices(out)]
            assert None not in shown and len(shown) > 60
            done[name] = (src, shown)  # type: ignore[assignment]
        return done[name]

    return get


def read_back(path: Path, fmt: str, rate: Fraction) -> otio.schema.Timeline:
    kwargs = {"rate": float(rate)} if fmt == "edl" else {}
    result = otio.adapters.read_from_file(str(path), ADAPTERS[fmt], **kwargs)
    if isinstance(result, otio.schema.SerializableCollection):  # FCPXML reads as a library of projects
        assert len(result) == 1
        result = result[0]
    assert isinstance(result, otio.schema.Timeline)
    return result


def units(t: otio.opentime.RationalTime, rate: Fraction) -> int:
    """A time read back, in whole units of ``rate``; a time off the grid is a failure, not a rounding."""
    value = t.value_rescaled_to(float(rate))
    assert abs(value - round(value)) < 1e-6, f"{t} is not on the {rate} grid"
    return round(value)


def clips_of(track: otio.schema.Track, rate: Fraction, start_tc: int) -> list[tuple[int, int, int]]:
    """(source in, length, record in) of every clip on a track, checking the track has nothing else."""
    out = []
    for i, item in enumerate(track):
        assert isinstance(item, otio.schema.Clip), f"{type(item).__name__} at {i} on track {track.name}"
        rng = item.source_range
        out.append(
            (
                units(rng.start_time, rate) - start_tc,
                units(rng.duration, rate),
                units(track.range_of_child_at_index(i).start_time, rate),
            )
        )
    return out


def check_layout(clips: list[tuple[int, int, int]]) -> None:
    """Record positions contiguous from zero."""
    at = 0
    for _src, length, record in clips:
        assert record == at, f"record in {record}, expected {at}"
        assert length > 0
        at += length


def frames_of(clips: list[tuple[int, int, int]]) -> list[int]:
    return [src + k for src, length, _ in clips for k in range(length)]


def fcpxml_clips(text: str) -> tuple[Fraction, list[tuple[int, int, int]], int]:
    """The exact times of an FCPXML, from its rationals (OTIO's reader truncates them to whole-number rates)."""
    root = ET.fromstring(text)
    fd = root.find("./resources/format").get("frameDuration")  # type: ignore[union-attr]
    assert fd and fd.endswith("s")
    frame = Fraction(fd[:-1])

    def n(value: str | None) -> int:
        assert value is not None and re.fullmatch(r"\d+(/\d+)?s", value), value
        k = Fraction(value[:-1]) / frame
        assert k.denominator == 1, f"{value} is not a whole number of {fd} frames"
        return int(k)

    asset = root.find("./resources/asset")
    assert asset is not None
    start = n(asset.get("start"))
    spine = root.find("./library/event/project/sequence/spine")
    assert spine is not None and len(spine) > 0
    out = [(n(c.get("start")) - start, n(c.get("duration")), n(c.get("offset"))) for c in spine]
    assert all(c.tag == "asset-clip" for c in spine)
    return 1 / frame, out, start


# --- timecode ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "rate", "drop", "text"),
    [
        (0, R2997, True, "00:00:00;00"),
        (1799, R2997, True, "00:00:59;29"),
        (1800, R2997, True, "00:01:00;02"),  # ;00 and ;01 do not exist at minute 1
        (17982, R2997, True, "00:10:00;00"),  # but do every tenth minute
        (107_892, R2997, True, "01:00:00;00"),
        (3600, Fraction(60000, 1001), True, "00:01:00;04"),
        (900_000, Fraction(25), False, "10:00:00:00"),
        (1800, R2997, False, "00:01:00:00"),  # 29.97 non-drop counts every frame number
        (86399, Fraction(24000, 1001), False, "00:59:59:23"),
    ],
)
def test_timecode_known_values(frames: int, rate: Fraction, drop: bool, text: str) -> None:
    assert timecode(frames, rate, drop) == text
    assert parse_timecode(text, rate) == frames


def test_drop_frame_round_trip_over_a_day() -> None:
    # a drop-frame day is 144 ten-minute blocks of 17,982 frames (35,964 at 59.94); timecode wraps after it
    for rate, per_10min in ((R2997, 17_982), (Fraction(60000, 1001), 35_964)):
        for n in [*range(0, 144 * per_10min, 997), 144 * per_10min - 1]:
            assert parse_timecode(timecode(n, rate, True), rate) == n


@pytest.mark.parametrize("rate", [Fraction(24000, 1001), Fraction(24), Fraction(25), R2997, Fraction(30), Fraction(50)])
def test_timecode_agrees_with_opentimelineio_where_both_count(rate: Fraction) -> None:
    """Why the arithmetic is ours (worker/exports/timecode.py): OTIO's refuses the rates xmeml and FCPXML carry as
    frame counts, but where both have a timecode they agree, frame for frame, drop-frame included."""
    ot = otio.opentime
    drop = rate == R2997
    for n in [*range(0, 30 * 3600 * 25, 7919), 17_981, 17_982, 1799, 1800]:
        ours = timecode(n, rate, drop)
        theirs = ot.to_timecode(ot.RationalTime(n, float(rate)), float(rate), drop_frame=drop)
        assert ours == theirs, (n, rate)
        assert parse_timecode(ours, rate) == round(ot.from_timecode(ours, float(rate)).value)
    with pytest.raises(ValueError):
        ot.to_timecode(ot.RationalTime(20, 20.0), 20.0)  # an EDL-less rate: OTIO has no timecode for it
    assert timecode(20, Fraction(20), False) == "00:00:01:00"


@pytest.mark.parametrize("bad", ["", "garbage", "25:61:00:00", "00:00:00:30", "00:01:00;00", "1" * 40, None])
def test_a_tenants_odd_timecode_is_ignored(bad: str | None) -> None:
    # 00:01:00;00 is a frame number drop-frame timecode skips; 00:00:00:30 has no room at 30 frames a second
    assert parse_timecode(bad, R2997) is None


def test_reel_names_fit_cmx() -> None:
    assert reel_name("talk-take_02 final.mov") == "TALKTAKE"
    assert reel_name("tc2997.mov") == "TC2997"
    assert reel_name("...mov") == "AX"  # nothing usable: the "auxiliary" reel


# --- every format, read back, against a real render -------------------------------------------------------


@pytest.mark.parametrize("fmt", list(EXPORTS))
@pytest.mark.parametrize("name", list(VIDEO))
def test_video_export_reads_back_as_the_render(rendered: Any, tmp_path: Path, name: str, fmt: str) -> None:
    rate, start_tc, drop = VIDEO[name]
    src, shown = rendered(name)
    doc = tmp_path / f"cut.{EXPORTS[fmt].extension}"
    result = export_file(str(src), SEGMENTS, fmt, str(doc))
    text = doc.read_bytes().decode()  # as stored: the EDL's CRLFs kept
    assert result.size_bytes == len(text.encode()) and result.content_type == EXPORTS[fmt].content_type
    timeline = read_back(doc, fmt, rate)

    tracks = list(timeline.tracks)
    video = [t for t in tracks if t.kind == otio.schema.TrackKind.Video]
    audio = [t for t in tracks if t.kind == otio.schema.TrackKind.Audio]
    assert len(video) == 1
    if fmt == "fcpxml":
        # OTIO's FCPXML reader counts frames as int(seconds * int(fps)) (29 at 29.97) and truncates, so it
        # can only say the structure is right: one clip per piece, the source named. The exact times are
        # the document's own rationals, read here as Fractions.
        items = [c for c in video[0] if isinstance(c, otio.schema.Clip)]
        fps, clips, asset_start = fcpxml_clips(text)
        assert fps == rate and asset_start == start_tc
        assert len(items) == len(clips)
        assert all(c.media_reference.target_url == src.resolve().as_uri() for c in items)
    else:
        clips = clips_of(video[0], rate, start_tc)
        # the audio tracks match the source's channels (stereo), each holding the very same clips
        assert len(audio) == 2
        for track in audio:
            assert clips_of(track, rate, start_tc) == clips
        for item in video[0]:
            ref = item.media_reference
            if fmt == "edl":
                assert ref.target_url == src.resolve().as_uri()  # from "* FROM CLIP"
                assert item.name == src.name  # from "* FROM CLIP NAME"
            else:
                assert ref.target_url == src.resolve().as_uri()
                assert units(ref.available_range.start_time, rate) == start_tc
    check_layout(clips)
    assert frames_of(clips) == shown, "the export's frames are not the ones the render shows"
    assert sum(length for _, length, _ in clips) == len(shown)  # same total duration, to the frame
    assert result.duration_s == pytest.approx(float(len(shown) / rate), abs=1e-9)
    # one clip per run of consecutive source frames in the render: the touching segments are one clip
    runs = 1 + sum(1 for a, b in zip(shown, shown[1:], strict=False) if b != a + 1)
    assert len(clips) == runs and len(clips) < len(SEGMENTS)
    check_format_rules(fmt, text, rate, drop, start_tc)


def check_format_rules(fmt: str, text: str, rate: Fraction, drop: bool, start_tc: int) -> None:
    """The rules of each format that OTIO's readers would let slip."""
    ntsc = rate.denominator == 1001
    if fmt == "xmeml":
        rates = re.findall(r"<rate><timebase>(\d+)</timebase><ntsc>(TRUE|FALSE)</ntsc></rate>", text)
        assert rates and set(rates) == {(str(round(rate)), "TRUE" if ntsc else "FALSE")}
        if start_tc:
            assert re.search(rf"<frame>{start_tc}</frame><displayformat>{'DF' if drop else 'NDF'}<", text)
    elif fmt == "fcpxml":
        want = f"{rate.denominator}/{rate.numerator}s" if ntsc else f"1/{rate.numerator}s"
        assert f'frameDuration="{want}"' in text
        assert ('tcFormat="DF"' in text) == drop
    elif fmt == "edl":
        lines = text.split("\r\n")
        assert lines[1] == ("FCM: DROP FRAME" if drop else "FCM: NON-DROP FRAME")
        events = [ln for ln in lines if re.match(r"\d{3}  ", ln)]
        assert events
        for i, line in enumerate(events):
            fields = line.split()
            assert len(fields[1]) <= 8 and fields[2] == "AA/V" and fields[3] == "C"
            tcs = fields[4:]
            assert len(tcs) == 4 and all((";" in tc) == drop for tc in tcs), line
            assert lines[lines.index(line) + 1].startswith("* FROM CLIP NAME: "), f"event {i}"
    else:
        doc = json.loads(text)
        assert doc["OTIO_SCHEMA"].startswith("Timeline.")


@pytest.mark.parametrize("fmt", list(EXPORTS))
@pytest.mark.parametrize("name", AUDIO_ONLY)
def test_audio_only_export_on_the_sample_grid(media: dict[str, Path], tmp_path: Path, name: str, fmt: str) -> None:
    v = gen.VARIANTS[name]
    src = media[name]
    assert v.sample_rate is not None and v.samples is not None and v.channels in (1, 2)
    sr = Fraction(v.sample_rate)
    origin = Fraction(mc.audio_start_seconds(src)).limit_denominator(10**6)
    exp = oracle.expected([(s.start, s.end) for s in SEGMENTS], rate=sr, origin=origin, first=0, end=v.samples)
    doc = tmp_path / f"cut.{EXPORTS[fmt].extension}"
    export_file(str(src), SEGMENTS, fmt, str(doc))
    text = doc.read_bytes().decode()  # as stored: the EDL's CRLFs kept
    want: list[tuple[int, int, int]] = []
    for s in exp.spans:  # the oracle keeps segments apart; touching ones are one clip (no cut between them)
        if want and want[-1][0] + want[-1][1] == s.src:
            want[-1] = (want[-1][0], want[-1][1] + s.length, want[-1][2])
        else:
            want.append((s.src, s.length, s.out))
    if fmt == "edl":
        # EDL timecode cannot count samples: the EDL is at 30 fps, each boundary the nearest frame
        timeline = read_back(doc, fmt, Fraction(30))
        tracks = list(timeline.tracks)
        assert [t.kind for t in tracks] == [otio.schema.TrackKind.Audio] * v.channels  # A or AA: no picture
        clips = clips_of(tracks[0], Fraction(30), 0)
        check_layout(clips)
        for (src_in, length, rec), (w_src, w_len, w_out) in zip(clips, want, strict=True):
            assert abs(Fraction(rec) - Fraction(w_out) * 30 / sr) <= Fraction(1, 2)
            assert abs(Fraction(src_in) - Fraction(w_src) * 30 / sr) <= Fraction(1, 2)
            assert abs(Fraction(rec + length) - Fraction(w_out + w_len) * 30 / sr) <= Fraction(1, 2)
        return
    if fmt == "fcpxml":
        fps, clips, _ = fcpxml_clips(text)
        assert fps == sr
        timeline = read_back(doc, fmt, sr)
        assert [t.kind for t in timeline.tracks] == [otio.schema.TrackKind.Audio]
    else:
        timeline = read_back(doc, fmt, sr)
        tracks = list(timeline.tracks)
        assert [t.kind for t in tracks] == [otio.schema.TrackKind.Audio] * v.channels  # one per channel, no video
        clips = clips_of(tracks[0], sr, 0)
        assert all(clips_of(t, sr, 0) == clips for t in tracks)
    check_layout(clips)
    assert clips == want, "the export's samples are not the oracle's"


def test_audio_only_export_and_render_agree_in_length(media: dict[str, Path], tmp_path: Path) -> None:
    import av

    src = media["audio_wav"]
    result = export_file(str(src), SEGMENTS, "otio", str(tmp_path / "cut.otio"))
    out = tmp_path / "out.m4a"
    render(src, SEGMENTS, OutputSpec("m4a"), out)
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        samples = round(a.duration * a.time_base * a.codec_context.sample_rate)
    # one sample per piece, the renderer's own promise for audio lengths
    assert abs(samples - round(result.duration_s * 48000)) <= 4


def test_whole_source_export_is_one_clip(media: dict[str, Path], tmp_path: Path) -> None:
    v = gen.VARIANTS["cfr2997"]
    doc = tmp_path / "whole.otio"
    export_file(str(media["cfr2997"]), None, "otio", str(doc))
    track = read_back(doc, "otio", R2997).tracks[0]
    assert clips_of(track, R2997, 0) == [(0, v.frames, 0)]


# --- interfaces --------------------------------------------------------------------------------------------


def test_cli_export_and_its_refusals(media: dict[str, Path], tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"segments": [{"start": s.start, "end": s.end} for s in SEGMENTS]}))
    src = media["cfr2997"]
    out = tmp_path / "cut.edl"
    runner = CliRunner()
    ok = runner.invoke(main, ["export", str(src), "--cut", str(plan), "--format", "edl", "-o", str(out), "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["pieces"] == 4 and out.read_text().startswith("TITLE: cfr2997 (cut)")
    before = out.read_bytes()
    cases = [
        (["--format", "edl", "-o", str(out)], 2, "exists; pass --force"),
        (["--format", "edl", "-o", str(src), "--force"], 2, "is the source itself"),
        (["--format", "mp4", "-o", str(tmp_path / "x")], 2, "Invalid value for '--format'"),
        (["--format", "otio", "-o", str(tmp_path / "x"), "--cut", str(tmp_path / "none.json")], 2, "invalid_job"),
    ]
    for args, code, says in cases:
        r = runner.invoke(main, ["export", str(src), *args])
        assert r.exit_code == code and says in r.output, (args, r.output)
    assert out.read_bytes() == before  # a refusal writes nothing
    missing = runner.invoke(main, ["export", str(tmp_path / "gone.mov"), "--format", "otio", "-o", str(tmp_path / "y")])
    assert missing.exit_code == 3 and "source_not_found" in missing.output
    forced = runner.invoke(main, ["export", str(src), "--format", "edl", "-o", str(out), "--force", "--quiet"])
    assert forced.exit_code == 0 and json.loads(forced.stdout)["pieces"] == 1  # no cut: the whole source


def test_the_job_message_takes_the_export_formats() -> None:
    base = {
        "version": 1,
        "render_id": "rnd_1",
        "asset_id": "ast_1",
        "cut_id": None,
        "source": {"uri": "s3://media/a/talk.mov"},
        "segments": None,
        "webhook": None,
    }
    for fmt in EXPORTS:
        job = parse_job({**base, "output": {"format": fmt, "resolution": None}})
        assert job.output.format == fmt and job.output.is_export
    for bad in ("EDL", "xml", "otio\n", ["edl"]):
        with pytest.raises(InvalidJob, match="output.format must be one of mp4, mov, m4a, mp3, xmeml, fcpxml"):
            OutputSpec.from_dict({"format": bad})


@pytest.mark.parametrize(
    ("rate", "timebase", "drop"),
    [(Fraction(24000, 1001), 24, False), (Fraction(60000, 1001), 60, True), (Fraction(24), 24, False)],
)
@pytest.mark.parametrize("fmt", list(EXPORTS))
def test_other_standard_rates_read_back(tmp_path: Path, rate: Fraction, timebase: int, drop: bool, fmt: str) -> None:
    """23.976 and 59.94 (no fixture renders at them): the documents alone, read back exactly by OTIO."""
    from worker.exports import Clip, Cut, export

    clips = (Clip(src=17, length=40, record=0), Clip(src=300, length=1, record=40), Clip(src=400, length=59, record=41))
    cut = Cut(
        title="synthetic (cut)",
        source_name="cam a.mov",
        source_url="s3://media/assets/a/cam%20a.mov",
        rate=rate,
        video=True,
        width=1920,
        height=1080,
        channels=2,
        sample_rate=48000,
        source_units=1000,
        start_tc=parse_timecode("01:00:00;00" if drop else "01:00:00:00", rate) or 0,
        drop_frame=drop,
        clips=clips,
    )
    doc = tmp_path / f"cut.{EXPORTS[fmt].extension}"
    text = export(cut, fmt)
    doc.write_bytes(text.encode())
    check_format_rules(fmt, text, rate, drop, cut.start_tc)
    want = [(c.src, c.length, c.record) for c in clips]
    if fmt == "fcpxml":
        fps, got, start = fcpxml_clips(text)
        assert (fps, got, start) == (rate, want, cut.start_tc)
        return
    if fmt == "xmeml":
        assert f"<timebase>{timebase}</timebase><ntsc>{'TRUE' if rate.denominator == 1001 else 'FALSE'}" in text
    video = read_back(doc, fmt, rate).tracks[0]
    assert clips_of(video, rate, cut.start_tc) == want
