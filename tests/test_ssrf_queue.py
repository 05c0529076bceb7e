"""The webhook address policy in a real worker on its default settings.

tests/test_ssrf.py covers the policy call by call; here a ``render-worker``
process (Dramatiq, real Redis, the S3 server) runs with
``RENDER_WEBHOOK_ALLOW_PRIVATE`` unset, as an operator deploys it, and a loopback
receiver stands in for an internal service: it must receive nothing, whether
the URL names an inside address literally (refused at intake) or through a
name that only resolves inside (refused at delivery).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from farm import SECRET, Farm, farm, wait_for

if TYPE_CHECKING:
    from services import RedisServer, S3Server, WebhookReceiver

pytestmark = pytest.mark.services


@pytest.fixture
def rig(redis_server: RedisServer, s3_server: S3Server, tmp_path: Path) -> Iterator[Farm]:
    with farm(redis_server, s3_server, tmp_path) as f:
        # The farm opts in to loopback webhooks for its other tests; this one runs on the default.
        f.settings_env.pop("RENDER_WEBHOOK_ALLOW_PRIVATE")
        assert f.settings().webhook_allow_private is False
        yield f


def _inside_name() -> tuple[str, str]:
    """This machine's host name and what it resolves to: a name, not a literal, that leads inside."""
    name = socket.gethostname()
    address = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)[0][4][0]
    return name, address


def test_a_worker_on_defaults_never_calls_an_inside_address(
    rig: Farm, media: dict[str, Path], webhook_receiver: WebhookReceiver
) -> None:
    name, address = _inside_name()
    assert not ipaddress.ip_address(address).is_global, f"{name} resolves to a public address {address}"
    rig.start_worker()
    uri = rig.upload(media["audio_wav"])

    literal = rig.message(uri, "m4a", webhook=webhook_receiver)  # http://127.0.0.1:<port>/hook
    by_name = rig.message(uri, "m4a")
    by_name["webhook"] = {"url": f"http://{name}:{webhook_receiver.port}/hook", "secret": SECRET}
    for msg in (literal, by_name):
        rig.submit(msg)

    # A literal inside address is the tenant's error: refused before any work.
    rec = rig.wait_record(literal["render_id"], timeout_s=60)
    assert (rec["state"], rec["error_code"]) == ("failed", "invalid_job"), rec
    assert "webhook.url" in rec["error_message"] and "127.0.0.1" in rec["error_message"]

    # A name passes intake (no DNS there); the render completes, and delivery
    # refuses the name once it resolves to an address that is not public.
    rec = rig.wait_record(by_name["render_id"], timeout_s=90)
    assert rec["state"] == "completed", rec
    # The record turns completed a moment before its event is queued, so wait for the delivery attempt itself.
    wait_for(lambda: "not a public address" in rig.logs(), 60, "the webhook delivery to be refused")
    wait_for(lambda: rig.pending(rig.webhook_queue) == 0, 60, "the webhook queue to drain")
    assert webhook_receiver.received == []
    assert rig.dead(rig.webhook_queue) == []  # given up at once, not retried into the dead-letter queue
