"""Loudness normalisation (issue 21), checked by an independent meter: pyloudnorm's BS.1770 integrated
loudness and a 4x oversampled true peak, never ffmpeg's own figures.

Sources are speech-like (fixtures/speech.py): quiet (about -33 LUFS), hot with clipped peaks, mostly silence
with a few seconds of speech, and silence. Every format gets within 0.5 LU of its target with its true peak at
or under the ceiling; a chunked render applies one gain; sync and the cut stay exact.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import mediacheck as mc
import numpy as np
import oracle
import pyloudnorm
import pytest
import scipy.signal

from fixtures import generate as gen
from fixtures import speech
from worker.errors import InvalidJob
from worker.loudness import TARGETS
from worker.output import OutputSpec
from worker.plan import Segment
from worker.render import render

CUT = [Segment(0.5, 6.0), Segment(7.2, 15.0), Segment(16.0, 23.5)]


@pytest.fixture(scope="session")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = gen.cache_dir() or tmp_path_factory.mktemp("speech")
    return {name: speech.make(name, out) for name in speech.SPEECH}


def meter(path: Path) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) of a file's decoded audio, by pyloudnorm and 4x oversampling."""
    audio, sr = mc.decode_audio(path)
    data = audio.T.astype(np.float64)
    integrated = pyloudnorm.Meter(sr).integrated_loudness(data)
    up = scipy.signal.resample_poly(data, 4, 1, axis=0)
    peak = float(np.max(np.abs(up)))
    return float(integrated), 20 * math.log10(peak) if peak > 0 else -math.inf


def kept_loudness(source: Path, segments: list[Segment] | None) -> float:
    """The independent meter on the kept audio of ``source``, cut by the test itself."""
    audio, sr = mc.decode_audio(source)
    cut = segments or [Segment(0, audio.shape[1] / sr)]
    parts = [audio[:, round(s.start * sr) : round(s.end * sr)] for s in cut]
    return float(pyloudnorm.Meter(sr).integrated_loudness(np.concatenate(parts, axis=1).T.astype(np.float64)))


# Every format; the three speech-like sources in both audio formats, the video formats on the talking head.
CASES = [
    *((name, fmt) for name in ("speech_quiet", "speech_hot", "speech_sparse") for fmt in ("m4a", "mp3")),
    ("speech_video", "mp4"),
    ("speech_video", "mov"),
]


@pytest.mark.parametrize(("name", "fmt"), CASES)
def test_every_format_reaches_the_target_under_the_ceiling(
    voices: dict[str, Path], tmp_path: Path, name: str, fmt: str
) -> None:
    source = voices[name]
    segments = None if name == "speech_sparse" else CUT  # the few seconds of speech are in the middle
    target = TARGETS["podcast"]
    out = tmp_path / f"out.{fmt}"
    result = render(source, segments, OutputSpec(fmt, loudness="podcast"), out)
    integrated, peak = meter(out)
    assert abs(integrated - target.integrated) <= 0.5, (integrated, result.loudness)
    assert peak <= target.true_peak, (peak, result.loudness)
    info = result.loudness
    assert info is not None and info["target"] == "podcast" and info["mode"] in ("linear", "limited")
    # What the result says it measured agrees with the independent meter, before and after.
    before = kept_loudness(source, segments)
    assert abs(info["input"]["integrated"] - before) <= 0.3, (info, before)
    assert abs(info["output"]["integrated"] - integrated) <= 0.4, (info, integrated)


def test_each_target(voices: dict[str, Path], tmp_path: Path) -> None:
    for name, target in TARGETS.items():
        out = tmp_path / f"{name}.m4a"
        result = render(voices["speech_hot"], CUT, OutputSpec("m4a", loudness=name), out)
        integrated, peak = meter(out)
        assert abs(integrated - target.integrated) <= 0.5 and peak <= target.true_peak, (name, integrated, peak)
        assert result.loudness is not None and result.loudness["target_i"] == target.integrated


def test_a_hot_source_brought_down_needs_no_limiter(voices: dict[str, Path], tmp_path: Path) -> None:
    result = render(voices["speech_hot"], CUT, OutputSpec("m4a", loudness="broadcast"), tmp_path / "o.m4a")
    assert result.loudness is not None and result.loudness["mode"] == "linear"
    assert result.loudness["gain_db"] < -10  # -9 LUFS to -23


def test_a_quiet_source_raised_is_held_by_the_limiter_and_says_so(voices: dict[str, Path], tmp_path: Path) -> None:
    result = render(voices["speech_quiet"], CUT, OutputSpec("m4a", loudness="podcast"), tmp_path / "o.m4a")
    assert result.loudness is not None and result.loudness["mode"] == "limited"
    assert result.loudness["gain_db"] > 15


def test_silence_is_left_alone_with_a_note(voices: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "o.m4a"
    result = render(voices["speech_silent"], None, OutputSpec("m4a", loudness="podcast"), out)
    info = result.loudness
    assert info is not None and info["mode"] == "unchanged" and info["gain_db"] == 0 and "silent" in info["note"]
    plain = render(voices["speech_silent"], None, OutputSpec("m4a"), tmp_path / "plain.m4a")
    a, _ = mc.decode_audio(out)
    b, _ = mc.decode_audio(Path(plain.path))
    assert np.abs(a).max() <= np.abs(b).max() * 1.01 + 1e-6  # not raised: the noise stays where it was


def test_no_loudness_is_the_sources_level(voices: dict[str, Path], tmp_path: Path) -> None:
    result = render(voices["speech_quiet"], CUT, OutputSpec("m4a"), tmp_path / "o.m4a")
    assert result.loudness is None
    integrated, _ = meter(Path(result.path))
    assert integrated < -30


def test_a_chunked_render_uses_one_gain_and_stays_exact(
    voices: dict[str, Path], media: dict[str, Path], tmp_path: Path
) -> None:
    """Chunks share the one audio encode, so one gain; the picture and A/V sync are as exact as without."""
    segs = [Segment(0.4, 4.3), Segment(5.0, 9.1), Segment(10.2, 19.7), Segment(30.5, 41.0)]
    out = tmp_path / "chunked.mp4"
    result = render(media["cfr30"], segs, OutputSpec("mp4", loudness="broadcast"), out, chunks=3)
    integrated, peak = meter(out)
    assert abs(integrated - TARGETS["broadcast"].integrated) <= 0.5 and peak <= -1, (integrated, peak)
    assert result.loudness is not None and result.loudness["mode"] == "linear"
    exp = oracle.expected([(s.start, s.end) for s in segs], rate=Fraction(30), origin=Fraction(0), first=0, end=6000)
    shown = [i for _, i in mc.frame_indices(out)]
    assert shown == list(exp.slots())
    # One gain: the level of every piece is the source's moved by the same number of dB.
    audio, sr = mc.decode_audio(out)
    source = gen.source_audio("cfr30").mean(axis=0)
    gains = []
    for span in exp.spans:
        a0, a1 = round(span.out * sr / 30) + 2400, round((span.out + span.length) * sr / 30) - 2400
        s0 = round(span.src * sr / 30) + 2400
        rms_out = np.sqrt(np.mean(audio.mean(axis=0)[a0:a1] ** 2))
        rms_src = np.sqrt(np.mean(source[s0 : s0 + a1 - a0] ** 2))
        gains.append(20 * math.log10(rms_out / rms_src))
    assert max(gains) - min(gains) < 0.2, gains
    rep = oracle.measure_sync(out, exp, source, 48000)
    assert rep.measured >= len(exp.spans) - 1 and rep.worst_s <= 0.001, f"A/V offset {rep.worst_s * 1000:.3f} ms"


@pytest.mark.parametrize(
    "raw",
    [{"format": "m4a", "loudness": "loud"}, {"format": "mp4", "loudness": -16}, {"format": "mp3", "loudness": ""}],
)
def test_an_unknown_target_is_invalid_naming_the_field_and_the_values(raw: dict[str, Any]) -> None:
    with pytest.raises(InvalidJob) as info:
        OutputSpec.from_dict(raw)
    assert "output.loudness" in info.value.message
    assert all(name in info.value.message for name in TARGETS)


def test_the_cli_takes_loudness_and_reports_it(voices: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "o.mp3"
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps([{"start": s.start, "end": s.end} for s in CUT]))
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "render", str(voices["speech_hot"]), "--cut", str(cut)]
        + ["--format", "mp3", "--loudness", "streaming", "--quiet", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    reported = json.loads(done.stdout)["loudness"]
    integrated, peak = meter(out)
    assert reported["target"] == "streaming" and abs(integrated + 14) <= 0.5 and peak <= -1
    bad = subprocess.run(
        [sys.executable, "-m", "worker.cli", "render", str(voices["speech_hot"]), "--format", "mp3"]
        + ["--loudness", "loud", "-o", str(tmp_path / "x.mp3")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "podcast" in bad.stderr and not (tmp_path / "x.mp3").exists()


def test_a_video_without_sound_stays_silent_and_says_so(media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "o.mp4"
    result = render(media["noaudio"], None, OutputSpec("mp4", loudness="podcast"), out)
    info = result.loudness
    assert info is not None and info["mode"] == "unchanged" and "no audio" in info["note"]
    audio, _ = mc.decode_audio(out)
    assert np.abs(audio).max() == 0
