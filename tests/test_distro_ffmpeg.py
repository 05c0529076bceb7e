"""A render through the distribution's ffmpeg (Debian 12: 5.1), selected with RENDER_FFMPEG_PATH.

The worker's graphs go in with ``-/filter_complex FILE``, which only ffmpeg >= 7 knows; the images therefore use
the bundled ffmpeg (tests/test_deploy.py). Pointed at an older one, every command must refuse it up front as a
configuration error naming its version (issue 9, item 2), never start a render that then fails ``encode_failed``.
``make services`` installs Debian's ffmpeg so that CI runs this against the real package.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from services import service_missing

BIN = Path(sys.executable).parent


def _distro_ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        service_missing("the distribution's ffmpeg is not installed (apt-get install ffmpeg)")
    return str(path)


def test_distribution_ffmpeg_is_older_than_the_graphs_need() -> None:
    """Why the images do not use it: Debian's package cannot parse -/filter_complex."""
    line = subprocess.run(
        [_distro_ffmpeg(), "-hide_banner", "-version"], capture_output=True, text=True, timeout=30
    ).stdout.splitlines()[0]
    m = re.match(r"ffmpeg version n?(\d+)\.", line)
    assert m is not None, line
    if int(m.group(1)) >= 7:
        pytest.fail(f"this distribution ships {line!r}: it can run the graphs; update this test and the README")


def test_render_cli_refuses_the_distribution_ffmpeg_before_rendering(media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cut.m4a"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RENDER_", "AWS_"))}
    env["RENDER_FFMPEG_PATH"] = _distro_ffmpeg()
    done = subprocess.run(
        [str(BIN / "render-cli"), "render", str(media["audio_wav"]), "--format", "m4a", "-o", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and not out.exists()
    assert "encode_failed" not in done.stderr, done.stderr  # the operator's configuration, not a failed encode
    assert "RENDER_FFMPEG_PATH" in done.stderr and re.search(r"ffmpeg [4-6]\.\d", done.stderr), done.stderr
