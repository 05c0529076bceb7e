"""A non-editable install carries the presets and the console scripts."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_carries_presets_and_scripts(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("render_worker-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for fmt in ("mp4", "mov", "m4a", "mp3", "tiers"):
        assert f"worker/_presets/{fmt}.toml" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "render-cli = worker.cli:main" in scripts and "render-worker = worker.cli:worker_main" in scripts

    # Installed somewhere else, the package finds its presets inside itself, not in this checkout.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from worker.presets import presets_dir, all_presets;"
        "print(presets_dir(), len(all_presets()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(target)], check=True, capture_output=True, text=True, cwd=tmp_path
    ).stdout.split()
    assert out[0].startswith(str(target)) and out[1] == "8"
