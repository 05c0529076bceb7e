"""Real services for the tests: Redis, S3 servers, a fault-injecting proxy, a webhook receiver.

Nothing here is a mock. Each service is a real server on a free loopback port,
started once per test session (the HTTP helpers once per test, they are
cheap) and torn down afterwards:

* :class:`RedisServer`     ``redis-server`` from PATH, no persistence.
* :class:`S3Server`        ``s3rver`` (npm, in ``tests/node_modules``; ``make services``
  installs it) or moto's server mode (``python -m moto.server``). s3rver refuses
  expired SigV4 presigned URLs and unknown access keys with 403 (it does not
  verify SigV4 signatures themselves); moto accepts all of that, so expiry and
  access-denied tests need s3rver.
* :class:`FaultProxy`      an HTTP proxy in front of an S3 server that can answer
  503, drop connections or stall, so retry paths run over the wire.
* :class:`WebhookReceiver` an ``http.server`` that records requests and answers
  from a script (``500, 500, 200``; or ``(200, 2.0)`` to answer after 2 s).

A missing binary skips the tests that need it locally and **fails** them under
``CI=true`` (see :func:`service_missing`), so CI cannot go green by skipping.

This module is a pytest plugin: ``pytest_plugins = ["services"]`` in
``tests/conftest.py`` (or in a test module) makes these fixtures available::

    redis_server      session   RedisServer
    s3_server         session   S3Server, s3rver backend
    moto_server       session   S3Server, moto backend
    s3_fault_proxy    function  FaultProxy in front of s3_server
    webhook_receiver  function  WebhookReceiver

Session services live in a small refcounted registry, so even importing the
fixture functions into several modules still starts each server once.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn, Protocol

import pytest

TESTS_DIR = Path(__file__).resolve().parent
S3RVER_BIN = TESTS_DIR / "node_modules" / ".bin" / "s3rver"
STARTUP_TIMEOUT_S = 20.0


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def service_missing(reason: str) -> NoReturn:
    """Skip locally, fail under CI: a CI run must never pass by skipping its service tests."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: service tests may not be skipped; run `make services`)", pytrace=False)
    pytest.skip(f"{reason} (run `make services` to install it)")


class ServiceMissing(RuntimeError):
    """A service binary is not installed; fixtures turn this into skip/fail."""


class ServiceFailed(RuntimeError):
    """A service was installed but did not come up; always an error, never a skip."""


def free_port() -> int:
    """A port that was free a moment ago (the server binding it retries on a rare collision)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceFailed(f"{what} exited with {proc.returncode}: {_tail(log_path)}")
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(0.05)
    raise ServiceFailed(f"{what} not ready after {STARTUP_TIMEOUT_S}s: {_tail(log_path)}")


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


class _Process:
    """A server subprocess with a scratch dir and a log file, stopped on exit."""

    name = "service"

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> _Process:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"test-{self.name}-"))
        log_path = self.workdir / "server.log"
        for _ in range(3):  # a fresh port on the rare collision with another process
            self.port = free_port()
            with log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    self._argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir
                )
            try:
                _wait_until(self._ready, self.proc, self.name, log_path)
                return self
            except ServiceFailed:
                self._kill()
                if not any(s in _tail(log_path).lower() for s in ("in use", "eaddrinuse")):
                    raise
        raise ServiceFailed(f"{self.name}: no free port after 3 tries")

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def stop(self) -> None:
        self._kill()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisServer(_Process):
    """``redis-server`` on a free port, in-memory only (no RDB, no AOF)."""

    name = "redis-server"

    def __init__(
        self, binary: str | None = None, *, password: str | None = None, appendonly_dir: Path | None = None
    ) -> None:
        """``password``: ``requirepass``; ``appendonly_dir``: persist with AOF there (a restart keeps the data)."""
        super().__init__()
        found = binary or shutil.which("redis-server")
        if not found:
            raise ServiceMissing("redis-server is not on PATH")
        self.binary = found
        self.password = password
        self.appendonly_dir = appendonly_dir

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.appendonly_dir is not None:
            argv += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.appendonly_dir)]
        else:
            argv += ["--appendonly", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    def _ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
            if self.password:
                sock.sendall(f"AUTH {self.password}\r\n".encode())
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    def halt(self) -> None:
        """Stop the server (SIGTERM: with AOF it writes its data out); :meth:`resume` starts it on the same port."""
        self._kill()

    def resume(self) -> None:
        assert self.workdir is not None and self.port
        log_path = self.workdir / "server.log"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self._argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir
            )
        _wait_until(self._ready, self.proc, self.name, log_path)

    def flush(self) -> None:
        """Empty every database (FLUSHALL), for tests that need a clean slate."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            if self.password:
                sock.sendall(f"AUTH {self.password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"FLUSHALL\r\n")
            sock.recv(64)


class S3Server(_Process):
    """An S3-compatible server: ``s3rver`` (npm) or moto's server mode.

    s3rver refuses expired presigned URLs and unknown access keys (403) but does
    not check SigV4 signatures; moto refuses none of these (see
    :attr:`enforces_expiry`). Both handle multipart uploads and both checksum
    modes over plain HTTP.
    """

    BACKENDS = ("s3rver", "moto")
    region = "us-east-1"

    def __init__(self, backend: str = "s3rver") -> None:
        super().__init__()
        if backend not in self.BACKENDS:
            raise ValueError(f"backend must be one of {self.BACKENDS}")
        self.backend = backend
        self.name = backend
        self._session: Any = None
        self._client: Any = None
        if backend == "s3rver":
            if not shutil.which("node"):
                raise ServiceMissing("node is not on PATH (s3rver needs Node.js)")
            if not S3RVER_BIN.exists():
                raise ServiceMissing(f"s3rver is not installed at {S3RVER_BIN} (cd tests && npm install)")
            # s3rver only knows its built-in access key (unknown keys get 403).
            self.access_key = self.secret_key = "S3RVER"
        else:
            self.access_key, self.secret_key = "testing", "testing"

    @property
    def enforces_expiry(self) -> bool:
        """Whether expired presigned URLs and unknown access keys are refused (403): s3rver yes, moto no."""
        return self.backend == "s3rver"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        if self.backend == "s3rver":
            data = str((self.workdir or Path(".")) / "data")
            return [str(S3RVER_BIN), "-d", data, "-a", "127.0.0.1", "-p", str(self.port), "--no-vhost-buckets"]
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def _ready(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=0.5)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
            return True  # any HTTP answer (s3rver says 403 to anonymous calls) means it is up
        finally:
            conn.close()

    def session(self) -> Any:
        """A boto3 session holding this server's credentials (tests never touch AWS_* variables).

        One session per server: boto3 loads the S3 service model once per session,
        which makes every later client cheap to build.
        """
        if self._session is None:
            import boto3

            self._session = boto3.session.Session(
                aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key, region_name=self.region
            )
        return self._session

    def client(self, endpoint_url: str | None = None) -> Any:
        """A plain boto3 client, for arranging and inspecting state independently of the code under test."""
        if endpoint_url is None and self._client is not None:
            return self._client
        from botocore.config import Config

        client = self.session().client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )
        if endpoint_url is None:
            self._client = client
        return client

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name by default, so tests sharing the server stay apart)."""
        name = name or f"t-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def settings(self, **overrides: Any) -> Any:
        """:class:`worker.settings.Settings` pointing at this server (``endpoint_url=`` to go via a proxy)."""
        from worker.settings import Settings

        values: dict[str, Any] = {
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": self.region,
            "s3_addressing_style": "path",
        }
        values.update(overrides)
        return Settings(**values)


# -- HTTP helpers -------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: Any = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client hangs up mid-request (timeouts do that on purpose); report the rest."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _HttpService:
    """A ThreadingHTTPServer on a free loopback port, served from a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.owner = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=type(self).__name__, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, by Content-Length or chunked transfer encoding."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
}


@dataclass
class ProxiedRequest:
    method: str
    path: str
    outcome: str  # "forwarded <status>", "injected <status>", "dropped"


class FaultProxy(_HttpService):
    """A real HTTP proxy in front of an S3 server that injects failures on demand.

    Point the code under test at :attr:`url` instead of the server. Requests
    are forwarded with their Host header untouched, so SigV4 signatures (made
    for the proxy's address) still verify upstream. Faults:

    * :meth:`fail_next` — answer the next *n* requests with an S3 error (503 SlowDown-style).
    * :attr:`down` — answer every request with 503 until cleared.
    * :meth:`drop_next` — close the next *n* connections without answering.
    * :attr:`delay_s` — stall each request this long before handling it (read timeouts).
    * :attr:`down_methods` — answer every request with one of these methods (``{"PUT", "POST"}``: uploads)
      with 503 until cleared, forwarding the rest: storage that reads but cannot write.

    :attr:`requests` records every request and what happened to it.
    """

    def __init__(self, upstream_url: str) -> None:
        parts = urllib.parse.urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.down = False
        self.down_status = 503
        self.delay_s = 0.0
        self.down_methods: set[str] = set()
        #: Called with (method, path) as each request arrives, before it is handled (a test's trigger).
        self.on_request: Callable[[str, str], None] | None = None
        self.requests: list[ProxiedRequest] = []
        self._fail: collections.deque[int] = collections.deque()
        self._drop = 0
        self._lock = threading.Lock()
        super().__init__(_ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, n: int, status: int = 503) -> None:
        with self._lock:
            self._fail.extend([status] * n)

    def drop_next(self, n: int) -> None:
        with self._lock:
            self._drop += n

    def reset(self) -> None:
        with self._lock:
            self._fail.clear()
            self._drop = 0
            self.down = False
            self.down_methods = set()
            self.delay_s = 0.0
            self.on_request = None
            self.requests.clear()

    def count(self, method: str | None = None) -> int:
        return sum(1 for r in self.requests if method is None or r.method == method)

    def _decide(self, method: str) -> tuple[str, int]:
        with self._lock:
            if self.down or method in self.down_methods:
                action = ("injected", self.down_status)
            elif self._drop:
                self._drop -= 1
                action = ("dropped", 0)
            elif self._fail:
                action = ("injected", self._fail.popleft())
            else:
                action = ("forwarded", 0)
            return action


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def _handle(self) -> None:
        proxy: FaultProxy = self.server.owner
        body = _read_body(self)
        if proxy.on_request is not None:
            proxy.on_request(self.command, self.path)
        if proxy.delay_s:
            time.sleep(proxy.delay_s)
        action, status = proxy._decide(self.command)
        if action == "dropped":
            proxy.requests.append(ProxiedRequest(self.command, self.path, "dropped"))
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if action == "injected":
            proxy.requests.append(ProxiedRequest(self.command, self.path, f"injected {status}"))
            xml = (
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>'
                + (b"SlowDown" if status == 503 else b"InternalError")
                + b"</Code><Message>injected by FaultProxy</Message></Error>"
            )
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(xml)
            return
        self._forward(proxy, body)

    def _forward(self, proxy: FaultProxy, body: bytes) -> None:
        conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:  # upstream gone (stopped at session end): answer like a real proxy
            proxy.requests.append(ProxiedRequest(self.command, self.path, "upstream error"))
            self.send_error(502, f"upstream error: {exc}")
            return
        finally:
            conn.close()
        proxy.requests.append(ProxiedRequest(self.command, self.path, f"forwarded {resp.status}"))
        self.send_response_only(resp.status, resp.reason)
        for name, value in resp.getheaders():
            lname = name.lower()
            if lname in _HOP_BY_HOP or (lname == "content-length" and self.command != "HEAD"):
                continue
            self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float = field(default_factory=time.time)


class WebhookReceiver(_HttpService):
    """A webhook endpoint that records every request and answers from a script.

    ``respond(500, 500, 200)`` answers the next three requests with those
    statuses; a step may be ``(status, delay_s)`` to answer late (to make the
    sender time out). When the script runs out, :attr:`default_status` (200)
    is used. :meth:`wait_for` blocks until *n* requests have arrived, for
    deliveries made from another thread or process.
    """

    def __init__(self) -> None:
        self.received: list[ReceivedRequest] = []
        self.default_status = 200
        self.location: str | None = None  # sent with a 3xx answer: where a client that follows redirects goes
        self._script: collections.deque[tuple[int, float]] = collections.deque()
        self._cond = threading.Condition()
        super().__init__(_ReceiverHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def respond(self, *steps: int | tuple[int, float]) -> None:
        with self._cond:
            for step in steps:
                self._script.append((step, 0.0) if isinstance(step, int) else (int(step[0]), float(step[1])))

    def wait_for(self, n: int, timeout_s: float = 10.0) -> list[ReceivedRequest]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received) >= n, timeout=timeout_s):
                raise AssertionError(f"expected {n} webhook requests within {timeout_s}s, got {len(self.received)}")
            return list(self.received)

    def _record(self, req: ReceivedRequest) -> tuple[int, float]:
        with self._cond:
            self.received.append(req)
            self._cond.notify_all()
            return self._script.popleft() if self._script else (self.default_status, 0.0)


class _ReceiverHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def _handle(self) -> None:
        receiver: WebhookReceiver = self.server.owner
        body = _read_body(self)
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, delay = receiver._record(ReceivedRequest(self.command, self.path, headers, body))
        if delay:
            time.sleep(delay)
        reply = b"ok" if 200 <= status < 300 else f"status {status}".encode()
        try:
            self.send_response(status)
            if 300 <= status < 400 and receiver.location:
                self.send_header("Location", receiver.location)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
        except OSError:
            pass  # the sender gave up (timed out) while we were stalling

    do_GET = do_POST = do_PUT = _handle


class DripReceiver:
    """A webhook receiver that never finishes its reply: it reads the request, then sends its status line and
    headers one byte every ``interval_s``, so no single read ever times out. Records each connection's
    (opened, closed) times in :attr:`connections`."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.connections: list[list[float]] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        record = [time.time(), 0.0]
        self.connections.append(record)
        reply = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000
        try:
            with conn:
                conn.settimeout(30)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                for byte in reply:
                    # Wait out the interval, but notice at once when the sender hangs up (its FIN reads as b"").
                    readable, _, _ = select.select([conn], [], [], self.interval_s)
                    if self._stop.is_set() or (readable and not conn.recv(4096)):
                        return
                    conn.sendall(bytes([byte]))
        except OSError:
            pass  # the sender hung up: what a deadline does
        finally:
            record[1] = time.time()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()

    def __enter__(self) -> DripReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- shared session services and fixtures ---------------------------------------------------


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_registry: dict[str, list[Any]] = {}  # name -> [service, refcount]
_registry_lock = threading.Lock()


@contextlib.contextmanager
def shared_service(name: str, factory: Callable[[], Any]) -> Iterator[Any]:
    """Start ``factory().start()`` once for all holders of ``name``; stop it when the last lets go.

    Turns :class:`ServiceMissing` into skip (locally) or fail (CI).
    """
    with _registry_lock:
        entry = _registry.get(name)
        if entry is None:
            try:
                service = factory()
            except ServiceMissing as exc:
                service_missing(str(exc))
            service.start()
            entry = _registry[name] = [service, 0]
        entry[1] += 1
    try:
        yield entry[0]
    finally:
        with _registry_lock:
            entry[1] -= 1
            if entry[1] == 0:
                _registry.pop(name, None)
                stoppable: _Stoppable = entry[0]
                stoppable.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the session; ``redis_server.url`` is its URL."""
    with shared_service("redis", RedisServer) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """The main S3 server: s3rver, which refuses expired presigned URLs and unknown access keys."""
    with shared_service("s3rver", lambda: S3Server("s3rver")) as server:
        yield server


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    """moto in server mode (a separate process): enforces no auth or expiry, but is always installable."""
    with shared_service("moto", lambda: S3Server("moto")) as server:
        yield server


@pytest.fixture
def s3_fault_proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A fresh :class:`FaultProxy` in front of ``s3_server``; use ``s3_server.settings(s3_endpoint_url=proxy.url)``."""
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A fresh :class:`WebhookReceiver`; its ``url`` accepts POSTs and answers 200 unless scripted."""
    with WebhookReceiver() as receiver:
        yield receiver


# -- a disk that really fills up ----------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` at ``path``: a worker's work dir that really fills up (needs root, as CI has)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        if in_ci():
            pytest.fail(f"cannot mount a tmpfs (CI runs as root): {done.stderr.decode()}")
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write a ballast file until the disk is full; returns it."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * block)
    finally:
        os.close(fd)
    return ballast
