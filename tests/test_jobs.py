"""Job intake applies the same checks as the code that later fetches and delivers."""

from __future__ import annotations

import pytest

from worker.errors import ErrorCode, InvalidJob
from worker.jobs import IntakeBug, parse_job

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


def assert_refused(raw: object, needle: str, **options: object) -> InvalidJob:
    """``raw`` is refused as invalid_job naming ``needle``, in a short message holding no secret."""
    with pytest.raises(InvalidJob) as info:
        parse_job(raw, **options)  # type: ignore[arg-type]
    err = info.value
    assert err.code is ErrorCode.INVALID_JOB and needle in err.message, err.message
    assert type(err) is InvalidJob, "refused by a deliberate check, not by the catch-all"
    assert len(err.message) <= 300 and SECRET[6:] not in err.message and "whsec_c" not in err.message
    return err


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"render_id": "rnd_1\n"}, "render_id must be an id"),
        ({"asset_id": "ast_1\n"}, "asset_id must be an id"),
        ({"cut_id": "cut_1\n"}, "cut_id must be an id"),
        ({"render_id": "x" * 129}, "render_id must be an id"),
        ({"version": True}, "version must be 1"),
        ({"version": 1.0}, "version must be 1"),
        ({"source": {"uri": "s3:"}}, "source.uri must look like s3://bucket/key"),
        ({"source": {"uri": "s3://media/../renders/rnd_1/rnd_1.mp4"}}, "'..' path segments"),
        ({"source": {"uri": "s3://media/a//b.mp4"}}, "empty"),
        ({"source": {"uri": ["s3://media/a.mp4"]}}, "source.uri must be a non-empty string"),
        ({"source": {"uri": "s3://media/a.mp4", "token": SECRET}}, "source has unknown field(s)"),
        ({"source": "s3://media/a.mp4"}, "source must be an object"),
        ({"output": {"format": "mp4", "resolution": {}}}, "output.resolution"),
        ({"output": {"format": ["mp4"]}}, "output.format"),
        ({"segments": [{"start": 0, "end": 10**400}]}, "segments[0].end must be a finite number"),
        ({"segments": [{"start": True, "end": 2}]}, "segments[0].start must be a finite number"),
        ({"segments": [[0, 1]]}, "segments[0] must be an object"),
        ({"webhook": {"url": "https://example.com/", "secret": SECRET, "note": SECRET}}, "webhook has unknown"),
        ({"webhook": {"url": "https://example.com/", "secret": SECRET, SECRET: 1}}, "webhook has unknown"),
        ({"webhook": {"url": "https://example.com/?k=" + SECRET, "secret": 7}}, "'whsec_' secret"),
        ({"webhook": {"url": "ftp://x/" + SECRET + "a" * 5000, "secret": SECRET}}, "webhook.url"),
        ({"webhook": {"url": ["https://example.com/"], "secret": SECRET}}, "webhook.url must be a string"),
        ({"webhook": {"url": "https://example.com/", "secret": SECRET + "A" * 1000}}, "webhook.secret is longer"),
        ({"webhook": SECRET}, "webhook must be null or an object"),
        ({SECRET: 1}, "unknown field(s)"),
    ],
)
def test_malformed_fields_are_refused_briefly_and_without_secrets(changes: dict, needle: str) -> None:
    assert_refused(message(**changes), needle)


def test_a_huge_value_is_quoted_only_in_part() -> None:
    err = assert_refused(message(asset_id="A" * 10_000_000), "asset_id")
    assert err.message.count("A") < 100


def test_source_buckets_allowlist_is_applied_at_intake() -> None:
    assert parse_job(message(), source_buckets=("media", "other")).source_uri == "s3://media/assets/a.mp4"
    err = assert_refused(message(), "bucket 'media' is not one", source_buckets=("uploads",))
    assert "uploads" not in err.message  # the allowlist is not told to tenants
    assert parse_job(message(), source_buckets=()).source_uri  # empty: any bucket


def test_private_webhooks_only_when_allowed() -> None:
    loopback = message(webhook={"url": "http://127.0.0.1:8080/hook", "secret": SECRET})
    assert_refused(loopback, "webhook.url")
    job = parse_job(loopback, allow_private_webhooks=True)
    assert job.webhook is not None and job.webhook.url == "http://127.0.0.1:8080/hook"


def test_a_value_that_breaks_a_check_still_ends_as_invalid_job(monkeypatch: pytest.MonkeyPatch) -> None:
    # The last line: a check that raises something else (a bug) must not strand the record.
    def broken(raw: object, **kwargs: object) -> None:
        raise TypeError("unhashable type: 'dict'")

    monkeypatch.setattr("worker.jobs.parse_segments", broken)
    with pytest.raises(IntakeBug) as info:
        parse_job(message())
    assert info.value.code is ErrorCode.INVALID_JOB and "TypeError" in info.value.message
