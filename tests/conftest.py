"""Shared fixtures: generated media, and the real services (see services.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from fixtures import generate as gen  # noqa: E402

pytest_plugins = ["services"]


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every generated fixture, by variant name (cached across runs with FIXTURES_CACHE=1)."""
    out = gen.cache_dir() or tmp_path_factory.mktemp("media")
    return gen.make_all(out)
