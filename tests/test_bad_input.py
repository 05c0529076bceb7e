"""Bad sources get their error codes, and crafted files cannot make ffmpeg read other files."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

import worker.planner
from fixtures import generate as gen
from worker import ffmpeg
from worker.allowlists import ALLOWED_DECODERS
from worker.errors import ErrorCode, InvalidJob, RenderError
from worker.output import OutputSpec
from worker.plan import Segment
from worker.planner import plan_render
from worker.presets import load_preset
from worker.probe import probe
from worker.render import command_for, render
from worker.settings import Settings

CPU = Settings(nvenc="off")


def code_of(fn, *args, **kwargs) -> ErrorCode:
    with pytest.raises(RenderError) as info:
        fn(*args, **kwargs)
    return info.value.code


@pytest.mark.parametrize("name", ["corrupt", "truncated", "zero"])
def test_unreadable_sources(media, tmp_path, name):
    out = tmp_path / "out.mp4"
    with pytest.raises(RenderError) as info:
        render(media[name], None, OutputSpec("mp4"), out)
    assert info.value.code is ErrorCode.SOURCE_UNREADABLE
    assert media[name].name in info.value.message
    assert not out.exists() and not list(tmp_path.iterdir())  # no partial output


def test_missing_source(tmp_path):
    assert code_of(probe, tmp_path / "nope.mp4") is ErrorCode.SOURCE_NOT_FOUND


def test_wrong_streams_for_format(media, tmp_path):
    assert code_of(render, media["audio_wav"], None, OutputSpec("mp4"), tmp_path / "o.mp4") is ErrorCode.SOURCE_NO_VIDEO
    assert code_of(render, media["noaudio"], None, OutputSpec("m4a"), tmp_path / "o.m4a") is ErrorCode.SOURCE_NO_AUDIO
    assert code_of(render, media["noaudio"], None, OutputSpec("mp3"), tmp_path / "o.mp3") is ErrorCode.SOURCE_NO_AUDIO


def test_segments_out_of_range(media, tmp_path):
    with pytest.raises(InvalidJob, match=r"segments\[1\].start=300.5 is past the end"):
        render(media["noaudio"], [Segment(0, 1), Segment(300.5, 301)], OutputSpec("mp4"), tmp_path / "o.mp4")


def test_source_too_large(media, tmp_path):
    from worker.settings import Settings

    small = Settings(max_source_duration_s=10.0)
    e = code_of(render, media["cfr2997"], None, OutputSpec("mp4"), tmp_path / "o.mp4", settings=small)
    assert e is ErrorCode.SOURCE_TOO_LARGE


@contextlib.contextmanager
def fifo_watch(path: Path) -> Iterator[dict]:
    """A named pipe at ``path``: reports whether anything opened it for reading.

    Opening a FIFO for writing without blocking fails with ENXIO until a reader
    has it open, so polling that open tells us, without any doubt, whether some
    process tried to read the file the crafted input points to.
    """
    os.mkfifo(path)
    state = {"opened": False}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                time.sleep(0.002)
                continue
            state["opened"] = True
            with contextlib.suppress(OSError):
                os.write(fd, b"\x00" * 188)
            os.close(fd)
            time.sleep(0.01)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        yield state
    finally:
        stop.set()
        t.join()


def crafted_inputs(tmp_path: Path, secret: Path) -> list[Path]:
    hls_mp4 = gen.make_playlist(tmp_path, secret, filename="playlist.mp4")
    hls_m3u8 = gen.make_playlist(tmp_path, secret, filename="playlist.m3u8")
    concat = tmp_path / "concat.mp4"  # a relative entry passes the concat demuxer's safe=1 check
    concat.write_text(f"ffconcat version 1.0\nfile '{secret.name}'\n")
    return [hls_mp4, hls_m3u8, concat]


def test_the_fifo_watch_detects_reads(tmp_path):
    """Control: without the allowlists, these crafted inputs do make libavformat open the secret."""
    secret = tmp_path / "secret.ts"
    with fifo_watch(secret) as state:
        _, m3u8, concat = crafted_inputs(tmp_path, secret)
        for f in (m3u8, concat):
            with contextlib.suppress(av.error.FFmpegError, OSError):
                av.open(str(f), timeout=2).close()
        time.sleep(0.1)
    assert state["opened"]


def _fooled_probe(monkeypatch: pytest.MonkeyPatch, twin: Path, demuxer: str | None = None) -> None:
    """Make render()'s probe describe any source as the genuine ``twin`` (optionally with another demuxer).

    The probe is the first guard; this takes it out of the way to test the
    second one on its own: the input options graph.ffmpeg_args gives ffmpeg. It
    stands for a file that shows PyAV one thing and ffmpeg another. Everything
    after the probe is the worker's own path: render() -> plan -> graph ->
    graph.ffmpeg_args -> ffmpeg.run.
    """
    real_probe = worker.planner.probe

    def fooled(path, **kwargs):
        info = real_probe(twin, **kwargs)
        return dataclasses.replace(info, path=str(path), demuxer=demuxer or info.demuxer)

    monkeypatch.setattr(worker.planner, "probe", fooled)


def test_playlists_and_concat_scripts_never_read_their_targets(media, tmp_path, monkeypatch):
    secret = tmp_path / "secret.ts"
    out = tmp_path / "out.mp4"
    with fifo_watch(secret) as state:
        for crafted in crafted_inputs(tmp_path, secret):
            with pytest.raises(RenderError) as info:
                render(crafted, None, OutputSpec("mp4"), out, settings=CPU)
            assert info.value.code is ErrorCode.SOURCE_UNREADABLE
        # ffmpeg itself, with the input options the worker gives it, refuses them
        # too, even when told the playlist's real demuxer.
        for demuxer in ("mov", "hls", "concat"):
            _fooled_probe(monkeypatch, media["noaudio"], demuxer)
            for crafted in crafted_inputs(tmp_path, secret):
                with pytest.raises(RenderError) as info:
                    render(crafted, None, OutputSpec("mp4"), out, settings=CPU, deadline=time.monotonic() + 20)
                if demuxer != "mov":  # "mov" just fails to parse a text file
                    assert info.value.code is ErrorCode.SOURCE_UNREADABLE, info.value
                    assert "demuxer that is not allowed" in info.value.message
        time.sleep(0.1)
    assert not state["opened"], "a crafted input made ffmpeg open the file it points to"
    assert not out.exists()


def test_probe_refuses_network_and_other_protocols(media, tmp_path, monkeypatch):
    """The protocol allowlist is part of every open, the probe's and ffmpeg's: a URL is never fetched."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.mp4"
        code = code_of(probe, url)
        assert code in (ErrorCode.SOURCE_NOT_FOUND, ErrorCode.SOURCE_UNREADABLE)
        _fooled_probe(monkeypatch, media["noaudio"])
        with pytest.raises(RenderError) as info:
            render(url, None, OutputSpec("mp4"), tmp_path / "o.mp4", settings=CPU, deadline=time.monotonic() + 10)
        assert info.value.code is ErrorCode.SOURCE_UNREADABLE and "http location" in info.value.message
        # A connection ffmpeg made would wait in the backlog even though nothing accepted it.
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert not (tmp_path / "o.mp4").exists()


def test_ffmpeg_input_options_are_the_allowlists(media):
    """What ffmpeg is told about the input, read from the argv the worker runs.

    The behaviour of each option is tested above and in test_decode_limits.py;
    this pins the values where a behavioural test cannot reach: protocols and
    demuxers a crafted file might ask for that have no fixture here, and the
    decoder thread count that bounds the memory of refused huge frames.
    """
    plan = plan_render(media["cfr30"], None, OutputSpec("mp4"))
    args = command_for(plan, load_preset("mp4"), "g.txt", "o.mp4")
    before = args[: args.index("-i")]
    opts = {before[i][1:]: before[i + 1] for i in range(len(before) - 1) if before[i].startswith("-")}
    assert opts["protocol_whitelist"] == "file"
    demuxers = set(opts["format_whitelist"].split(","))
    assert {"mov", "mp4", "matroska", "webm", "mp3", "wav"} <= demuxers
    assert not demuxers & {"hls", "applehttp", "concat", "dash", "image2", "tee", "lavfi", "subfile", "ffmetadata",
                           "rtsp", "sdp", "rtp", "data", "srt", "ass"}  # fmt: skip
    # ffmpeg may open exactly the decoders of the two streams the render decodes, nothing else.
    assert opts["codec_whitelist"].split(",") == ["h264", "aac"]
    assert not set(ALLOWED_DECODERS) & {"ffv1", "png", "gif", "rawvideo", "bmp", "tiff", "subrip", "ass", "theora"}
    # Every decoder the fixtures really use (what the probe saw open them) is allowed, and is what ffmpeg gets.
    for name in ("cfr30", "mono44k", "surround51", "audio_mp3", "audio_wav"):
        info = probe(media[name])
        used = {s.codec for s in (info.video, info.audio) if s is not None}
        assert used <= set(ALLOWED_DECODERS), (name, used)
        fmt = "mp4" if info.video else "m4a"
        p = plan_render(media[name], None, OutputSpec(fmt))
        argv = command_for(p, load_preset(fmt), "g.txt", "o." + fmt)
        assert set(argv[argv.index("-codec_whitelist") + 1].split(",")) == used, name
    assert int(opts["max_pixels"]) == Settings().max_source_pixels
    assert opts["f"] == "mov"
    # Frame-threaded decoders allocate per-thread tables sized by a stream's declared
    # dimensions before a frame is refused (~80 MB per thread at 16000x16000).
    assert 1 <= int(opts["threads"]) <= 4
    assert 0 < int(opts["probesize"]) <= 50_000_000 and 0 < int(opts["analyzeduration"]) <= 60_000_000


def test_truncated_source_with_index_in_front_is_not_a_short_success(media, tmp_path):
    """The index says 20 s but the data stops halfway: ffmpeg exits 0, the worker must not."""
    whole = tmp_path / "faststart.mp4"
    subprocess.run(
        [ffmpeg.resolve_ffmpeg(), "-hide_banner", "-loglevel", "error", "-i", str(media["cfr2997"]), "-c", "copy",
         "-movflags", "+faststart", str(whole)],
        check=True,
    )  # fmt: skip
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    for fmt in ("mp4", "m4a"):
        out = tmp_path / f"out.{fmt}"
        with pytest.raises(RenderError) as info:
            render(cut, None, OutputSpec(fmt), out)
        assert info.value.code is ErrorCode.SOURCE_UNREADABLE and "ended early" in info.value.message
        assert not out.exists()
