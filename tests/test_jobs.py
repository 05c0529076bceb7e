"""Job intake applies the same checks as the code that later fetches and delivers."""

from __future__ import annotations

import pytest

from worker.errors import ErrorCode, InvalidJob
from worker.jobs import parse_job

SECRET = "whsec_" + "cmVuZGVyLWZhcm0tcXVldWUtdGVzdHMtc2VjcmV0IQ=="


def message(**changes: object) -> dict:
    base = {
        "version": 1,
        "render_id": "rnd_1",
        "asset_id": "ast_1",
        "cut_id": None,
        "source": {"uri": "s3://media/assets/a.mp4"},
        "segments": None,
        "output": {"format": "mp4"},
        "webhook": {"url": "https://example.com/hooks", "secret": SECRET},
    }
    base.update(changes)
    return base


def test_a_valid_message_parses() -> None:
    job = parse_job(message())
    assert job.source_uri == "s3://media/assets/a.mp4" and job.webhook and job.webhook.secret == SECRET


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"source": {"uri": "s3://media"}}, "source.uri must look like s3://bucket/key"),
        ({"source": {"uri": "https://example.com/a.mp4"}}, "source.uri scheme"),
        ({"source": {"uri": "file://relative/a.mp4"}}, "source.uri"),
        ({"webhook": {"url": "https://exa mple.com/", "secret": SECRET}}, "webhook.url"),
        ({"webhook": {"url": "ftp://example.com/", "secret": SECRET}}, "webhook.url must use http or https"),
        ({"webhook": {"url": "https://example.com/", "secret": SECRET[6:]}}, "'whsec_' secret"),
        ({"webhook": {"url": "https://example.com/", "secret": "whsec_%%%"}}, "webhook.secret must be base64"),
        ({"webhook": {"url": "https://example.com/", "secret": "whsec_c2hvcnQ="}}, "shorter than 16 bytes"),
    ],
)
def test_bad_sources_and_webhooks_are_rejected_at_intake(changes: dict, needle: str) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_job(message(**changes))
    assert info.value.code is ErrorCode.INVALID_JOB and needle in info.value.message
