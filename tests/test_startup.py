"""A worker starts only on a configuration it can work with, and ``worker.actors`` builds nothing on import.

Each bad setting, an ffmpeg too old for the worker's graphs and missing S3
credentials stop ``render-worker`` before Dramatiq starts, with a message naming
what to fix and no traceback: a worker that reported ready on such a
configuration would fail (or dead-letter) every job it took.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from farm import BIN, WorkerProcess, farm, wait_for

from worker import ffmpeg

if TYPE_CHECKING:
    from services import RedisServer, S3Server

#: (variable, bad value, words the message must carry: the variable and what is allowed).
BAD_SETTINGS = [
    ("RENDER_S3_ADDRESSING_STYLE", "virtualhost", ["path", "virtual", "auto"]),
    ("RENDER_URL_EXPIRY_S", "777600", ["1 to 604800"]),
    ("RENDER_TIME_LIMIT_S", "-1", ["1 to 604800"]),
    ("RENDER_TIME_LIMIT_S", "nan", ["finite"]),
    ("RENDER_MAX_RETRIES", "-1", ["0 to 100"]),
    ("RENDER_METRICS_PORT", "70000", ["0 to 65535"]),
    ("RENDER_BROKER_HEARTBEAT_TIMEOUT_MS", "100", ["5000 to 3600000"]),
    ("RENDER_LEASE_TTL_S", "0", ["1 to 3600"]),
    ("RENDER_QUEUE", "render jobs", ["letters, digits"]),
    ("RENDER_REDIS_URL", "localhost:6379", ["redis"]),
    ("RENDER_NVENC", "on", ["auto", "off"]),
    ("RENDER_ALLOW_FILE_URIS", "maybe", ["true", "false"]),
]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without RENDER_*/AWS_*, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RENDER_", "AWS_"))}
    env.update(extra)
    return env


def render_worker(env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "render-worker")], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


@pytest.mark.parametrize(("name", "value", "allowed"), BAD_SETTINGS)
def test_render_worker_refuses_a_bad_setting(name: str, value: str, allowed: list[str]) -> None:
    done = render_worker(clean_env(**{name: value}))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert name in done.stderr and all(word in done.stderr for word in allowed), done.stderr
    assert "[internal_error]" in done.stderr and "invalid_job" not in done.stderr  # the operator's, not a job's


def test_an_unknown_render_variable_is_warned_about() -> None:
    env = clean_env(RENDER_QUEU="render", RENDER_MAX_RETRYS="3")
    done = subprocess.run(
        [str(BIN / "render-cli"), "presets"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if "unknown settings" in line]
    assert warning and "RENDER_MAX_RETRYS" in warning[0] and "RENDER_QUEU" in warning[0], done.stderr


def old_ffmpeg(tmp_path: Path) -> str:
    """The distribution's ffmpeg when it is older than 7 (Debian 12 ships 5.1), else a script that says it is."""
    system = shutil.which("ffmpeg")
    if system:
        _, found = ffmpeg.version(system)
        if found is not None and found < ffmpeg.MIN_VERSION:
            return system
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\necho 'ffmpeg version 5.1.6-0+deb12u1 Copyright (c) 2000-2024 the FFmpeg developers'\n")
    fake.chmod(0o755)
    return str(fake)


def test_render_worker_refuses_an_ffmpeg_too_old_for_its_graphs(tmp_path: Path) -> None:
    path = old_ffmpeg(tmp_path)
    done = render_worker(clean_env(RENDER_FFMPEG_PATH=path))
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert "RENDER_FFMPEG_PATH" in done.stderr and "7.0 or newer" in done.stderr
    assert re.search(r"ffmpeg [4-6]\.\d", done.stderr), done.stderr  # the version it found, named


def test_render_worker_refuses_to_start_without_s3_credentials(tmp_path: Path) -> None:
    env = clean_env(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    done = render_worker(env)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert "no S3 credentials" in done.stderr and "AWS_ACCESS_KEY_ID" in done.stderr


def test_importing_the_actors_module_builds_nothing_and_reads_no_setting() -> None:
    # A bad setting in the environment: reading settings would raise, building a broker would connect.
    code = (
        "import dramatiq.broker as b, worker.actors as a\n"
        "assert a._runtime is None and b.global_broker is None, (a._runtime, b.global_broker)\n"
        "print('clean')\n"
    )
    env = clean_env(RENDER_URL_EXPIRY_S="777600", RENDER_REDIS_URL="redis://127.0.0.1:1/0")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "clean", done.stderr


@pytest.mark.services
def test_plain_dramatiq_worker_actors_still_runs_jobs(
    redis_server: RedisServer, s3_server: S3Server, media: dict[str, Path], tmp_path: Path
) -> None:
    """``dramatiq worker.actors`` (no ``:setup``) is the documented alternative to render-worker."""
    with farm(redis_server, s3_server, tmp_path) as rig:
        argv = [str(BIN / "dramatiq"), "worker.actors", "-p", "1", "-t", "1", "--queues", rig.queue, rig.webhook_queue]
        worker = WorkerProcess(argv, {**rig.env(), "dramatiq_queue_prefetch": "1"}, tmp_path / "dramatiq.log")
        rig.workers.append(worker)
        worker.wait_ready()
        rid = rig.enqueue(rig.upload(media["audio_wav"]), "m4a", segments=[(1.0, 2.0)])
        rec: dict[str, Any] = rig.wait_record(rid, timeout_s=60)
        assert rec["state"] == "completed", rec
        wait_for(lambda: rig.pending() == 0, 30, "the render queue to drain")
