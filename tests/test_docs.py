"""The docs match the code: settings, defaults and the two entry commands."""

from __future__ import annotations

import re
from pathlib import Path

from worker.settings import SETTINGS, Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    head = "\n".join(README.splitlines()[:8])
    assert "make demo" in head and "make test" in head


def test_every_setting_is_documented_with_its_default() -> None:
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(RENDER_[A-Z0-9_]+)` \| (.*?) \|", README, re.M)}
    for s in SETTINGS:
        assert s.env in rows, f"{s.env} missing from the README settings table"
        shown = rows[s.env].strip("`")
        want = (
            "(empty)"
            if s.default == ""
            else ("1" if s.default is True else "0" if s.default is False else str(s.default))
        )
        assert shown == want, f"{s.env}: README says {shown}, code says {want}"
    assert set(rows) == {s.env for s in SETTINGS}, "README documents settings that do not exist"


def test_settings_dataclass_and_table_agree() -> None:
    assert list(Settings.model_fields) == [s.name for s in SETTINGS]
    env = {s.env: str(s.default) for s in SETTINGS}
    env["RENDER_ALLOW_FILE_URIS"] = "yes"
    env["RENDER_URL_EXPIRY_S"] = "42"
    loaded = Settings.from_env(env)
    assert loaded.allow_file_uris is True and loaded.url_expiry_s == 42


def test_no_module_but_settings_reads_render_settings() -> None:
    """Only settings.py reads RENDER_*; other environment access is plumbing to child processes."""
    plumbing = {"PROMETHEUS_MULTIPROC_DIR", "MULTIPROC_ENV", "dramatiq_queue_prefetch", "PATH_INFO"}
    for path in (ROOT / "worker").rglob("*.py"):
        if path.name == "settings.py":
            continue
        for line in path.read_text().splitlines():
            if re.search(r"os\.environ|getenv\(|environ\.get\(", line) and not line.lstrip().startswith(
                ("#", "instead")
            ):
                assert "RENDER_" not in line, f"{path.name}: {line.strip()}"
                assert any(p in line for p in plumbing), f"{path.name} reads the environment: {line.strip()}"
