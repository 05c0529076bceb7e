"""Webhook signing checked by the reference ``standardwebhooks`` verifier; delivery to a real HTTP receiver.

The receiver listens on loopback, which the address policy refuses unless
``allow_private`` (RENDER_WEBHOOK_ALLOW_PRIVATE) is set, so every delivery here
passes it explicitly. The policy itself is tested in test_ssrf.py.
"""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from worker.errors import InvalidJob
from worker.webhooks import (
    RENDER_COMPLETED,
    RENDER_FAILED,
    DeliveryResult,
    build_event,
    deliver_once,
    event_id,
    headers_for,
    secret_key,
    sign,
    validate_url,
)

if TYPE_CHECKING:
    from services import WebhookReceiver

pytest_plugins = ["services"]  # the service fixtures (conftest.py may load them too)

SECRET = "whsec_" + base64.b64encode(b"render-farm-test-secret-32bytes!").decode()
BODY = build_event(RENDER_COMPLETED, "rnd_01J", "ast_01J")


def test_signature_matches_the_spec_example() -> None:
    # The worked example of the Standard Webhooks specification.
    assert (
        sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b'{"test": 2432232314}',
        )
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_signature_verifies_with_the_reference_library() -> None:
    msg_id = event_id("rnd_01J", RENDER_COMPLETED)
    headers = headers_for(SECRET, msg_id, int(time.time()), BODY)
    assert Webhook(SECRET).verify(BODY, headers) == json.loads(BODY)
    # The un-prefixed form of the same secret is the same key (as the reference libraries treat it).
    assert Webhook(SECRET.removeprefix("whsec_")).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY.replace(b"rnd_01J", b"rnd_02J"), headers)
    stale = headers_for(SECRET, msg_id, int(time.time()) - 3600, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY, stale)  # the timestamp is signed, so replays age out


def test_bad_secrets_are_invalid_jobs() -> None:
    for bad in ("", "whsec_", "whsec_not base64!", "plain text secret"):
        with pytest.raises(InvalidJob, match="webhook.secret"):
            secret_key(bad)


def test_event_id_is_stable_per_render_and_type() -> None:
    assert event_id("rnd_1", RENDER_COMPLETED) == event_id("rnd_1", RENDER_COMPLETED)
    assert event_id("rnd_1", RENDER_COMPLETED).startswith("msg_")
    assert event_id("rnd_1", RENDER_COMPLETED) != event_id("rnd_1", RENDER_FAILED)
    assert event_id("rnd_1", RENDER_COMPLETED) != event_id("rnd_2", RENDER_COMPLETED)


def test_build_event_is_compact_contract_json() -> None:
    assert BODY == b'{"type":"render.completed","data":{"entity_id":"rnd_01J","asset_id":"ast_01J"}}'
    failed = build_event(RENDER_FAILED, "rnd_1", "ast_1", {"error_code": "source_not_found", "error_message": "gone"})
    assert json.loads(failed) == {
        "type": "render.failed",
        "data": {"entity_id": "rnd_1", "asset_id": "ast_1", "error_code": "source_not_found", "error_message": "gone"},
    }
    with pytest.raises(ValueError):
        build_event(RENDER_FAILED, "rnd_1", "ast_1", {"entity_id": "other"})
    with pytest.raises(ValueError):
        build_event("render.started", "rnd_1", "ast_1")


@pytest.mark.parametrize(
    "url", ["ftp://example.com/h", "file:///etc/passwd", "javascript:alert(1)", "example.com/hook", "http://", ""]
)
def test_non_http_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidJob, match="webhook.url"):
        validate_url(url)
    with pytest.raises(InvalidJob):
        deliver_once(url, SECRET, "msg_x", BODY, 1.0)


def test_http_and_https_urls_are_accepted() -> None:
    assert validate_url("https://example.com/hooks?x=1") == "https://example.com/hooks?x=1"
    assert validate_url("http://127.0.0.1:8080/h", allow_private=True)
    with pytest.raises(InvalidJob, match="public"):
        validate_url("http://127.0.0.1:8080/h")  # loopback only with the setting on


def _deliver(url: str, msg_id: str = "msg_x", body: bytes = BODY, timeout_s: float = 2.0) -> DeliveryResult:
    return deliver_once(url, SECRET, msg_id, body, timeout_s, allow_private=True)


# -- delivery over the wire --------------------------------------------------------------------


def test_delivered_request_is_signed_and_verifiable(webhook_receiver: WebhookReceiver) -> None:
    msg_id = event_id("rnd_01J", RENDER_COMPLETED)
    result = _deliver(webhook_receiver.url + "?tenant=7", msg_id)
    assert result.delivered and not result.retryable and result.status == 200

    (req,) = webhook_receiver.received
    assert req.method == "POST" and req.path == "/hook?tenant=7"
    assert req.body == BODY
    assert req.headers["content-type"] == "application/json"
    assert req.headers["webhook-id"] == msg_id
    assert req.headers["user-agent"].startswith("render-worker/")
    assert Webhook(SECRET).verify(req.body, req.headers) == json.loads(BODY)


def test_every_attempt_has_the_same_id_and_its_own_signature(webhook_receiver: WebhookReceiver) -> None:
    """The queue retries by calling deliver_once again: 5xx is retryable, and receivers dedupe on the id."""
    webhook_receiver.respond(500, 503, 200)
    msg_id = event_id("rnd_retry", RENDER_FAILED)
    body = build_event(RENDER_FAILED, "rnd_retry", "ast_1", {"error_code": "timeout", "error_message": "too slow"})
    results = [_deliver(webhook_receiver.url, msg_id, body) for _ in range(3)]
    assert [(r.delivered, r.retryable, r.status) for r in results] == [
        (False, True, 500),
        (False, True, 503),
        (True, False, 200),
    ]
    assert results[0].reason.startswith("HTTP 500") and results[1].reason.startswith("HTTP 503")
    assert len(webhook_receiver.received) == 3
    assert {r.headers["webhook-id"] for r in webhook_receiver.received} == {msg_id}
    for req in webhook_receiver.received:
        assert Webhook(SECRET).verify(req.body, req.headers)


def test_timeout_is_retryable(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.respond((200, 1.0))  # the answer comes too late
    first = _deliver(webhook_receiver.url, "msg_t", timeout_s=0.2)
    assert not first.delivered and first.retryable and first.status is None
    assert "timeout" in first.reason
    assert first.elapsed_s < 0.9


def test_connection_refused_is_retryable() -> None:
    from services import free_port

    result = _deliver(f"http://127.0.0.1:{free_port()}/hook", "msg_c", timeout_s=1.0)
    assert not result.delivered and result.retryable and result.status is None
    assert "Connection" in result.reason or "refused" in result.reason


def test_gone_stops_retrying(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.respond(410)
    result = _deliver(webhook_receiver.url, "msg_g")
    assert not result.delivered and not result.retryable and result.status == 410
    assert len(webhook_receiver.received) == 1


def test_redirects_are_not_followed(webhook_receiver: WebhookReceiver) -> None:
    """A 3xx is a failed attempt: following it would turn the POST into a GET without the event."""
    webhook_receiver.respond(302)
    result = _deliver(webhook_receiver.url, "msg_r")
    assert not result.delivered and result.retryable and result.status == 302
    assert [r.method for r in webhook_receiver.received] == ["POST"]
