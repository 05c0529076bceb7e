"""A new media format is a data file (issue 19): a ``presets/<name>.toml`` and nothing else.

The package and its presets are copied aside, a Matroska preset is added there (H.264 + AAC, like mp4, with
mp4 chunk pieces), and a fresh interpreter on that copy validates a job for it, renders it whole and chunked,
and counts it in the metrics' format label. Nothing in the code names ``mkv``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, sys
from worker.output import OutputSpec
from worker.plan import Segment
from worker.planner import plan_render
from worker.render import render
from worker.telemetry.definitions import FORMATS

src, out = sys.argv[1], sys.argv[2]
spec = OutputSpec.from_dict({"format": "mkv"})
segs = [Segment(0.5, 1.5), Segment(2.0, 3.2)]
whole = render(src, segs, spec, out + "/whole.mkv")
chunked = render(src, segs, spec, out + "/chunked.mkv", chunks=2)
frames = plan_render(src, segs, spec).timeline.total_units
metric = "mkv" in FORMATS
print(json.dumps({"whole": whole.to_dict(), "chunked": chunked.to_dict(), "frames": frames, "metric": metric}))
"""


def test_a_new_format_is_one_preset_file(media: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(ROOT / "worker", tmp_path / "worker", ignore=shutil.ignore_patterns("__pycache__", "_presets"))
    shutil.copytree(ROOT / "presets", tmp_path / "presets")
    mp4 = (tmp_path / "presets" / "mp4.toml").read_text()
    mkv = (
        mp4.replace('format = "mp4"', 'format = "mkv"')
        .replace("order = 1", "order = 5")
        .replace('extension = "mp4"', 'extension = "mkv"')
        .replace('content_type = "video/mp4"', 'content_type = "video/x-matroska"')
        .replace('muxer = "mp4"', 'muxer = "matroska"')
        .replace(
            'muxer_args = ["-movflags", "+faststart", "-fflags", "+bitexact"]', 'muxer_args = ["-fflags", "+bitexact"]'
        )
    )
    assert mkv.count("mkv") == 2 and "matroska" in mkv
    (tmp_path / "presets" / "mkv.toml").write_text(mkv)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(media["cfr30"]), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["metric"]
    for name in ("whole", "chunked"):
        assert result[name]["format"] == "mkv"
        with av.open(str(out / f"{name}.mkv")) as container:
            assert "matroska" in container.format.name
            video = container.streams.video[0]
            assert video.codec_context.name == "h264"
            assert container.streams.audio[0].codec_context.name == "aac"
            frames = sum(1 for p in container.demux(video) if p.size)
        assert frames == result["frames"], name
