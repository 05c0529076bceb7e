"""A small render farm for the queue tests: real redis-server, real S3 server, real worker subprocesses.

:class:`Farm` wires one test's pieces together and cleans up after it:

* a unique render queue and webhook queue, so tests sharing the session's
  Redis never see each other's messages;
* a source bucket and an output bucket on the S3 server;
* the environment a worker or ``render-cli`` process gets (``RENDER_*`` plus
  the ``AWS_*`` credentials of the S3 server, and nothing inherited from the
  developer's shell);
* worker subprocesses (``render-worker``), each in its own process group so
  a test can SIGTERM or SIGKILL the whole group, and always killed at teardown;
* helpers that read state back independently of the worker: records straight
  from Redis, objects straight from S3, Dramatiq's queues straight from their keys.

Nothing here is a mock; see services.py for the servers themselves.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from worker.records import TERMINAL, RedisRecordStore
from worker.settings import Settings

if TYPE_CHECKING:
    from services import RedisServer, S3Server, WebhookReceiver

BIN = Path(sys.executable).parent
SECRET = "whsec_" + "cmVuZGVyLWZhcm0tcXVldWUtdGVzdHMtc2VjcmV0IQ=="  # base64 of 30 bytes

#: Settings every test farm starts from: fast retries and backoffs, no metrics server, loopback webhooks.
BASE_SETTINGS: dict[str, str] = {
    "RENDER_METRICS_PORT": "0",
    "RENDER_RETRY_MIN_BACKOFF_MS": "100",
    "RENDER_RETRY_MAX_BACKOFF_MS": "1000",
    "RENDER_WEBHOOK_MIN_BACKOFF_MS": "100",
    "RENDER_WEBHOOK_MAX_BACKOFF_MS": "1000",
    "RENDER_WEBHOOK_TIMEOUT_S": "5",
    "RENDER_PROGRESS_INTERVAL_S": "0.2",
    "RENDER_URL_EXPIRY_S": "300",
    # The farm's webhook receivers listen on loopback, which the address policy
    # refuses by default (worker/netguard.py); tests opt in explicitly.
    "RENDER_WEBHOOK_ALLOW_PRIVATE": "1",
    # Whole renders: the queue tests written for one render on one worker (leases, cancel, kill -9, retries)
    # keep testing that path with sources longer than the 60 s default. tests/test_chunks_queue.py sets its
    # own RENDER_CHUNK_S / RENDER_CHUNK_MIN_S to test chunked renders through the queue.
    "RENDER_CHUNK_MIN_S": "86400",
}


def ts(value: str) -> float:
    """A record's ISO 8601 timestamp (``...Z``) as seconds since the epoch."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def processes(zombies: bool = False) -> Iterator[tuple[int, str, list[str]]]:
    """(pid, comm, fields after comm) of every process, read from /proc; zombies only if asked for.

    ``/proc/<pid>/stat`` is ``pid (comm) state ppid pgrp ...``; comm may hold
    spaces, so the fields are split after the last ')'.
    """
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if zombies or fields[0] != "Z":
            yield int(entry.name), stat[stat.index("(") + 1 : stat.rindex(")")], fields


def pids_in_group(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    return [pid for pid, _, fields in processes() if int(fields[2]) == pgid]


def ffmpeg_children(pid: int) -> list[int]:
    """Live ffmpeg processes whose parent is ``pid`` (the bundled binary's name starts with 'ffmpeg')."""
    return [child for child, comm, fields in processes() if comm.startswith("ffmpeg") and int(fields[1]) == pid]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class WorkerProcess:
    """One ``render-worker`` subprocess (Dramatiq's parent plus its worker processes), in its own process group."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.pgid = self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, processes: int = 1, timeout_s: float = 30.0) -> None:
        """Until every Dramatiq worker process has said it is ready for action."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            return self.log().count("Worker process is ready for action") >= processes

        wait_for(ready, timeout_s, "the worker to boot")

    def worker_pids(self) -> list[int]:
        """The Dramatiq worker processes (children of the parent)."""
        return [p for p in pids_in_group(self.pgid) if p != self.proc.pid]

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the parent only (Dramatiq forwards SIGTERM/SIGINT to its children)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def kill_group(self) -> None:
        """SIGKILL every process of the group at once: the parent, the worker processes (ffmpeg is in its own
        session and must die through PR_SET_PDEATHSIG)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL the group if it does not exit in time; returns the exit status."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout_s)
        self.kill_group()  # stragglers of the group, if any
        self.close_log()
        return self.proc.returncode

    def close_log(self) -> None:
        if not self._log.closed:
            self._log.close()


class Farm:
    """Everything one queue test needs; see the module docstring."""

    def __init__(self, redis_server: RedisServer, s3: S3Server, root: Path, **settings: Any) -> None:
        self.redis_server = redis_server
        self.s3 = s3
        self.root = root
        self.tag = uuid.uuid4().hex[:8]
        self.queue = f"render-{self.tag}"
        self.webhook_queue = f"hooks-{self.tag}"
        self.source_bucket = s3.create_bucket()
        self.output_bucket = s3.create_bucket()
        self.redis = redis.Redis.from_url(redis_server.url, decode_responses=True)
        self.records = RedisRecordStore(self.redis)
        self.workers: list[WorkerProcess] = []
        self._broker: Any = None
        self.settings_env: dict[str, str] = {
            **BASE_SETTINGS,
            "RENDER_REDIS_URL": redis_server.url,
            "RENDER_S3_ENDPOINT_URL": s3.endpoint_url,
            "RENDER_OUTPUT_BUCKET": self.output_bucket,
            "RENDER_QUEUE": self.queue,
            "RENDER_WEBHOOK_QUEUE": self.webhook_queue,
            "RENDER_WORK_DIR": str(self._mkdir("scratch")),
        }
        self.configure(**settings)

    # -- configuration ---------------------------------------------------------------------------------------

    def _mkdir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def configure(self, **settings: Any) -> None:
        """Set ``RENDER_<NAME>`` for processes started from now on (``max_retries=2`` → ``RENDER_MAX_RETRIES=2``)."""
        for name, value in settings.items():
            self.settings_env["RENDER_" + name.upper()] = str(value)

    def env(self, **settings: Any) -> dict[str, str]:
        """The environment of a worker or CLI process: no RENDER_*/AWS_* of the caller, this farm's instead."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RENDER_", "AWS_", "PROMETHEUS_"))}
        base.update(self.settings_env)
        base.update({"RENDER_" + k.upper(): str(v) for k, v in settings.items()})
        base.update(
            {
                "AWS_ACCESS_KEY_ID": self.s3.access_key,
                "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
                "AWS_DEFAULT_REGION": self.s3.region,
                "PYTHONUNBUFFERED": "1",
            }
        )
        return base

    def settings(self, **settings: Any) -> Settings:
        return Settings.from_env({k: v for k, v in self.env(**settings).items() if k.startswith("RENDER_")})

    # -- workers ---------------------------------------------------------------------------------------------

    def start_worker(
        self, processes: int = 1, threads: int = 1, *, wait: bool = True, **settings: Any
    ) -> WorkerProcess:
        n = len(self.workers)
        argv = [str(BIN / "render-worker"), "--processes", str(processes), "--threads", str(threads)]
        worker = WorkerProcess(argv, self.env(**settings), self.root / f"worker-{n}.log")
        self.workers.append(worker)
        if wait:
            worker.wait_ready(processes)
        return worker

    def close(self) -> None:
        """Kill every worker group outright (tests that care about a graceful stop do it themselves)."""
        for worker in self.workers:
            worker.kill_group()
            worker.close_log()
        if self._broker is not None:
            self._broker.close()
        self.redis.close()

    # -- jobs ------------------------------------------------------------------------------------------------

    def upload(self, path: Path, key: str | None = None) -> str:
        key = key or f"assets/{uuid.uuid4().hex[:8]}/{path.name}"
        self.s3.client().upload_file(str(path), self.source_bucket, key)
        return f"s3://{self.source_bucket}/{key}"

    def cli(
        self, *args: str, check: bool = True, timeout_s: float = 60.0, **settings: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``render-cli`` with this farm's environment (plus ``settings``)."""
        done = subprocess.run(
            [str(BIN / "render-cli"), *args],
            env=self.env(**settings),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"render-cli {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
        return done

    def enqueue(
        self,
        uri: str,
        fmt: str,
        *,
        segments: list[tuple[float, float]] | None = None,
        webhook: WebhookReceiver | None = None,
        smart: bool = True,
    ) -> str:
        """``render-cli enqueue``; returns the render id it prints (alone on stdout). ``smart=False``: every frame
        encoded (``--no-smart``), for a test that needs a render to spend its time in ffmpeg."""
        args = [uri, "--format", fmt, *(() if smart else ("--no-smart",))]
        if segments is not None:
            plan = self.root / f"plan-{uuid.uuid4().hex[:8]}.json"
            plan.write_text(json.dumps({"segments": [{"start": a, "end": b} for a, b in segments]}))
            args += ["--cut", str(plan)]
        if webhook is not None:
            args += ["--webhook-url", webhook.url, "--webhook-secret", SECRET]
        out = self.cli("enqueue", *args).stdout
        render_id = out.strip()
        assert render_id.startswith("rnd_") and "\n" not in render_id, out
        return render_id

    def message(
        self,
        uri: str,
        fmt: str,
        *,
        segments: list[tuple[float, float]] | None = None,
        webhook: WebhookReceiver | None = None,
        render_id: str | None = None,
        smart: bool = True,
    ) -> dict[str, Any]:
        """A job message as the API would send it (for tests that bypass ``render-cli enqueue``)."""
        rid = render_id or f"rnd_{uuid.uuid4().hex}"
        return {
            "version": 1,
            "render_id": rid,
            "asset_id": "ast_" + rid[4:],
            "cut_id": None if segments is None else "cut_" + rid[4:],
            "source": {"uri": uri},
            "segments": None if segments is None else [{"start": a, "end": b} for a, b in segments],
            "output": {
                "format": fmt,
                "resolution": None,
                "video_bitrate": None,
                "audio_bitrate": None,
                **({} if smart else {"smart": False}),
            },
            "webhook": None if webhook is None else {"url": webhook.url, "secret": SECRET},
        }

    def send(self, *args: Any, actor: str = "render", queue: str | None = None) -> str:
        """Put one raw Dramatiq message on the render queue (or ``queue``), as any producer could; its message id."""
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker

        if self._broker is None:
            self._broker = RedisBroker(url=self.redis_server.url)
        message = dramatiq.Message(queue_name=queue or self.queue, actor_name=actor, args=args, kwargs={}, options={})
        self._broker.enqueue(message)
        return message.message_id

    # -- reading state back ----------------------------------------------------------------------------------

    def record(self, render_id: str) -> dict[str, Any] | None:
        return self.records.get(render_id)

    def wait_record(
        self, render_id: str, until: Callable[[dict[str, Any]], bool] | None = None, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Poll the record until ``until(record)`` (default: a terminal state)."""
        until = until or (lambda r: r["state"] in TERMINAL)

        def check() -> dict[str, Any] | None:
            rec = self.record(render_id)
            return rec if rec is not None and until(rec) else None

        try:
            return wait_for(check, timeout_s, f"render {render_id}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; record: {self.record(render_id)}\n{self.logs(tail=4000)}") from None

    def status(self, render_id: str, **settings: Any) -> dict[str, Any]:
        """``render-cli status`` as JSON (the record plus a fresh download_url)."""
        return json.loads(self.cli("status", render_id, **settings).stdout)

    def submit(self, message: dict[str, Any]) -> str:
        """What the API does: create the pending record, then send the job; returns the Dramatiq message id."""
        from worker.records import now_iso

        rid = message.get("render_id") if isinstance(message, dict) else None
        if isinstance(rid, str):
            fields = {k: message.get(k) for k in ("asset_id", "cut_id", "output")}
            self.records.create(rid, {**fields, "created_at": now_iso()})
        return self.send(message)

    def objects(self) -> dict[str, int]:
        """Every object in the output bucket: key → size."""
        out: dict[str, int] = {}
        for page in self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=self.output_bucket):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["Size"]
        return out

    def download(self, key: str, dest: Path) -> Path:
        self.s3.client().download_file(self.output_bucket, key, str(dest))
        return dest

    def queue_ids(self, queue: str | None = None) -> list[str]:
        """Message ids waiting on a Dramatiq queue (``<queue>``, ``<queue>.DQ``)."""
        return list(self.redis.lrange(f"dramatiq:{queue or self.queue}", 0, -1))

    def delayed(self, queue: str | None = None) -> list[dict[str, Any]]:
        """Messages parked on the delay queue (retries waiting for their backoff), decoded."""
        raw = self.redis.hvals(f"dramatiq:{queue or self.queue}.DQ.msgs")
        return [json.loads(m) for m in raw]

    def dead(self, queue: str | None = None) -> list[dict[str, Any]]:
        """Messages on the dead-letter queue, decoded."""
        raw = self.redis.hvals(f"dramatiq:{queue or self.queue}.XQ.msgs")
        return [json.loads(m) for m in raw]

    def pending(self, queue: str | None = None) -> int:
        """Messages not yet acked anywhere: waiting, delayed or being worked on (the ``.msgs`` hashes)."""
        q = queue or self.queue
        return int(self.redis.hlen(f"dramatiq:{q}.msgs")) + int(self.redis.hlen(f"dramatiq:{q}.DQ.msgs"))

    def logs(self, tail: int | None = None) -> str:
        """Every worker's whole log (or the last ``tail`` characters of each, for failure messages)."""
        parts = []
        for i, worker in enumerate(self.workers):
            text = worker.log()
            parts.append(f"--- worker {i} log ---\n{text if tail is None else text[-tail:]}")
        return "\n".join(parts)


def deliveries(receiver: WebhookReceiver, render_id: str | None = None) -> list[Any]:
    """Requests the receiver got (for one render when ``render_id`` is given)."""
    out = []
    for req in list(receiver.received):
        if render_id is None or json.loads(req.body)["data"]["entity_id"] == render_id:
            out.append(req)
    return out


def verified_events(receiver: WebhookReceiver, ids: Iterable[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every received event verified with the reference ``standardwebhooks`` library, grouped by render id."""
    from standardwebhooks.webhooks import Webhook

    verifier = Webhook(SECRET)
    out: dict[str, list[dict[str, Any]]] = {}
    for req in list(receiver.received):
        event = verifier.verify(req.body, req.headers)
        event["_webhook_id"] = req.headers["webhook-id"]
        out.setdefault(event["data"]["entity_id"], []).append(event)
    if ids is not None:
        wanted = set(ids)
        out = {k: v for k, v in out.items() if k in wanted}
    return out


@contextlib.contextmanager
def farm(redis_server: RedisServer, s3: S3Server, root: Path, **settings: Any) -> Iterator[Farm]:
    f = Farm(redis_server, s3, root, **settings)
    try:
        yield f
    finally:
        f.close()
