"""Real players on a rendered file: GStreamer (Debian's qtdemux + libav decoder) and headless Chromium.

Both are installed by ``make services``; a test that needs one skips locally when it is missing, never in CI
(:func:`require`).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

GST = "gst-launch-1.0"
CHROMIUM = "chromium"


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{binary} is not installed (make services installs it)")
        pytest.skip(f"{binary} is not installed (make services installs it)")
    return path


def gstreamer_frames(path: Path, width: int, height: int) -> int:
    """Decode ``path`` to the end with GStreamer; the frames it decoded (it must report no error)."""
    gst = require(GST)
    with tempfile.TemporaryDirectory(prefix="gst-") as tmp:
        raw = Path(tmp) / "frames.i420"
        pipeline = [
            *("filesrc", f"location={path}", "!", "qtdemux", "!", "avdec_h264", "!"),
            *("videoconvert", "!", "video/x-raw,format=I420", "!", "filesink", f"location={raw}"),
        ]
        run = subprocess.run([gst, "-q", *pipeline], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0 and "ERROR" not in run.stderr, run.stderr[-2000:]
        frame = width * height * 3 // 2
        size = raw.stat().st_size
        assert size % frame == 0, f"{size} bytes is not a whole number of {width}x{height} frames"
        return size // frame


_PAGE = b"""<!doctype html><html><body><script>
function post(o){fetch('/result',{method:'POST',body:JSON.stringify(o)});}
const v=document.createElement('video'); v.muted=true; v.preload='auto';
v.onended=()=>{const q=v.getVideoPlaybackQuality();
  post({ended:true,time:v.currentTime,duration:v.duration,frames:q.totalVideoFrames,
        corrupted:q.corruptedVideoFrames,width:v.videoWidth,height:v.videoHeight});};
v.onerror=()=>post({error:v.error&&v.error.code,message:v.error&&v.error.message});
v.src='/media'; document.body.appendChild(v);
v.play().then(()=>{v.playbackRate=4;}).catch(e=>post({error:-1,message:String(e)}));
</script></body></html>"""


def chromium_plays(path: Path, content_type: str, timeout_s: float = 180.0) -> dict[str, Any]:
    """Play ``path`` in headless Chromium (a <video> on a loopback page, 4x speed) to its end; what the page saw.

    The file is served with range requests, as storage serves a download; the page reports ``ended`` (with
    the element's time, duration and frame counts) or the media error.
    """
    chromium = require(CHROMIUM)
    media = path.read_bytes()
    result: dict[str, Any] = {}
    done = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            if self.path != "/media":
                self._send(200, "text/html", _PAGE)
                return
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes="):
                first, _, last = ranged[6:].partition("-")
                a, b = int(first), int(last) if last else len(media) - 1
                self._send(206, content_type, media[a : b + 1], {"Content-Range": f"bytes {a}-{b}/{len(media)}"})
            else:
                self._send(200, content_type, media)

        def do_POST(self) -> None:  # noqa: N802
            result.update(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            self.send_response(204)
            self.end_headers()
            done.set()

        def _send(self, status: int, kind: str, body: bytes, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Accept-Ranges", "bytes")
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        args = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--mute-audio"]
        args += ["--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}"]
        browser = subprocess.Popen(
            [*args, f"http://127.0.0.1:{server.server_address[1]}/"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert done.wait(timeout_s), "Chromium never reported the end of playback or an error"
        finally:
            browser.kill()
            browser.wait()
            server.shutdown()
            server.server_close()
    return result
