"""A non-editable install carries the presets and the console scripts; dependency floors, pins and the venv agree."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

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


# --- dependency versions: what is declared, what is pinned, what is tested -------------------------------------

CONSTRAINTS = ROOT / "constraints.txt"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not an exact pin"
            pins[_norm(name)] = version
    return pins


def _runtime_closure() -> set[str]:
    """Every distribution the installed render-worker needs at run time (its [project] dependencies, transitively)."""
    seen: set[str] = set()
    todo = [Requirement("render-worker")]
    while todo:
        req = todo.pop()
        dist = importlib.metadata.distribution(req.name)
        for raw in dist.requires or []:
            dep = Requirement(raw)
            if dep.marker and not any(dep.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                continue  # an extra nobody asked for (render-worker[test], dramatiq[rabbitmq], ...)
            key = _norm(dep.name)
            if key not in seen:
                seen.add(key)
                todo.append(dep)
    return seen


def test_constraints_pin_every_runtime_dependency_exactly() -> None:
    pins = _pins()
    closure = _runtime_closure()
    assert {"av", "boto3", "botocore", "dramatiq", "redis", "imageio-ffmpeg"} <= closure
    assert closure - set(pins) == set(), "runtime dependencies the images would install unpinned"
    assert set(pins) - closure == set(), "pins of packages the worker no longer needs"


def test_the_venv_runs_the_pinned_versions() -> None:
    """`make test` installs with -c constraints.txt: the suite's results hold for exactly what the images install."""
    wrong = {n: (v, importlib.metadata.version(n)) for n, v in _pins().items() if importlib.metadata.version(n) != v}
    assert not wrong, f"pinned vs installed: {wrong} (regenerate constraints.txt from the tested venv)"


def test_declared_minimums_are_tested_versions() -> None:
    """A floor below what CI runs is a promise nobody tested (av 14.0 failed every job, boto3 1.34 died at import)."""
    pins = _pins()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert declared
    for raw in declared:
        req = Requirement(raw)
        pinned = Version(pins[_norm(req.name)])
        assert req.specifier.contains(pinned), f"{raw} excludes the pinned {pinned}"
        floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        assert floors, f"{raw}: no minimum version"
        assert floors[0].release[:2] == pinned.release[:2], f"{raw}: floor is not the tested {pinned} (major.minor)"
