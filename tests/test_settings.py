"""Settings are range-checked when they are read, and a bad value names its variable.

A worker or ``render-cli`` that starts with a bad ``RENDER_*`` value must stop at
once with a configuration error, not start and then fail every job (or print a
traceback the first time a download URL is minted).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from worker.errors import ConfigError, ErrorCode, InvalidJob
from worker.settings import SETTINGS, URL_EXPIRY_RANGE, Settings

BAD_VALUES = [
    ("RENDER_URL_EXPIRY_S", "777600"),  # past the 7-day SigV4 limit
    ("RENDER_URL_EXPIRY_S", "0"),
    ("RENDER_URL_EXPIRY_S", "-5"),
    ("RENDER_URL_EXPIRY_S", "soon"),
    ("RENDER_S3_ADDRESSING_STYLE", "virtualhost"),
    ("RENDER_S3_CHECKSUM", "always"),
    ("RENDER_NVENC", "on"),
    ("RENDER_TIME_LIMIT_S", "-1"),
    ("RENDER_TIME_LIMIT_S", "nan"),
    ("RENDER_TIME_LIMIT_S", "inf"),
    ("RENDER_MAX_RETRIES", "-1"),
    ("RENDER_METRICS_PORT", "70000"),
    ("RENDER_MAX_SOURCE_PIXELS", "0"),
    ("RENDER_MAX_SEGMENTS", "0"),
    ("RENDER_WEBHOOK_ALLOW_PRIVATE", "maybe"),
    ("RENDER_OUTPUT_PREFIX", "tmp"),  # chunk pieces' prefix, expired by the lifecycle rule
    ("RENDER_OUTPUT_PREFIX", "/tmp/renders"),
]


@pytest.mark.parametrize(("env", "value"), BAD_VALUES)
def test_bad_value_is_a_config_error_naming_the_variable(env: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({env: value})
    # A configuration error is the operator's, never the tenant's.
    assert not isinstance(info.value, InvalidJob)
    assert info.value.code is ErrorCode.INTERNAL_ERROR
    assert env in info.value.message


def test_defaults_are_valid_and_limits_are_inclusive() -> None:
    Settings()  # every documented default passes its own check
    lo, hi = URL_EXPIRY_RANGE
    assert (lo, hi) == (1, 7 * 24 * 3600)
    assert Settings.from_env({"RENDER_URL_EXPIRY_S": str(lo)}).url_expiry_s == lo
    assert Settings.from_env({"RENDER_URL_EXPIRY_S": str(hi)}).url_expiry_s == hi
    with pytest.raises(ConfigError):
        Settings.from_env({"RENDER_URL_EXPIRY_S": str(hi + 1)})


def test_hand_built_settings_are_checked_too() -> None:
    """Code that builds Settings directly (tests, render-cli overrides) gets the same checks."""
    with pytest.raises(ConfigError, match="RENDER_URL_EXPIRY_S"):
        Settings(url_expiry_s=10**7)
    with pytest.raises(ConfigError, match="RENDER_NVENC"):
        Settings().replace(nvenc="yes")


def test_choices_are_named_in_the_message() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"RENDER_S3_ADDRESSING_STYLE": "virtualhost"})
    for allowed in ("path", "virtual", "auto"):
        assert allowed in info.value.message


def test_source_buckets_list() -> None:
    assert Settings().source_bucket_list == ()
    assert Settings(source_buckets=" media, uploads ,,").source_bucket_list == ("media", "uploads")


def test_every_checked_setting_has_a_valid_default() -> None:
    for s in SETTINGS:
        assert s.problem(s.default) is None, s.env


def _cli(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RENDER_")}
    clean.update(env)
    code = "import sys; from worker.cli import main; sys.argv = ['render-cli', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=clean, timeout=60)


@pytest.mark.parametrize(
    "args",
    [
        ["status", "rnd_x"],
        ["render", "missing.mp4", "--format", "mp4", "-o", "out.mp4"],
        ["graph", "missing.mp4", "--format", "mp4"],
    ],
)
def test_cli_stops_with_a_message_not_a_traceback(args: list[str]) -> None:
    done = _cli(args, RENDER_URL_EXPIRY_S="777600")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "RENDER_URL_EXPIRY_S" in done.stderr


def test_worker_refuses_to_start_on_a_bad_setting() -> None:
    code = "import sys; from worker.cli import worker_main; sys.argv = ['render-worker']; worker_main()"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RENDER_")}
    clean["RENDER_S3_ADDRESSING_STYLE"] = "virtualhost"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean, timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "RENDER_S3_ADDRESSING_STYLE" in done.stderr and "virtual" in done.stderr


def test_only_from_env_reads_the_environment_and_only_its_exact_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic-settings reads the variables (worker/settings.py); by hand a Settings is its defaults and
    arguments, and a variable spelt in another case is not a setting (it is warned about as unknown)."""
    monkeypatch.setenv("RENDER_QUEUE", "from-env")
    assert Settings().queue == "render"
    assert Settings.from_env().queue == "from-env"
    assert Settings.from_env({"render_queue": "lower", "RENDER_URL_EXPIRY_S": " 60 "}).queue == "render"
    assert Settings.from_env({"RENDER_URL_EXPIRY_S": " 60 "}).url_expiry_s == 60
    # Switches: the words operators write, and an empty value is off, as it always was.
    for raw, want in [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False), ("", False)]:
        assert Settings.from_env({"RENDER_ALLOW_FILE_URIS": raw}).allow_file_uris is want, raw
    with pytest.raises(ConfigError, match="RENDER_ALLOW_FILE_URIS='maybe' is not valid: allowed: 1/true"):
        Settings.from_env({"RENDER_ALLOW_FILE_URIS": "maybe"})
    with pytest.raises(ConfigError, match="RENDER_MAX_RETRIES='five' is not valid: allowed: 0 to 100"):
        Settings.from_env({"RENDER_MAX_RETRIES": "five"})
    with pytest.raises(ConfigError, match="RENDER_LEASE_TTL_S=inf must be a finite number"):
        Settings.from_env({"RENDER_LEASE_TTL_S": "inf"})
    with pytest.raises(ConfigError, match="no setting 'nope'"):
        Settings().replace(nope=1)
    with pytest.raises(ConfigError, match="RENDER_URL_EXPIRY_S=0"):
        Settings().replace(url_expiry_s=0)
