"""The generated test media are what the renderer's tests assume they are (fixtures/generate.py, tests/mediacheck.py).

Set FIXTURES_CACHE=1 (or a directory) to reuse generated media across runs in /work/main/.fixtures-cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import mediacheck as mc  # noqa: E402

from fixtures import generate as gen  # noqa: E402

VIDEO_VARIANTS = [n for n, v in gen.VARIANTS.items() if v.kind == "av"]
# Made as real recorders make them (offsets, jitter, tails, Opus pre-skip): tests/test_real_recordings.py
# checks them against what they claim; the exact-metadata checks here are for the clean sources.
REAL_RECORDINGS = {
    "webm_stream", "webm_vp9", "audio_gap", "vfr_jitter", "offset_mkv", "late_audio", "audio_tail", "hlg", "pq"
}  # fmt: skip
BARCODE_VARIANTS = ["cfr30", "cfr2997", "odd", "rotated", "vfr", "noaudio", "mono44k", "twoaudio", "surround51"]


@pytest.fixture(scope="session")
def cfr30_audio(media) -> tuple[np.ndarray, int]:
    return mc.decode_audio(media["cfr30"])


# ---------------------------------------------------------------------------------------------------------------
# generation, naming, cache
# ---------------------------------------------------------------------------------------------------------------


def test_every_variant_is_generated_with_its_documented_name(media):
    assert set(media) == set(gen.VARIANTS)
    for name, path in media.items():
        v = gen.VARIANTS[name]
        assert path.name == v.filename
        assert path.is_file(), name
        if v.kind != "text":
            meta = json.loads((path.parent / f"{name}.json").read_text())
            assert meta["generator_version"] == gen.GENERATOR_VERSION
    expected = {
        "cfr30": "cfr30.mp4", "cfr2997": "cfr2997.mp4", "vfr": "vfr.mp4", "rotated": "rotated.mp4", "odd": "odd.mp4",
        "noaudio": "noaudio.mp4", "mono44k": "mono44k.mp4", "surround51": "surround51.mp4",
        "twoaudio": "twoaudio.mp4", "audio_mp3": "audio_mp3.mp3", "audio_wav": "audio_wav.wav",
        "tone_wav": "tone_wav.wav", "corrupt": "corrupt.mp4", "truncated": "truncated.mp4", "zero": "zero.mp4",
        "playlist": "playlist.mp4", "concat_script": "concat.mp4", "secret": "secret.ts",
        "grow_frames": "grow_frames.mkv", "many_channels": "many_channels.wav", "absurd_rate": "absurd_rate.wav",
        "tiny_bitrate": "tiny_bitrate.mp4",
        "webm_stream": "webm_stream.webm", "webm_vp9": "webm_vp9.webm", "audio_gap": "audio_gap.mp4",
        "vfr_jitter": "vfr_jitter.mkv", "offset_mkv": "offset_mkv.mkv",
        "late_audio": "late_audio.mp4", "audio_tail": "audio_tail.mp4", "long2997": "long2997.mp4", "hlg": "hlg.mp4",
        "pq": "pq.mp4", "bt601": "bt601.mp4",
        "cam_gop1s": "cam_gop1s.mp4", "cam_gop2s_open": "cam_gop2s_open.mp4", "phone_2997": "phone_2997.mov",
    }  # fmt: skip
    assert {n: p.name for n, p in media.items()} == expected


def test_variant_metadata_is_consistent():
    v = gen.VARIANTS["cfr30"]
    assert (v.width, v.height, v.fps, v.frames, v.duration, v.gop) == (320, 180, 30, 6000, 200.0, 60)
    assert v["fps"] == v.fps  # mapping-style access works too
    assert gen.VARIANTS["cfr2997"].fps == Fraction(30000, 1001)
    assert gen.VARIANTS["rotated"].display_size == (180, 320)
    assert gen.VARIANTS["twoaudio"].audio_seed == 202
    vfr = gen.VARIANTS["vfr"]
    assert vfr.kept is not None and vfr.kept[0] == 0 and vfr.kept[-1] == 599
    assert 0.7 < len(vfr.kept) / 600 < 0.9
    gaps = np.diff(vfr.kept)
    assert set(gaps.tolist()) >= {1, 2, 3, 4}, "the drop pattern should be irregular"


def test_cache_reuses_and_regenerates_on_version_change(tmp_path):
    first = gen.make("tone_wav", tmp_path)
    first.write_bytes(first.read_bytes())  # same content, new mtime
    stamp = first.stat().st_mtime_ns
    assert gen.make("tone_wav", tmp_path).stat().st_mtime_ns == stamp  # reused
    sidecar = tmp_path / "tone_wav.json"
    meta = json.loads(sidecar.read_text())
    meta["generator_version"] = -1
    sidecar.write_text(json.dumps(meta))
    first.write_bytes(b"stale")
    again = gen.make("tone_wav", tmp_path)
    assert again.read_bytes() != b"stale"
    assert json.loads(sidecar.read_text())["generator_version"] == gen.GENERATOR_VERSION


def test_generation_is_deterministic(tmp_path, media):
    for name in ("audio_wav", "corrupt", "tone_wav"):
        assert gen.make(name, tmp_path / "again").read_bytes() == media[name].read_bytes(), name
    assert np.array_equal(gen.frame_luma(1234), gen.frame_luma(1234))
    assert np.array_equal(gen.noise(5, 1000, 48000), gen.noise(5, 1000, 48000))


def test_cli(tmp_path):
    script = ROOT / "fixtures" / "generate.py"
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "zero", "tone_wav"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "zero.mp4").stat().st_size == 0
    assert (tmp_path / "tone_wav.wav").is_file()
    assert not (tmp_path / "cfr30.mp4").exists()


# ---------------------------------------------------------------------------------------------------------------
# barcode
# ---------------------------------------------------------------------------------------------------------------


def _resize_nearest(img: np.ndarray, h: int, w: int) -> np.ndarray:
    ys = ((np.arange(h) + 0.5) * img.shape[0] / h).astype(int)
    xs = ((np.arange(w) + 0.5) * img.shape[1] / w).astype(int)
    return img[ys][:, xs]


@pytest.mark.parametrize("index", [0, 1, 2, 255, 256, 1000, 5999, 0xAAAA, 0x5555, 65535])
def test_barcode_round_trip_at_any_size(index):
    for w, h in [(320, 180), (321, 241), (1920, 1080), (640, 480)]:
        luma = gen.frame_luma(index, w, h)
        assert mc.read_barcode(luma) == index
        for sh, sw in [(h * 2, w * 2), (h // 2, w // 2), (h * 3 // 4, w * 3 // 4), (h * 3, w * 3), (36, 64)]:
            assert mc.read_barcode(_resize_nearest(luma, sh, sw)) == index, (w, h, sw, sh)
    # 2x2 box-filter downscale (what a real scaler does)
    luma = gen.frame_luma(index).astype(np.float32)
    half = luma.reshape(90, 2, 160, 2).mean(axis=(1, 3)).round().astype(np.uint8)
    assert mc.read_barcode(half) == index
    assert mc.read_barcode_any_orientation(np.rot90(gen.frame_luma(index), 1)) == (index, 3)


def test_barcode_rejects_non_barcodes():
    luma = gen.frame_luma(77)
    assert mc.read_barcode(np.full((180, 320), 128, np.uint8)) is None
    assert mc.read_barcode(255 - luma) is None  # guards inverted
    blend = ((gen.frame_luma(1).astype(np.uint16) + gen.frame_luma(2)) // 2).astype(np.uint8)
    assert mc.read_barcode(blend) is None  # a blend of two frames is not mistaken for either
    assert mc.read_barcode(np.flipud(luma)) is None
    # the moving content stays in mid grey levels
    assert luma[20:].min() >= 40 and luma[20:].max() <= 210


@pytest.mark.parametrize("size", ["176:100", "1280:720", "643:483"])
def test_barcode_survives_real_scaling_and_reencoding(media, tmp_path, size):
    out = tmp_path / "scaled.mp4"
    fmt = "yuv444p" if int(size.split(":")[1]) % 2 else "yuv420p"  # libx264 4:2:0 needs even dimensions
    vf = f"scale={size}:flags=bicubic,format={fmt}"
    enc = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "28"]
    cmd = [gen.ffmpeg_exe(), "-v", "error", "-i", str(media["noaudio"]), "-t", "2", "-vf", vf, *enc, str(out)]
    subprocess.run(cmd, check=True, timeout=60)
    assert [i for _, i in mc.frame_indices(out)] == list(range(60))


def test_autorotated_output_reads_with_rot90(media, tmp_path):
    out = tmp_path / "autorotated.mp4"
    cmd = [gen.ffmpeg_exe(), "-v", "error", "-i", str(media["rotated"]), "-t", "1", "-an", "-c:v", "libx264"]
    subprocess.run([*cmd, "-preset", "ultrafast", str(out)], check=True, timeout=60)
    with av.open(str(out)) as c:
        frame = next(c.decode(video=0))
        assert (frame.width, frame.height, frame.rotation) == (180, 320, 0)
        # ffmpeg applies the 90 degree counter-clockwise display rotation: the band ends up on the left edge
        assert mc.read_barcode_any_orientation(mc.luma(frame)) == (0, 3)


def _check_barcodes(path: Path, name: str) -> None:
    v = gen.VARIANTS[name]
    got = mc.frame_indices(path)
    expected = v.indices()
    assert len(got) == len(expected) == v.frames
    indices = [i for _, i in got]
    wrong = [(k, a, b) for k, (a, b) in enumerate(zip(indices, expected, strict=True)) if a != b]
    assert not wrong, f"{name}: frames with a wrong barcode (position, read, expected): {wrong[:10]}"
    late = [(t, i) for t, i in got if abs(t - v.frame_time(i)) > 0.5e-3]
    assert not late, f"{name}: frames not at index/fps: {late[:10]}"
    assert got[0][0] == 0.0


@pytest.mark.parametrize("name", BARCODE_VARIANTS)
def test_every_frame_carries_its_index(media, name):
    _check_barcodes(media[name], name)


def test_vfr_timestamps_have_gaps(media):
    v = gen.VARIANTS["vfr"]
    with av.open(str(media["vfr"])) as c:
        durations = {p.duration for p in c.demux(c.streams.video[0]) if p.size}
    assert len(durations) >= 3, f"packet durations should vary, got {durations}"
    times = [t for t, _ in mc.frame_indices(media["vfr"])]
    steps = np.round(np.diff(times) * 30).astype(int)
    assert set(steps.tolist()) == set(np.diff(v.kept).tolist())


def test_video_stream_properties(media):
    with av.open(str(media["odd"])) as c:
        s = c.streams.video[0]
        assert (s.codec_context.width, s.codec_context.height) == (321, 241)
        frame = next(c.decode(s))
        assert (frame.width, frame.height) == (321, 241)
    with av.open(str(media["rotated"])) as c:
        s = c.streams.video[0]
        assert (s.codec_context.width, s.codec_context.height) == (320, 180)  # stored landscape
        frame = next(c.decode(s))
        # PyAV 18 exposes the display matrix on decoded frames (counter-clockwise degrees), not on the stream.
        assert frame.rotation in (90, -90)
        assert frame.rotation == gen.VARIANTS["rotated"].rotation
    with av.open(str(media["cfr30"])) as c:
        assert next(c.decode(video=0)).rotation == 0
        assert c.streams.video[0].average_rate == 30
    with av.open(str(media["cfr2997"])) as c:
        assert c.streams.video[0].average_rate == Fraction(30000, 1001)


def test_gop_is_60_frames(media):
    with av.open(str(media["cfr2997"])) as c:
        keys = [k for k, p in enumerate(p for p in c.demux(video=0) if p.size) if p.is_keyframe]
    assert keys[:4] == [0, 60, 120, 180]


# ---------------------------------------------------------------------------------------------------------------
# audio
# ---------------------------------------------------------------------------------------------------------------


def test_find_offset_recovers_a_known_shift_of_the_pristine_noise():
    ref = gen.noise(9, 48000 * 10, 48000)
    rng = np.random.default_rng(0)
    for shift in (0, 1, 12345, 200001, 480000 - 4800):
        probe = ref[shift : shift + 4800] * 0.7 + rng.normal(0, 0.01, 4800)
        pos, peak = mc.find_offset(ref, probe, expected=shift + 900, radius=2000)
        assert abs(pos - shift) <= 1 and peak > 0.9, (shift, pos, peak)
    other = gen.noise(10, 4800, 48000)
    _, peak = mc.find_offset(ref, other, expected=20000, radius=2000)
    assert peak < 0.3


def test_decoded_aac_window_is_located_at_its_time(media, cfr30_audio):
    data, rate = cfr30_audio
    assert rate == 48000 and data.shape[0] == 2
    assert mc.audio_start_seconds(media["cfr30"]) == 0.0
    ref = gen.source_audio("cfr30")[0]
    for t in (0.5, 61.25, 123.456, 199.0):
        at = round(t * rate)
        pos, peak = mc.find_offset(ref, data[1, at : at + 9600], expected=at + 1000, radius=5000)
        assert abs(pos - at) <= rate // 1000, (t, pos - at)
        assert peak > 0.95


@pytest.mark.parametrize(
    "name", ["cfr2997", "vfr", "rotated", "odd", "mono44k", "surround51", "twoaudio", "audio_mp3", "audio_wav"]
)
def test_decoded_audio_matches_the_pristine_signal(media, name):
    v = gen.VARIANTS[name]
    data, rate = mc.decode_audio(media[name])
    ref = gen.source_audio(name)
    assert rate == v.sample_rate
    assert data.shape[0] == v.channels == ref.shape[0]
    assert data.shape[1] >= ref.shape[1]
    for ch in range(v.channels):
        if v.channels == 6 and ch == 3:
            continue  # AAC low-passes the LFE channel
        for at in (2000, ref.shape[1] // 2, ref.shape[1] - 6000):
            pos, peak = mc.find_offset(ref[ch], data[ch, at : at + 4800], expected=at, radius=2400)
            assert pos == at and peak > 0.95, (name, ch, at, pos, peak)
    if v.audio_codec == "pcm_s16le":
        assert np.array_equal(data, ref)
    else:
        resid = data[:, : ref.shape[1]] - ref
        keep = [c for c in range(v.channels) if not (v.channels == 6 and c == 3)]
        assert np.sqrt(np.mean(resid[keep] ** 2)) < 0.25 * np.sqrt(np.mean(ref**2))


def test_twoaudio_default_is_the_second_stream(media):
    path = media["twoaudio"]
    with av.open(str(path)) as c:
        flags = [bool(s.disposition & av.stream.Disposition.default) for s in c.streams.audio]
    assert flags == [False, True]
    assert mc.default_audio_stream(path) == 1
    first_seed = gen.source_audio("twoaudio", 0)[0]
    default_seed = gen.source_audio("twoaudio", 1)[0]
    data, _ = mc.decode_audio(path)  # default stream
    at = 60000
    _, good = mc.find_offset(default_seed, data[0, at : at + 4800], expected=at, radius=1000)
    _, bad = mc.find_offset(first_seed, data[0, at : at + 4800], expected=at, radius=1000)
    assert good > 0.95 and bad < 0.3
    first, _ = mc.decode_audio(path, stream=0)
    _, peak = mc.find_offset(first_seed, first[0, at : at + 4800], expected=at, radius=1000)
    assert peak > 0.95


def test_noise_is_band_limited_and_scaled():
    x = gen.noise(1, 48000 * 4, 48000).astype(np.float64)
    assert abs(np.max(np.abs(x)) - 0.3) < 1e-4
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 48000)
    assert spec[freqs > 6100].sum() < 1e-6 * spec.sum()
    assert np.all(np.round(x * 32768) == x * 32768)  # on the s16 grid: the WAV holds it exactly


def test_tone_and_click_measure(media):
    data, rate = mc.decode_audio(media["tone_wav"])
    ref = gen.source_audio("tone_wav")
    assert rate == 48000 and data.shape == (1, 480000)
    assert np.array_equal(data, ref)
    smooth = mc.max_jump(data)
    assert abs(smooth - 0.5 * 2 * np.pi * 220 / 48000) < 2e-4
    assert abs(np.max(np.abs(data)) - 0.5) < 1e-3
    # a hard cut between two arbitrary points of the sine jumps further than the sine ever does
    cut = np.concatenate([data[0, :1000], data[0, 1000 + 55 :]])
    assert mc.max_jump(cut) > 2 * smooth


# ---------------------------------------------------------------------------------------------------------------
# durations, broken and hostile inputs
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in VIDEO_VARIANTS if n != "secret" and n not in REAL_RECORDINGS])
def test_decoded_durations_match_metadata(media, name):  # the TS "secret" starts at 1.4 s
    v = gen.VARIANTS[name]
    d = mc.stream_durations(media[name])
    assert d["video_start"] == 0.0
    assert d["video"] == pytest.approx(v.duration, abs=1e-3)
    assert d["video_frames"] == v.frames
    if v.audio_seeds:
        assert d["audio_start"] == 0.0
        # AAC codes whole 1024-sample frames; the mp4 edit list trims the priming, not the tail padding
        assert v.duration - 1e-6 <= d["audio"] <= v.duration + 1024 / v.sample_rate
    else:
        assert d["audio"] is None


@pytest.mark.parametrize("name", ["audio_mp3", "audio_wav", "tone_wav"])
def test_audio_only_durations(media, name):
    v = gen.VARIANTS[name]
    d = mc.stream_durations(media[name])
    assert d["video"] is None
    assert d["audio_samples"] == v.samples
    assert d["audio"] == pytest.approx(v.duration, abs=1e-3)


@pytest.mark.parametrize("name", ["corrupt", "zero", "truncated"])
def test_broken_inputs_cannot_be_opened(media, name):
    with pytest.raises(av.error.FFmpegError):
        av.open(str(media[name])).close()


def test_broken_inputs_look_as_described(media):
    assert media["zero"].stat().st_size == 0
    assert media["corrupt"].stat().st_size == 64 * 1024
    data = media["truncated"].read_bytes()
    assert data[4:8] == b"ftyp" and b"mdat" in data and b"moov" not in data
    assert len(data) > 50_000


def test_playlist_and_concat_point_at_the_secret(media, tmp_path):
    secret = media["secret"].resolve()
    text = media["playlist"].read_text()
    assert text.startswith("#EXTM3U\n") and f"\n{secret}\n" in text
    assert media["concat_script"].read_text() == f"ffconcat version 1.0\nfile '{secret}'\n"
    target = tmp_path / "elsewhere" / "x.ts"
    assert str(target) in gen.make_playlist(tmp_path, target).read_text()
    assert f"file '{target}'" in gen.make_concat_script(tmp_path, target).read_text()
    # the fixtures are live: forcing the demuxer really reads the secret (barcode 0 of a 2 s clip)
    with av.open(str(media["playlist"]), format="hls") as c:
        assert mc.read_barcode(mc.luma(next(c.decode(video=0)))) == 0
    with av.open(str(media["concat_script"]), format="concat", options={"safe": "0"}) as c:
        assert mc.read_barcode(mc.luma(next(c.decode(video=0)))) == 0


def test_grow_frames_grows_mid_stream(media):
    """16x16 in the header and the first frames; a later keyframe switches to the big size.

    Decoded with a pixel limit (one thread), so the big frames are refused and
    never allocated: the decoder's size after the refusal shows what they were.
    """
    v = gen.VARIANTS["grow_frames"]
    big = v.extra["big_size"]
    with av.open(str(media["grow_frames"])) as c:
        s = c.streams.video[0]
        assert (s.codec_context.width, s.codec_context.height) == (v.width, v.height)
        s.codec_context.options = {"max_pixels": str(big[0] * big[1] - 1)}
        s.codec_context.thread_count = 1
        small = 0
        with pytest.raises(av.error.FFmpegError):
            for packet in c.demux(s):
                for frame in packet.decode():
                    assert (frame.width, frame.height) == (v.width, v.height)
                    small += 1
        assert small == v.extra["small_frames"]
        assert (s.codec_context.width, s.codec_context.height) == big
    assert media["grow_frames"].stat().st_size < 2_000_000  # crafted uploads are small


def test_audio_fixtures_declare_what_they_claim(media):
    with av.open(str(media["many_channels"])) as c:
        a = c.streams.audio[0]
        assert a.codec_context.channels == 64 and a.sample_rate == 8000
    with av.open(str(media["absurd_rate"])) as c:
        assert c.streams.audio[0].sample_rate == 2**31 - 1
    assert media["absurd_rate"].stat().st_size == 44 + 48000 * 2 * 2


def test_tiny_bitrate_is_tiny(media):
    v = gen.VARIANTS["tiny_bitrate"]
    with av.open(str(media["tiny_bitrate"])) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        assert video.frames == v.frames and float(video.average_rate) == 1.0
        assert video.bit_rate < 1000 and audio.bit_rate < 16_000
