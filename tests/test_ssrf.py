"""Webhook SSRF protection on real sockets: the address policy at intake and at delivery, DNS pinning, TLS.

A loopback receiver stands in for the inside of the network a worker runs in:
with the policy on (the default) it must receive nothing, whatever the
spelling of its address; with ``allow_private`` (RENDER_WEBHOOK_ALLOW_PRIVATE)
the same delivery arrives, which shows that each refused URL really pointed at
it. Names are resolved through an injected resolver, so ``hooks.example.test``
can point wherever a test needs without touching the system's DNS.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from worker import netguard
from worker.errors import InvalidJob
from worker.webhooks import MAX_URL_CHARS, RENDER_COMPLETED, build_event, deliver_once, validate_url

if TYPE_CHECKING:
    from services import WebhookReceiver

pytest_plugins = ["services"]

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
SECRET = "whsec_" + base64.b64encode(b"render-farm-ssrf-test-secret-32!").decode()
BODY = build_event(RENDER_COMPLETED, "rnd_ssrf", "ast_ssrf")
NAME = "hooks.example.test"

#: Spellings of non-public hosts, and whether a connection to them reaches a
#: receiver on 127.0.0.1 (those get a positive control with allow_private).
FORBIDDEN_HOSTS: dict[str, bool] = {
    "127.0.0.1": True,
    "2130706433": True,  # decimal
    "0x7f000001": True,  # hex
    "0177.0.0.1": True,  # octal
    "127.1": True,  # inet_aton shorthand
    "0x7f.1": True,
    "017700000001": True,  # octal, one number
    "127.0.0.1.": False,  # trailing dot (getaddrinfo does not resolve it, intake refuses it anyway)
    "0.0.0.0": True,  # connects to the local host on Linux
    "0": True,
    "localhost": True,
    "LOCALHOST": True,
    "hooks.localhost": False,
    "[::ffff:127.0.0.1]": True,  # IPv4-mapped: a v6 socket reaches the v4 listener
    "[::ffff:7f00:1]": True,
    "[::127.0.0.1]": False,  # IPv4-compatible
    "[::1]": False,
    "[::]": False,
    "169.254.169.254": False,  # cloud metadata
    "10.0.0.1": False,
    "172.16.0.1": False,
    "192.168.1.1": False,
    "100.64.0.1": False,
    "192.0.2.1": False,
    "198.18.0.1": False,
    "224.0.0.1": False,
    "255.255.255.255": False,
    "240.0.0.1": False,
    "[fe80::1]": False,
    "[fc00::1]": False,
    "[fd12:3456::1]": False,
    "[fec0::1]": False,
    "[ff02::1]": False,
    "[2001:db8::1]": False,
    "[64:ff9b::7f00:1]": False,  # NAT64 of 127.0.0.1
    "[64:ff9b::a9fe:a9fe]": False,  # NAT64 of 169.254.169.254
    "[2002:a00:1::1]": False,  # 6to4 of 10.0.0.1
}


class Resolver:
    """An injected resolver: answers ``answers[i]`` on the i-th call (the last one from then on) and counts calls."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return list(self.answers[min(len(self.calls), len(self.answers)) - 1])


def _url(host: str, port: int, path: str = "/hook", scheme: str = "http") -> str:
    return f"{scheme}://{host}:{port}{path}"


def _deliver(url: str, **kwargs: Any) -> Any:
    kwargs.setdefault("timeout_s", 2.0)
    timeout = kwargs.pop("timeout_s")
    return deliver_once(url, SECRET, "msg_ssrf", BODY, timeout, **kwargs)


# -- the address policy ------------------------------------------------------------------------


@pytest.mark.parametrize("host", list(FORBIDDEN_HOSTS))
def test_forbidden_hosts_are_refused_at_intake(host: str) -> None:
    with pytest.raises(InvalidJob, match="webhook.url") as err:
        validate_url(_url(host, 8080))
    assert err.value.code.value == "invalid_job"
    assert validate_url(_url(host, 8080), allow_private=True)  # the setting lets on-premise receivers through


@pytest.mark.parametrize("host", list(FORBIDDEN_HOSTS))
def test_forbidden_hosts_are_refused_at_delivery(host: str, webhook_receiver: WebhookReceiver) -> None:
    url = _url(host, webhook_receiver.port)
    result = _deliver(url, timeout_s=1.0)
    assert not result.delivered and not result.retryable and result.status is None
    assert "public" in result.reason and SECRET not in result.reason
    assert webhook_receiver.received == []
    if FORBIDDEN_HOSTS[host]:
        # Positive control: this spelling does lead to the receiver once the policy is lifted.
        allowed = _deliver(url, allow_private=True)
        assert allowed.delivered, allowed.reason
        assert len(webhook_receiver.received) == 1


@pytest.mark.parametrize(
    ("spelling", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
    ],
)
def test_literals_are_read_in_every_spelling_a_resolver_accepts(spelling: str, address: str) -> None:
    assert netguard.parse_literal(spelling) == ipaddress.ip_address(address)
    if not spelling.startswith("[") and "%" not in spelling and not spelling.endswith("."):
        # The policy sees what getaddrinfo (and so any HTTP client) would connect to.
        assert netguard.resolve(spelling, 80) == [str(ipaddress.ip_address(address))]


@pytest.mark.parametrize("name", ["example.com", "hooks.example.test", "1.2.3.4.example.com", "0x7g.1", "1.2.3.4 x"])
def test_names_are_not_literals(name: str) -> None:
    assert netguard.parse_literal(name) is None


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1"],
)
def test_public_addresses_pass(address: str) -> None:
    assert netguard.is_public(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    assert validate_url(_url(host, 443, scheme="https"))


def test_names_pass_intake_without_dns() -> None:
    # Names are checked at delivery against what they resolve to then; intake does no lookup.
    assert validate_url("https://hooks.example.test/h?x=1")
    assert validate_url("https://name-that-does-not-resolve.invalid/h")


def test_url_length_is_capped() -> None:
    base = "https://example.com/"
    assert validate_url(base + "a" * (MAX_URL_CHARS - len(base)))
    with pytest.raises(InvalidJob, match="longer than"):
        validate_url(base + "a" * (MAX_URL_CHARS - len(base) + 1))
    with pytest.raises(InvalidJob, match="longer than") as err:
        validate_url(base + "a" * 10_000_000)
    assert len(err.value.message) < 200


@pytest.mark.parametrize(
    "url",
    [
        "https://user:hunter2@example.com/h",
        "https://user@example.com/h",
        "https://:whsec_c2VjcmV0@example.com/h",
        "http://example.com\\@127.0.0.1/h",
    ],
)
def test_credentials_in_the_url_are_refused(url: str) -> None:
    with pytest.raises(InvalidJob, match="credentials") as err:
        validate_url(url, allow_private=True)
    assert "hunter2" not in err.value.message and "whsec_" not in err.value.message


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/h\r\nX-Injected: 1",
        "https://example.com/\x00",
        "https://example.com/ h",
        "https://exämple.com/h",
        "https://example.com/h\t",
        "https://exa%6dple.com/h",
        "https://example.com:0/h",
        "https://example.com:99999/h",
        "https://[not-v6]/h",
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidJob, match="webhook.url"):
        validate_url(url, allow_private=True)


# -- delivery: resolve once, check every answer, connect to what was checked ---------------------


def test_a_name_resolving_to_loopback_is_refused_then_allowed_keeping_the_host_header(
    webhook_receiver: WebhookReceiver,
) -> None:
    url = _url(NAME, webhook_receiver.port)
    resolver = Resolver(["127.0.0.1"])
    refused = _deliver(url, resolve=resolver)
    assert not refused.delivered and not refused.retryable and refused.status is None
    assert "not a public address" in refused.reason and NAME in refused.reason and "127.0.0.1" in refused.reason
    assert webhook_receiver.received == [] and resolver.calls == [(NAME, webhook_receiver.port)]

    allowed = _deliver(url, resolve=Resolver(["127.0.0.1"]), allow_private=True)
    assert allowed.delivered, allowed.reason
    (req,) = webhook_receiver.received
    # The connection went to the checked address, the request still names the URL's host.
    assert req.headers["host"] == f"{NAME}:{webhook_receiver.port}"
    assert req.path == "/hook"


def test_one_forbidden_answer_among_public_ones_refuses_the_name(webhook_receiver: WebhookReceiver) -> None:
    resolver = Resolver(["93.184.215.14", "127.0.0.1"])  # refused before any connection is tried
    result = _deliver(_url(NAME, webhook_receiver.port), resolve=resolver)
    assert not result.delivered and not result.retryable and "127.0.0.1" in result.reason
    assert webhook_receiver.received == []


def test_a_name_that_does_not_resolve_is_retryable() -> None:
    def fails(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    result = _deliver(_url(NAME, 443, scheme="https"), resolve=fails)
    assert not result.delivered and result.retryable and "resolve" in result.reason


class _Events:
    """Socket audit events (connect and getaddrinfo) recorded while active: real calls, nothing mocked."""

    installed = False
    active: list[tuple[str, Any]] | None = None

    @classmethod
    def _hook(cls, event: str, args: tuple[Any, ...]) -> None:
        log = cls.active
        if log is not None and event in ("socket.connect", "socket.getaddrinfo"):
            log.append((event, args[1] if event == "socket.connect" else args[0]))

    @classmethod
    def record(cls) -> list[tuple[str, Any]]:
        if not cls.installed:
            sys.addaudithook(cls._hook)  # audit hooks cannot be removed: install once, record only when asked
            cls.installed = True
        cls.active = []
        return cls.active

    @classmethod
    def stop(cls) -> None:
        cls.active = None


def test_dns_rebinding_cannot_switch_the_address(webhook_receiver: WebhookReceiver) -> None:
    """The name resolves once per attempt, and the connection goes to that checked answer.

    The resolver answers 127.0.0.1 (the receiver) first and 127.0.0.2 (an
    "internal" service on the same port) afterwards, as a rebinding DNS server
    would. Any second lookup, through the resolver or the system's DNS, shows.
    """
    with _Server(("127.0.0.2", webhook_receiver.port)) as internal:
        resolver = Resolver(["127.0.0.1"], ["127.0.0.2"])
        events = _Events.record()
        try:
            result = _deliver(_url(NAME, webhook_receiver.port), resolve=resolver, allow_private=True)
        finally:
            _Events.stop()
        assert result.delivered, result.reason
        assert resolver.calls == [(NAME, webhook_receiver.port)]
        assert len(webhook_receiver.received) == 1 and internal.requests == []
        assert [a for e, a in events if e == "socket.connect"] == [("127.0.0.1", webhook_receiver.port)]
        assert not [a for e, a in events if e == "socket.getaddrinfo" and a == NAME]


# -- the receiver's reply ---------------------------------------------------------------------


def test_the_reply_body_never_reaches_the_result() -> None:
    marker = "INTERNAL-SECRET-MARKER-7f3a"
    with _Server(("127.0.0.1", 0), status=500, body=(marker + " root:x:0:0\n") * 50) as server:
        result = _deliver(_url(NAME, server.port), resolve=Resolver(["127.0.0.1"]), allow_private=True)
    assert not result.delivered and result.retryable and result.status == 500
    assert marker not in result.reason and "root:" not in result.reason
    assert result.reason == "HTTP 500 Internal Server Error"


def test_the_reason_phrase_is_short_and_printable() -> None:
    phrase = "Nope \x01\x1b[31m" + "x" * 500
    with _Server(("127.0.0.1", 0), status=503, phrase=phrase) as server:
        result = _deliver(_url(NAME, server.port), resolve=Resolver(["127.0.0.1"]), allow_private=True)
    assert result.status == 503 and result.retryable
    assert result.reason.startswith("HTTP 503 Nope")
    assert len(result.reason) <= len("HTTP 503 ") + 60
    assert all(" " <= c <= "~" for c in result.reason)


def test_redirects_to_inside_are_not_followed() -> None:
    with (
        _Server(("127.0.0.1", 0)) as inside,
        _Server(("127.0.0.1", 0), status=307, location=f"http://127.0.0.1:{inside.port}/admin") as outside,
    ):
        result = _deliver(_url(NAME, outside.port), resolve=Resolver(["127.0.0.1"]), allow_private=True)
        assert not result.delivered and result.retryable and result.status == 307
        assert len(outside.requests) == 1 and inside.requests == []


# -- HTTPS: SNI and certificate verification by name while connecting by address ---------------


def test_https_sends_sni_and_verifies_the_name(tls: _Tls) -> None:
    with _Server(("127.0.0.1", 0), tls=tls.server_context(NAME)) as server:
        url = _url(NAME, server.port, scheme="https")
        result = _deliver(url, resolve=Resolver(["127.0.0.1"]), allow_private=True, ssl_context=tls.client_context())
        assert result.delivered, result.reason
        assert server.sni == [NAME]
        (req,) = server.requests
        assert req["host"] == f"{NAME}:{server.port}"

        # The policy comes first: without the setting the handshake never starts.
        refused = _deliver(url, resolve=Resolver(["127.0.0.1"]), ssl_context=tls.client_context())
        assert not refused.delivered and not refused.retryable and server.sni == [NAME]


def test_https_refuses_a_certificate_for_another_name(tls: _Tls) -> None:
    with _Server(("127.0.0.1", 0), tls=tls.server_context("other.example.test")) as server:
        url = _url(NAME, server.port, scheme="https")
        result = _deliver(url, resolve=Resolver(["127.0.0.1"]), allow_private=True, ssl_context=tls.client_context())
        assert not result.delivered and result.retryable and result.status is None
        assert "certificate" in result.reason
        assert server.requests == []


def test_https_refuses_an_untrusted_certificate(tls: _Tls) -> None:
    with _Server(("127.0.0.1", 0), tls=tls.server_context(NAME)) as server:
        # The default context (system CAs) does not trust the test CA.
        result = _deliver(_url(NAME, server.port, scheme="https"), resolve=Resolver(["127.0.0.1"]), allow_private=True)
        assert not result.delivered and result.retryable and "certificate" in result.reason
        assert server.requests == []


# -- the NetworkPolicy ----------------------------------------------------------------------


def test_network_policy_limits_the_worker_pods_egress() -> None:
    (policy,) = [d for d in yaml.safe_load_all((K8S / "networkpolicy.yaml").read_text()) if d]
    assert policy["kind"] == "NetworkPolicy" and policy["apiVersion"] == "networking.k8s.io/v1"
    spec = policy["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}

    selector = spec["podSelector"]["matchLabels"]
    for name in ("deployment-cpu.yaml", "deployment-gpu.yaml"):
        deployment = yaml.safe_load((K8S / name).read_text())
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items(), name

    # Ingress: the metrics port only.
    (ingress,) = spec["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [9191]

    # Egress to addresses outside the cluster: web ports only, and never the inside ranges.
    inside = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8")]
    inside += [ipaddress.ip_network(n) for n in ("100.64.0.0/10", "169.254.0.0/16")]
    metadata = ipaddress.ip_address("169.254.169.254")
    blocks = [peer["ipBlock"] for rule in spec["egress"] for peer in rule.get("to", []) if "ipBlock" in peer]
    assert any(b["cidr"] == "0.0.0.0/0" for b in blocks)
    for rule in spec["egress"]:
        peers = rule.get("to")
        assert peers, "an egress rule without 'to' allows every destination"
        v4 = [p["ipBlock"] for p in peers if "ipBlock" in p and ":" not in p["ipBlock"]["cidr"]]
        for block in v4:
            assert {p["port"] for p in rule["ports"]} <= {80, 443}
            excepted = [ipaddress.ip_network(n) for n in block.get("except", [])]
            cidr = ipaddress.ip_network(block["cidr"])
            for net in inside:
                if net.overlaps(cidr):
                    assert any(net.subnet_of(e) for e in excepted), f"{net} is reachable through {cidr}"
            assert any(metadata in e for e in excepted)
        for peer in peers:
            if "ipBlock" in peer and ":" in peer["ipBlock"]["cidr"]:
                excepted6 = {ipaddress.ip_network(n) for n in peer["ipBlock"].get("except", [])}
                assert {ipaddress.ip_network(n) for n in ("fc00::/7", "fe80::/10", "::1/128")} <= excepted6
    dns = [r for r in spec["egress"] if {p["port"] for p in r.get("ports", [])} == {53}]
    assert dns and {p["protocol"] for p in dns[0]["ports"]} == {"UDP", "TCP"}

    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "networkpolicy.yaml" in kustomization["resources"]


# -- helpers: a small receiver (optionally TLS, optionally on another loopback address), test PKI ---


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        owner = self.server.owner
        owner.requests.append({k.lower(): v for k, v in self.headers.items()})
        reply = owner.body.encode()
        self.send_response(owner.status, owner.phrase)
        if owner.location:
            self.send_header("Location", owner.location)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: _Server

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that rejects our certificate hangs up mid-handshake, on purpose


class _Server:
    """An HTTP(S) receiver on ``address`` recording request headers, TLS server names, and answering as told."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        status: int = 200,
        phrase: str | None = None,
        body: str = "ok",
        location: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.status, self.phrase, self.body, self.location = status, phrase, body, location
        self.requests: list[dict[str, str]] = []
        self.sni: list[str | None] = []
        self._http = _HTTPServer(address, _Handler)
        self._http.owner = self
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
            self._http.socket = tls.wrap_socket(self._http.socket, server_side=True)
        self.port = int(self._http.server_address[1])
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> _Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)


class _Tls:
    """A throwaway CA and certificates it signs, made with ``cryptography`` (installed with moto)."""

    def __init__(self, root: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ser, self._ec, self._oid = x509, hashes, serialization, ec, NameOID
        self.root = root
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "render-worker test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_pem = self.ca_cert.public_bytes(serialization.Encoding.PEM).decode()

    def server_context(self, dns_name: str) -> ssl.SSLContext:
        x509, ec = self._x509, self._ec
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(self._oid.COMMON_NAME, dns_name)]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, self._hashes.SHA256())
        )
        pem = self._ser
        cert_path = self.root / f"{dns_name}.crt"
        key_path = self.root / f"{dns_name}.key"
        cert_path.write_bytes(cert.public_bytes(pem.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(pem.Encoding.PEM, pem.PrivateFormat.PKCS8, pem.NoEncryption())  # test-only key
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """The default, verifying context, trusting the test CA instead of the system's."""
        return ssl.create_default_context(cadata=self.ca_pem)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Tls]:
    pytest.importorskip("cryptography")
    yield _Tls(tmp_path_factory.mktemp("tls"))
