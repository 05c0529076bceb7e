"""Editor exports through the queue (issue 10): real Redis, the S3 server and a ``render-worker`` subprocess.

The worker's ffmpeg is a wrapper that answers the start-up checks and fails (loudly, and on record) for
anything else, so an export job that ran ffmpeg would fail and the log would show it.
"""

from __future__ import annotations

import stat
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import opentimelineio as otio
import pytest
from farm import farm, verified_events, wait_for

from fixtures import generate as gen
from worker.exports import FORMATS as EXPORTS
from worker.exports.file import export_file
from worker.ffmpeg import resolve_ffmpeg
from worker.plan import Segment

if TYPE_CHECKING:
    from services import RedisServer, S3Server, WebhookReceiver

pytestmark = pytest.mark.services

CUT = [(0.31, 0.95), (0.95, 1.62), (1.9, 2.333), (3.1, 3.85)]
ADAPTERS = {"xmeml": "fcp_xml", "fcpxml": "fcpx_xml", "edl": "cmx_3600", "otio": "otio_json"}


def guarded_ffmpeg(tmp_path: Path) -> tuple[Path, Path]:
    """An ffmpeg that runs only the worker's start-up checks; every other call is logged and exits 99."""
    log = tmp_path / "ffmpeg-calls.log"
    wrapper = tmp_path / "ffmpeg"
    real = resolve_ffmpeg(None)
    wrapper.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f'  *-version*|*anullsrc=d=0.01*) exec "{real}" "$@" ;;\n'
        "esac\n"
        f'echo "$*" >> "{log}"\n'
        'echo "ffmpeg must not run for an editor export: $*" >&2\n'
        "exit 99\n"
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper, log


def test_export_jobs_store_documents_and_never_run_ffmpeg(
    redis_server: RedisServer,
    s3_server: S3Server,
    webhook_receiver: WebhookReceiver,
    media: dict[str, Path],
    tmp_path: Path,
) -> None:
    wrapper, calls = guarded_ffmpeg(tmp_path)
    src = gen.make("tc2997", gen.cache_dir() or tmp_path / "media")
    with farm(redis_server, s3_server, tmp_path / "farm", ffmpeg_path=wrapper, nvenc="off") as rig:
        rig.start_worker()
        uri = rig.upload(src, "assets/a1/tc2997.mov")
        audio_uri = rig.upload(media["audio_wav"], "assets/a2/audio_wav.wav")
        jobs = [(uri, fmt, CUT) for fmt in EXPORTS] + [(audio_uri, "xmeml", CUT), (uri, "otio", None)]
        ids = []
        for job_uri, fmt, cut in jobs:
            message = rig.message(job_uri, fmt, segments=cut, webhook=webhook_receiver)
            rig.submit(message)
            ids.append(message["render_id"])
        records = {rid: rig.wait_record(rid, timeout_s=60) for rid in ids}
        keys = rig.objects()
        s3 = s3_server.client()
        for rid, (job_uri, fmt, cut) in zip(ids, jobs, strict=True):
            rec = records[rid]
            assert rec["state"] == "completed", rec
            assert rec["encoder"] == "none" and rec["attempts"] == 1
            ext, content_type = EXPORTS[fmt].extension, EXPORTS[fmt].content_type
            key = f"renders/{rid}/{rid}.{ext}"
            assert rec["output_key"] == key and keys.get(key) == rec["size_bytes"] > 0
            assert s3.head_object(Bucket=rig.output_bucket, Key=key)["ContentType"] == content_type
            status = rig.status(rid)
            with urllib.request.urlopen(status["download_url"], timeout=30) as resp:
                body = resp.read()
                # Named after the source (the stored object keeps the render id's key).
                name = f"{Path(job_uri).stem}.{'full' if cut is None else 'cut'}.{ext}"
                assert resp.headers["Content-Disposition"] == f'attachment; filename="{name}"'
            # The stored document is the one render-cli export writes for the same source, named as the job names it
            # (test_export.py holds that one against a real render, frame by frame).
            local = tmp_path / f"local-{rid}.{ext}"
            source = src if job_uri == uri else media["audio_wav"]
            segments = None if cut is None else [Segment(a, b) for a, b in cut]
            want = export_file(
                str(source), segments, fmt, str(local), source_name=Path(job_uri).name, source_url=job_uri
            )
            assert body == local.read_bytes()
            assert float(rec["duration_s"]) == pytest.approx(want.duration_s, abs=1e-6)
            doc = tmp_path / f"{rid}.{ext}"
            doc.write_bytes(body)
            kwargs = {"rate": 30000 / 1001} if fmt == "edl" else {}
            timeline = otio.adapters.read_from_file(str(doc), ADAPTERS[fmt], **kwargs)
            assert timeline is not None
        assert len(keys) == len(ids)

        wait_for(lambda: len(webhook_receiver.received) >= len(ids), 30, "the webhooks")
        events = verified_events(webhook_receiver, ids)
        assert sorted(events) == sorted(ids)
        assert all([e["type"] for e in evs] == ["render.completed"] for evs in events.values())
        assert not calls.exists(), f"an export ran ffmpeg: {calls.read_text()}"
        assert "ffmpeg must not run" not in rig.logs()

        # The control: a render of the same source on the same worker does reach the wrapper, and fails.
        control = rig.message(uri, "mp4", segments=CUT)
        rig.submit(control)
        rec = rig.wait_record(control["render_id"], timeout_s=60)
        assert rec["state"] == "failed" and rec["error_code"] == "encode_failed", rec
        assert calls.exists() and "-/filter_complex" in calls.read_text()
