"""Storage against real S3 servers (s3rver and moto over HTTP) and the in-memory twin.

Interface-level tests run on every backend, so ``MemoryStorage`` is held to the
same contract as ``S3Storage``. Server-specific behaviour (presigned-URL expiry,
multipart, checksum headers, faults on the wire) runs against the servers.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from worker.errors import ConfigError, ErrorCode, InvalidJob, SourceError, StorageError, TransferStopped
from worker.settings import Settings
from worker.storage import MemoryStorage, S3Storage, Storage, output_key, parse_uri, safe_filename, with_retries
from worker.storage.s3 import build_client

if TYPE_CHECKING:
    from services import FaultProxy, S3Server

pytest_plugins = ["services"]  # the service fixtures (conftest.py may load them too)

MiB = 1024 * 1024
# S3 refuses parts under 5 MiB (except the last), so this is the smallest real multipart setup.
PART = 5 * MiB
FAST_RETRIES: dict[str, Any] = {"attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.02}


@dataclass
class Backend:
    """One storage under test plus independent ways to arrange and inspect its state."""

    name: str
    storage: Storage
    source_bucket: str
    seed: Callable[[str, bytes], str]  # key, data -> source URI
    read_output: Callable[[str], tuple[bytes, str]]  # key -> (data, content type)
    seed_elsewhere: Callable[[str, bytes], str]  # key, data -> URI of a source in another bucket
    sent: list[Any] = field(default_factory=list)  # HTTP requests the storage sent (S3 only)

    def requests(self) -> int:
        """How many requests/primitive calls the storage made: proof of (no) retries."""
        if isinstance(self.storage, MemoryStorage):
            return sum(self.storage.calls.values())
        return len(self.sent)


def s3_backend(server: S3Server, *, fenced: bool = False, **settings: Any) -> Backend:
    """S3Storage on ``server``; ``fenced`` sets RENDER_SOURCE_BUCKETS to its own source bucket (and a decoy)."""
    client = server.client()
    source_bucket, out_bucket, other_bucket = server.create_bucket(), server.create_bucket(), server.create_bucket()
    if fenced:
        settings["source_buckets"] = f"{source_bucket}, t-some-other-allowed"
    cfg = server.settings(
        output_bucket=out_bucket,
        multipart_threshold_bytes=PART,
        multipart_chunk_bytes=PART,
        **settings,
    )
    storage = S3Storage(cfg, session=server.session(), botocore_attempts=1, **FAST_RETRIES)

    def seeder(bucket: str) -> Callable[[str, bytes], str]:
        def seed(key: str, data: bytes) -> str:
            client.put_object(Bucket=bucket, Key=key, Body=data)
            return f"s3://{bucket}/{key}"

        return seed

    backend = Backend(
        server.backend,
        storage,
        source_bucket,
        seeder(source_bucket),
        lambda key: _read(client, out_bucket, key),
        seeder(other_bucket),
    )
    storage.client.meta.events.register("before-send.s3", lambda request, **_: backend.sent.append(request))
    return backend


def _read(client: Any, bucket: str, key: str) -> tuple[bytes, str]:
    obj = client.get_object(Bucket=bucket, Key=key)
    return obj["Body"].read(), obj["ContentType"]


def memory_backend(*, fenced: bool = False) -> Backend:
    settings = Settings(source_buckets="src, some-other-allowed" if fenced else "")
    storage = MemoryStorage(settings, output_bucket="out", **FAST_RETRIES)

    def seeder(bucket: str) -> Callable[[str, bytes], str]:
        def seed(key: str, data: bytes) -> str:
            storage.seed(f"s3://{bucket}/{key}", data)
            return f"s3://{bucket}/{key}"

        return seed

    def read_output(key: str) -> tuple[bytes, str]:
        obj = storage.get(key)
        return obj.data, obj.content_type

    return Backend("memory", storage, "src", seeder("src"), read_output, seeder("elsewhere"))


SERVICES = [pytest.param(name, marks=pytest.mark.services) for name in ("s3rver", "moto")]


def _backend(request: pytest.FixtureRequest, *, fenced: bool) -> Backend:
    if request.param == "memory":
        return memory_backend(fenced=fenced)
    server: S3Server = request.getfixturevalue("s3_server" if request.param == "s3rver" else "moto_server")
    return s3_backend(server, fenced=fenced)


@pytest.fixture(params=["memory", *SERVICES])
def backend(request: pytest.FixtureRequest) -> Backend:
    return _backend(request, fenced=False)


@pytest.fixture(params=["memory", *SERVICES])
def fenced(request: pytest.FixtureRequest) -> Backend:
    """A backend whose storage was built from settings with RENDER_SOURCE_BUCKETS naming its source bucket."""
    return _backend(request, fenced=True)


def random_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- pure helpers ------------------------------------------------------------------------------


def test_output_key_is_deterministic_and_contained() -> None:
    assert output_key("renders", "rnd_01J", "mp4") == "renders/rnd_01J/rnd_01J.mp4"
    assert output_key("/renders/", "rnd_1", "m4a") == "renders/rnd_1/rnd_1.m4a"
    assert output_key("", "rnd_1", "mp3") == "rnd_1/rnd_1.mp3"
    for bad_id in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(InvalidJob):
            output_key("renders", bad_id, "mp4")
    with pytest.raises(InvalidJob):
        output_key("renders", "rnd_1", "mp4/../x")


def test_parse_uri() -> None:
    src = parse_uri("s3://media-bucket/assets/ast 1/source.mp4")
    assert (src.scheme, src.bucket, src.key) == ("s3", "media-bucket", "assets/ast 1/source.mp4")
    local = parse_uri(Path("/tmp/a b/clip.mov").as_uri())
    assert local.scheme == "file" and local.path == Path("/tmp/a b/clip.mov")
    for bad in ("", "media/x.mp4", "http://host/x.mp4", "s3://bucket", "s3:///key", "s3://us@er/key", "file://host/x"):
        with pytest.raises(InvalidJob):
            parse_uri(bad)


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("s3://media/../renders/rnd_1/rnd_1.mp4", "'..' path segments"),
        ("s3://media/assets/../../other/x.mp4", "'..' path segments"),
        ("s3://media/./x.mp4", "'..' path segments"),
        ("s3://media/assets//x.mp4", "empty"),
        ("s3://media//x.mp4", "empty"),
        ("s3://media/assets/", "empty"),
        ("s3://media/a\nb.mp4", "control characters"),
        ("s3://media/a\x00.mp4", "control characters"),
        ("s3://media/a\x7f.mp4", "control characters"),
        ("s3://media/\ud800.mp4", "not valid UTF-8"),
        ("s3://media/" + "k" * 1025, "over the S3 limit of 1024"),
        ("s3://media/" + "é" * 513, "over the S3 limit of 1024"),  # 1026 bytes in 513 characters
        ("s3://media\n/x.mp4", "s3://bucket/key"),
        ("s3:", "s3://bucket/key"),
        ("s3:/media/x.mp4", "s3://bucket/key"),
        ("s3://[/x.mp4", "s3://bucket/key"),
        ("file://[/x", "not a valid URI"),
        ("file:///tmp/a\x00b", "control characters"),
    ],
)
def test_parse_uri_refuses_keys_a_server_could_read_another_way(uri: str, needle: str) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_uri(uri)
    assert needle in info.value.message
    assert len(info.value.message) < 200  # a bounded excerpt of the URI, never all of it


def test_parse_uri_keeps_unusual_but_safe_keys_verbatim() -> None:
    for key in ("a..b/c.d.mp4", "...x/y", "ünï cödé/clip (1).mp4", "k" * 1024, "é" * 512):
        src = parse_uri(f"s3://media/{key}")
        assert (src.bucket, src.key) == ("media", key)


def test_output_key_refuses_an_id_with_a_trailing_newline() -> None:
    with pytest.raises(InvalidJob):
        output_key("renders", "rnd_1\n", "mp4")
    with pytest.raises(InvalidJob):
        output_key("renders", "rnd_1", "mp4\n")


def test_safe_filename_cannot_break_the_header() -> None:
    assert safe_filename('my "cut"\r\n/final.mp4') == "my_cut_final.mp4"
    assert not set(safe_filename('a"b\\c/d\re\nf;g')) & set('"\\/\r\n;')
    assert safe_filename("Ünïcode talk.mp4") == "n_code_talk.mp4"
    assert safe_filename("...") == "download"
    assert len(safe_filename("a" * 500 + ".mp4")) == 150 and safe_filename("a" * 500 + ".mp4").endswith(".mp4")


def test_with_retries_backs_off_then_gives_up() -> None:
    delays: list[float] = []
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        raise StorageError(f"boom {calls}")

    with pytest.raises(StorageError) as info:
        with_retries(flaky, 4, 1.0, 3.0, sleep=delays.append)
    assert calls == 4
    assert "retries exhausted" in info.value.message and "boom 4" in info.value.message
    assert info.value.code is ErrorCode.STORAGE_FAILED and info.value.transient
    assert isinstance(info.value.__cause__, StorageError)
    # Equal jitter: each delay lies in [cap/2, cap] with cap = 1, 2, 3 (capped).
    assert len(delays) == 3
    for delay, cap in zip(delays, (1.0, 2.0, 3.0), strict=True):
        assert cap / 2 <= delay <= cap


def test_with_retries_does_not_retry_permanent_errors() -> None:
    calls = 0

    def missing() -> None:
        nonlocal calls
        calls += 1
        raise SourceError("gone", code=ErrorCode.SOURCE_NOT_FOUND)

    with pytest.raises(SourceError):
        with_retries(missing, 5, 0, 0, sleep=lambda _: None)
    assert calls == 1
    assert with_retries(lambda: 7, 1, 0, 0) == 7
    with pytest.raises(ValueError):
        with_retries(lambda: 7, 0, 0, 0)


def test_invalid_storage_settings_are_rejected() -> None:
    # Settings refuse them on construction (so at process start), before any client is built.
    with pytest.raises(ConfigError, match="RENDER_S3_CHECKSUM"):
        build_client(Settings(s3_checksum="always"))
    with pytest.raises(ConfigError, match="RENDER_S3_ADDRESSING_STYLE"):
        build_client(Settings(s3_addressing_style="sideways"))


# -- the interface, on every backend -----------------------------------------------------------


def test_put_fetch_round_trip(backend: Backend, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    digest = random_file(out, 300_000)
    key = output_key("renders", "rnd_rt", "mp4")
    backend.storage.put(out, key, "video/mp4")

    data, content_type = backend.read_output(key)
    assert hashlib.sha256(data).hexdigest() == digest
    assert content_type == "video/mp4"

    # The output reads back through fetch as well (any bucket can be a source).
    uri = f"s3://{backend.storage.output_bucket}/{key}"
    assert backend.storage.size(uri) == 300_000
    dest = tmp_path / "nested" / "copy.mp4"
    assert backend.storage.fetch(uri, dest) == 300_000
    assert sha256(dest) == digest
    assert backend.storage.exists(key)


def test_put_overwrites_same_key(backend: Backend, tmp_path: Path) -> None:
    key = output_key("renders", "rnd_ow", "mp3")
    first, second = tmp_path / "1.mp3", tmp_path / "2.mp3"
    first.write_bytes(b"first")
    second.write_bytes(b"second take")
    backend.storage.put(first, key, "audio/mpeg")
    backend.storage.put(second, key, "audio/mpeg")
    assert backend.read_output(key) == (b"second take", "audio/mpeg")


def test_fetch_seeded_source(backend: Backend, tmp_path: Path) -> None:
    uri = backend.seed("assets/ast_1/source file.mov", b"\x00\x01source bytes")
    assert backend.storage.size(uri) == 14
    assert backend.storage.fetch(uri, tmp_path / "src.mov") == 14
    assert (tmp_path / "src.mov").read_bytes() == b"\x00\x01source bytes"


def test_stat_version_changes_with_the_bytes_and_only_then(backend: Backend, tmp_path: Path) -> None:
    # The parts of a chunked render compare versions to be sure they all read the same recording.
    uri = backend.seed("assets/ast_v/source.mp4", b"take one")
    first = backend.storage.stat(uri)
    assert first.size == 8 and first.version
    assert backend.storage.stat(uri) == first  # stable while the object is
    backend.seed("assets/ast_v/source.mp4", b"take two")  # same size, other bytes
    second = backend.storage.stat(uri)
    assert second.size == 8 and second.version != first.version


def test_stat_version_of_a_local_source_follows_its_modification(tmp_path: Path) -> None:
    storage = MemoryStorage(output_bucket="out", allow_file_uris=True)
    local = tmp_path / "local.mp4"
    local.write_bytes(b"abc")
    first = storage.stat(local.as_uri())
    assert first.size == 3 and storage.stat(local.as_uri()) == first
    os.utime(local, ns=(1, 2))
    assert storage.stat(local.as_uri()).version != first.version


def test_missing_source_is_permanent_and_not_retried(backend: Backend, tmp_path: Path) -> None:
    for uri in (f"s3://{backend.source_bucket}/nope.mp4", "s3://no-such-bucket-here/nope.mp4"):
        for call in (lambda u=uri: backend.storage.fetch(u, tmp_path / "x"), lambda u=uri: backend.storage.size(u)):
            before = backend.requests()
            with pytest.raises(SourceError) as info:
                call()
            assert info.value.code is ErrorCode.SOURCE_NOT_FOUND
            assert not info.value.transient
            assert "does not exist" in info.value.message
            assert backend.requests() - before == 1, "a missing source must not be retried"
    assert not (tmp_path / "x").exists()


def test_exists_and_delete(backend: Backend, tmp_path: Path) -> None:
    key = output_key("renders", "rnd_del", "m4a")
    assert not backend.storage.exists(key)
    (tmp_path / "a.m4a").write_bytes(b"audio")
    backend.storage.put(tmp_path / "a.m4a", key, "audio/mp4")
    assert backend.storage.exists(key)
    backend.storage.delete(key)
    assert not backend.storage.exists(key)
    backend.storage.delete(key)  # deleting a missing key is fine


def test_file_uris_only_when_allowed(backend: Backend, tmp_path: Path) -> None:
    local = tmp_path / "local source.mp4"
    local.write_bytes(b"local")
    with pytest.raises(InvalidJob, match="RENDER_ALLOW_FILE_URIS"):
        backend.storage.fetch(local.as_uri(), tmp_path / "dest")
    with pytest.raises(InvalidJob):
        backend.storage.size(local.as_uri())

    backend.storage.allow_file_uris = True
    assert backend.storage.size(local.as_uri()) == 5
    assert backend.storage.fetch(local.as_uri(), tmp_path / "dest") == 5
    assert (tmp_path / "dest").read_bytes() == b"local"
    with pytest.raises(SourceError) as info:
        backend.storage.fetch((tmp_path / "missing.mp4").as_uri(), tmp_path / "dest2")
    assert info.value.code is ErrorCode.SOURCE_NOT_FOUND


def test_other_schemes_are_invalid_jobs(backend: Backend, tmp_path: Path) -> None:
    for uri in ("https://example.com/a.mp4", "gs://bucket/a.mp4", "/abs/path.mp4"):
        with pytest.raises(InvalidJob, match="source.uri"):
            backend.storage.fetch(uri, tmp_path / "x")
    assert backend.requests() == 0


def test_sources_come_only_from_allowed_buckets(fenced: Backend, tmp_path: Path) -> None:
    allowed = fenced.seed("assets/ast_1/a.mp4", b"allowed")
    assert fenced.storage.size(allowed) == 7
    assert fenced.storage.fetch(allowed, tmp_path / "a.mp4") == 7
    # The same key in a bucket that exists and is readable with these credentials,
    # so without the check it would be fetched.
    other = fenced.seed_elsewhere("assets/ast_1/a.mp4", b"someone else's")
    before = fenced.requests()
    for call in (lambda: fenced.storage.fetch(other, tmp_path / "b.mp4"), lambda: fenced.storage.size(other)):
        with pytest.raises(InvalidJob) as info:
            call()
        assert info.value.code is ErrorCode.INVALID_JOB and "bucket" in info.value.message
        assert "some-other-allowed" not in info.value.message  # the allowlist is not told to tenants
    assert fenced.requests() == before, "a refused bucket must not be asked for anything"
    assert not (tmp_path / "b.mp4").exists()


def test_without_an_allowlist_any_bucket_is_read(backend: Backend, tmp_path: Path) -> None:
    other = backend.seed_elsewhere("assets/b.mp4", b"elsewhere")
    assert backend.storage.fetch(other, tmp_path / "b.mp4") == 9


@pytest.mark.services
def test_dot_segments_never_reach_the_server(s3_server: S3Server, tmp_path: Path) -> None:
    backend = s3_backend(s3_server)
    other = backend.seed_elsewhere("secret.bin", b"other tenant").split("/")[2]
    sneaky = f"../{other}/secret.bin"
    # The hazard is real: this server normalises the path and serves the other bucket's object.
    raw = s3_server.client().get_object(Bucket=backend.source_bucket, Key=sneaky)
    assert raw["Body"].read() == b"other tenant"
    uris = [
        f"s3://{backend.source_bucket}/{sneaky}",
        f"s3://{backend.source_bucket}/assets/../../{other}/secret.bin",
        f"s3://{backend.source_bucket}/./{sneaky}",
        f"s3://{backend.source_bucket}//{other}/secret.bin",
    ]
    for uri in uris:
        for call in (lambda u=uri: backend.storage.fetch(u, tmp_path / "x"), lambda u=uri: backend.storage.size(u)):
            with pytest.raises(InvalidJob, match="path segments"):
                call()
    assert backend.requests() == 0
    assert not (tmp_path / "x").exists()


def test_presign_names_the_download(backend: Backend) -> None:
    url = backend.storage.presign("renders/r/r.mp4", 'talk "final".mp4', 60)
    assert "attachment" in urllib.parse.unquote(url)
    assert 'filename="talk_final_.mp4"' in urllib.parse.unquote(url)
    with pytest.raises(ValueError):
        backend.storage.presign("renders/r/r.mp4", "x.mp4", 0)


def test_memory_presign_is_not_downloadable() -> None:
    url = MemoryStorage().presign("renders/r/r.mp4", "r.mp4", 60)
    assert url.startswith("memory://renders/renders/r/r.mp4?")


def test_memory_injected_failures_are_retried(tmp_path: Path) -> None:
    """MemoryStorage.fail_next runs the same retry loop as S3 (the wire version is test_transient_503s_*)."""
    slept: list[float] = []
    storage = MemoryStorage(attempts=3, base_delay_s=0.01, max_delay_s=0.02, sleep=slept.append)
    (tmp_path / "o").write_bytes(b"data")
    storage.fail_next(2, "put")
    storage.put(tmp_path / "o", "k", "video/mp4")
    assert storage.calls["put"] == 3 and len(slept) == 2
    assert storage.get("k").data == b"data"
    storage.fail_next(3)
    with pytest.raises(StorageError, match="retries exhausted") as info:
        storage.exists("k")
    assert info.value.transient and storage.calls["exists"] == 3
    with pytest.raises(ValueError):
        storage.fail_next(1, "upload")


# -- multipart and checksum modes on the servers ---------------------------------------------------


@pytest.fixture(params=SERVICES)
def server(request: pytest.FixtureRequest) -> S3Server:
    return request.getfixturevalue("s3_server" if request.param == "s3rver" else "moto_server")


@pytest.mark.services
@pytest.mark.parametrize("checksum", ["when_required", "when_supported"])
def test_multipart_and_checksum_modes(server: S3Server, checksum: str, tmp_path: Path) -> None:
    backend = s3_backend(server, s3_checksum=checksum)
    storage = backend.storage
    assert isinstance(storage, S3Storage)
    parts: list[int] = []
    storage.client.meta.events.register("before-call.s3.UploadPart", lambda params, **_: parts.append(1))

    big = tmp_path / "big.mp4"
    digest = random_file(big, 2 * PART + 123_456)  # three parts: 5 MiB, 5 MiB, the rest
    key = output_key("renders", "rnd_big", "mp4")
    storage.put(big, key, "video/mp4")
    assert len(parts) == 3, "above the threshold the upload must be multipart"
    data, content_type = backend.read_output(key)
    assert hashlib.sha256(data).hexdigest() == digest and content_type == "video/mp4"

    small = tmp_path / "small.m4a"
    small_digest = random_file(small, 1000)
    storage.put(small, "renders/s/s.m4a", "audio/mp4")
    put_requests = [r for r in backend.sent if r.method == "PUT" and "uploadId" not in r.url]
    sent_crc = any("x-amz-checksum-crc32" in {k.lower() for k in r.headers} for r in put_requests)
    # The setting reaches botocore: only when_supported adds checksum headers to a plain PutObject.
    assert sent_crc == (checksum == "when_supported")

    # And the objects read back whole through fetch (ranged multipart download for the big one).
    assert storage.fetch(f"s3://{storage.output_bucket}/{key}", tmp_path / "big.copy") == big.stat().st_size
    assert sha256(tmp_path / "big.copy") == digest
    storage.fetch(f"s3://{storage.output_bucket}/renders/s/s.m4a", tmp_path / "small.copy")
    assert sha256(tmp_path / "small.copy") == small_digest


# -- presigned URLs: s3rver enforces expiry -------------------------------------------------------


@pytest.mark.services
def test_presigned_url_downloads_then_expires(s3_server: S3Server, tmp_path: Path) -> None:
    assert s3_server.enforces_expiry
    backend = s3_backend(s3_server)
    out = tmp_path / "out.mp4"
    digest = random_file(out, 50_000)
    key = output_key("renders", "rnd_url", "mp4")
    backend.storage.put(out, key, "video/mp4")

    url = backend.storage.presign(key, 'Quarterly "review".mp4', 1)
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Disposition"] == (
            "attachment; filename=\"Quarterly_review_.mp4\"; filename*=UTF-8''Quarterly%20_review_.mp4"
        )
        assert hashlib.sha256(resp.read()).hexdigest() == digest

    time.sleep(2.1)  # X-Amz-Date has one-second resolution; be past it for sure
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=5)
    assert info.value.code == 403
    assert b"expired" in info.value.read()


@pytest.mark.services
def test_access_denied_source_is_not_found(s3_server: S3Server, tmp_path: Path) -> None:
    """403 on a source: permanent source_not_found, worded so an operator looks at the policy."""
    backend = s3_backend(s3_server)
    uri = backend.seed("private.mp4", b"secret")
    import boto3

    stranger = boto3.session.Session(aws_access_key_id="NOBODY", aws_secret_access_key="x", region_name="us-east-1")
    storage = S3Storage(s3_server.settings(), session=stranger, botocore_attempts=1, **FAST_RETRIES)
    for call in (lambda: storage.size(uri), lambda: storage.fetch(uri, tmp_path / "x")):
        with pytest.raises(SourceError) as info:
            call()
        assert info.value.code is ErrorCode.SOURCE_NOT_FOUND and not info.value.transient
        assert "not readable by the worker" in info.value.message


# -- faults on the wire ---------------------------------------------------------------------------


@pytest.fixture
def proxied(s3_server: S3Server, s3_fault_proxy: FaultProxy) -> Iterator[tuple[Backend, FaultProxy, list[float]]]:
    """A backend whose storage talks to s3rver through the fault proxy; sleeps are recorded, not slept."""
    direct = s3_backend(s3_server)
    storage = direct.storage
    assert isinstance(storage, S3Storage)
    slept: list[float] = []
    settings = storage.settings.replace(s3_endpoint_url=s3_fault_proxy.url)
    via_proxy = S3Storage(
        settings,
        session=s3_server.session(),
        botocore_attempts=1,
        sleep=slept.append,
        connect_timeout_s=1,
        read_timeout_s=2,
        **FAST_RETRIES,
    )
    proxied = Backend(
        "proxied", via_proxy, direct.source_bucket, direct.seed, direct.read_output, direct.seed_elsewhere
    )
    yield proxied, s3_fault_proxy, slept


@pytest.mark.services
def test_transient_503s_are_retried(proxied: tuple[Backend, FaultProxy, list[float]], tmp_path: Path) -> None:
    backend, proxy, slept = proxied
    out = tmp_path / "o.mp4"
    digest = random_file(out, 10_000)
    proxy.fail_next(2)
    backend.storage.put(out, "renders/r/r.mp4", "video/mp4")
    assert [r.outcome for r in proxy.requests] == ["injected 503", "injected 503", "forwarded 200"]
    assert len(slept) == 2
    assert hashlib.sha256(backend.read_output("renders/r/r.mp4")[0]).hexdigest() == digest

    uri = backend.seed("src.mp4", b"source")
    proxy.reset()
    proxy.fail_next(1)
    proxy.drop_next(1)  # a dropped connection is transient too
    assert backend.storage.fetch(uri, tmp_path / "src.mp4") == 6
    assert [r.outcome for r in proxy.requests][:2] == ["dropped", "injected 503"]


@pytest.mark.services
def test_storage_down_fails_after_retries(proxied: tuple[Backend, FaultProxy, list[float]], tmp_path: Path) -> None:
    backend, proxy, slept = proxied
    (tmp_path / "o.mp4").write_bytes(b"x")
    proxy.down = True
    for call in (
        lambda: backend.storage.put(tmp_path / "o.mp4", "renders/r/r.mp4", "video/mp4"),
        lambda: backend.storage.size(f"s3://{backend.source_bucket}/src.mp4"),
        lambda: backend.storage.exists("renders/r/r.mp4"),
    ):
        proxy.requests.clear()
        with pytest.raises(StorageError) as info:
            call()
        assert info.value.code is ErrorCode.STORAGE_FAILED and info.value.transient
        assert "retries exhausted" in info.value.message and "failed after 3 attempts" in info.value.message
        assert len(proxy.requests) == 3  # our 3 attempts x botocore's 1


@pytest.mark.services
def test_stalled_server_times_out_as_transient(
    s3_server: S3Server, proxied: tuple[Backend, FaultProxy, list[float]]
) -> None:
    backend, proxy, _ = proxied
    assert isinstance(backend.storage, S3Storage)
    settings = backend.storage.settings
    client = build_client(settings, session=s3_server.session(), botocore_attempts=1, read_timeout_s=0.25)
    storage = S3Storage(settings, client=client, attempts=2, base_delay_s=0, max_delay_s=0)
    proxy.delay_s = 0.6  # longer than the read timeout
    with pytest.raises(StorageError, match="retries exhausted") as info:
        storage.size(f"s3://{backend.source_bucket}/anything.mp4")
    assert "ReadTimeout" in info.value.message
    assert len(proxy.requests) <= 2  # each attempt gave up on its read timeout: one request apiece


@pytest.mark.services
def test_unreachable_endpoint_is_storage_failed(s3_server: S3Server) -> None:
    from services import free_port

    settings = s3_server.settings(s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    storage = S3Storage(
        settings, session=s3_server.session(), botocore_attempts=1, connect_timeout_s=0.5, **FAST_RETRIES
    )
    with pytest.raises(StorageError) as info:
        storage.size("s3://bucket/key.mp4")
    assert "retries exhausted" in info.value.message
    assert isinstance(info.value.__cause__, StorageError)


@pytest.mark.services
def test_a_stop_ends_a_download_part_way_and_leaves_nothing(
    proxied: tuple[Backend, FaultProxy, list[float]], tmp_path: Path
) -> None:
    """A cancel or shutdown does not wait for a large source to arrive (worker/pipeline.py passes its stop)."""
    backend, proxy, _ = proxied
    parts = 24
    uri = backend.seed("big.mp4", os.urandom(parts * PART))
    proxy.delay_s = 0.2  # every ranged GET stalls a little: the download takes a couple of seconds
    stop = threading.Event()
    dest = tmp_path / "dl" / "big.mp4"
    outcome: dict[str, Any] = {}

    def download() -> None:
        try:
            outcome["size"] = backend.storage.fetch(uri, dest, stop=stop)
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=download)
    thread.start()
    deadline = time.monotonic() + 20
    while not any(r.method == "GET" for r in proxy.requests) and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    stopped_at = time.monotonic()
    thread.join(30)
    assert isinstance(outcome.get("error"), TransferStopped), outcome
    assert time.monotonic() - stopped_at < 5
    gets = [r for r in proxy.requests if r.method == "GET"]
    assert 0 < len(gets) < parts, len(gets)  # stopped part-way: not every part was asked for
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial file, no temporary
    proxy.delay_s = 0
    assert backend.storage.fetch(uri, dest) == parts * PART  # the storage itself is fine afterwards


def test_a_memory_download_stopped_before_it_starts_writes_nothing(tmp_path: Path) -> None:
    storage = MemoryStorage(output_bucket="out")
    storage.seed("s3://media/a.mp4", b"abc")
    stop = threading.Event()
    stop.set()
    with pytest.raises(TransferStopped):
        storage.fetch("s3://media/a.mp4", tmp_path / "a.mp4", stop=stop)
    assert not (tmp_path / "a.mp4").exists()


@pytest.mark.services
def test_a_trickling_download_is_stopped_at_its_deadline_and_retried_a_bounded_number_of_times(
    proxied: tuple[Backend, FaultProxy, list[float]], tmp_path: Path
) -> None:
    """Every attempt has a total deadline: a store that answers each ranged GET slowly never holds the job."""
    backend, proxy, _ = proxied
    uri = backend.seed("slow.mp4", os.urandom(6 * PART))
    proxy.delay_s = 0.4  # each part arrives, slowly: no read timeout ever fires
    dest = tmp_path / "dl" / "slow.mp4"
    started = time.monotonic()
    with pytest.raises(StorageError, match="did not finish within") as info:
        backend.storage.fetch(uri, dest, deadline_s=0.5)
    assert info.value.transient
    assert time.monotonic() - started < 3 * (0.5 + 0.4 * 2) + 5  # bounded: the attempts, each cut at its deadline
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    proxy.delay_s = 0
    assert backend.storage.fetch(uri, dest, deadline_s=60) == 6 * PART


def test_a_memory_download_past_its_deadline_is_transient_and_bounded(tmp_path: Path) -> None:
    storage = MemoryStorage(output_bucket="out", attempts=3, base_delay_s=0, max_delay_s=0)
    storage.seed("s3://media/a.mp4", b"abc")
    storage.slow_fetch(5.0)
    with pytest.raises(StorageError, match="did not finish within 0 s"):
        storage.fetch("s3://media/a.mp4", tmp_path / "a.mp4", deadline_s=0.2)
    assert storage.calls["fetch"] == 3  # the storage's attempts, no more
    assert not (tmp_path / "a.mp4").exists()


@pytest.mark.services
def test_a_download_keeps_a_non_ascii_name_by_rfc_6266(s3_server: S3Server, tmp_path: Path) -> None:
    """The name a browser saves: ASCII in ``filename`` for every client, the real one in ``filename*``."""
    backend = s3_backend(s3_server)
    out = tmp_path / "out.mp4"
    random_file(out, 1000)
    key = output_key("renders", "rnd_name", "mp4")
    backend.storage.put(out, key, "video/mp4")
    with urllib.request.urlopen(backend.storage.presign(key, "Entrevista – día 1.cut.mp4", 60), timeout=5) as resp:
        header = resp.headers["Content-Disposition"]
    assert header.startswith('attachment; filename="Entrevista_d_a_1.cut.mp4"; ')
    encoded = header.split("filename*=UTF-8''", 1)[1]
    assert urllib.parse.unquote(encoded) == "Entrevista – día 1.cut.mp4"
