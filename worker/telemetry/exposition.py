"""prometheus_client multiprocess mode, and the one HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz``.

Multiprocess mode
-----------------
Dramatiq runs several worker processes. prometheus_client only shares values between processes through files in
the directory named by the ``PROMETHEUS_MULTIPROC_DIR`` environment variable, and it reads that variable *itself*
(when it picks its value class, when it opens files, in ``MultiProcessCollector``); there is no argument to pass
instead. That is why :func:`prepare_multiprocess_dir` is the one place in the worker that writes to ``os.environ``:
it must run in the parent process *before* Dramatiq starts the worker processes, so every child inherits the
variable and writes its own ``<type>_<pid>.db`` files, and so stale files of an earlier run are removed exactly once
(a child cleaning the directory would delete its siblings' live values). ``live*`` gauge files are deleted by
:func:`mark_process_dead`, so a stopped process stops counting; counters and histograms of dead processes are kept,
as they must be for ``rate()``.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socketserver
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app, multiprocess
from prometheus_client import values as prometheus_values

from worker.settings import Settings
from worker.telemetry.definitions import MULTIPROC_ENV, drop_default, multiprocess_dir
from worker.telemetry.readiness import Readiness

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

logger = logging.getLogger(__name__)

_fork_settings: Settings | None = None


def fork_settings() -> Settings | None:
    """The settings :func:`prepare_multiprocess_dir` saw in the parent (inherited by forked processes)."""
    return _fork_settings


def prepare_multiprocess_dir(settings: Settings, *, clean: bool = True) -> Path:
    """Create (and by default empty) the multiprocess directory and point ``PROMETHEUS_MULTIPROC_DIR`` at it.

    Call once in the parent process, before Dramatiq starts its worker processes (see the module docstring).
    ``RENDER_METRICS_DIR`` empty means a fresh temporary directory, removed when the parent exits. Only ``*.db``
    files are removed from a configured directory: an operator may point it anywhere.
    """
    global _fork_settings
    if settings.metrics_dir:
        path = Path(settings.metrics_dir)
        path.mkdir(parents=True, exist_ok=True)
        if clean:
            for stale in path.glob("*.db"):
                stale.unlink(missing_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="render-metrics-"))
        owner = os.getpid()
        # Forked children inherit atexit handlers; only the process that created the directory removes it.
        atexit.register(_remove_temp_dir, path, owner)
    os.environ[MULTIPROC_ENV] = str(path)
    if prometheus_values.ValueClass is prometheus_values.MutexValue:
        # prometheus_client chose in-memory values when it was imported, before the variable existed; choose again
        # so that metric objects created from now on (ours and Dramatiq's) write to the shared files.
        prometheus_values.ValueClass = prometheus_values.get_value_class()
        drop_default()
    _fork_settings = settings
    return path


def ensure_multiprocess_dir(settings: Settings) -> Path:
    """The shared directory, preparing it (without cleaning) when the parent did not.

    That happens with a bare ``dramatiq worker.actors`` or a single-process worker in a test. With
    ``RENDER_METRICS_DIR`` set, every process still finds the same directory (only stale files of earlier runs are
    not removed); without it each process gets its own, which is only complete for a single process. Never cleans:
    a worker process must not delete its siblings' files.
    """
    path = multiprocess_dir()
    if path is None:
        logger.warning(
            "metrics: prepare_multiprocess_dir() did not run before the worker processes started%s",
            "" if settings.metrics_dir else "; metrics are only complete for a single-process worker",
        )
        path = prepare_multiprocess_dir(settings, clean=False)
    return path


def _remove_temp_dir(path: Path, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def make_registry() -> CollectorRegistry:
    """The registry to expose: every process's files in multiprocess mode, else the default registry."""
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))
    return registry


def mark_process_dead(pid: int | None = None) -> None:
    """Drop the ``live*`` gauge files of a process that exited (default: this one).

    Without this a stopped process keeps counting in ``render_jobs_in_progress`` and ``render_worker_processes``.
    Worker processes call it from ``after_worker_shutdown``; a supervisor that reaps children may call it too.
    """
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(os.getpid() if pid is None else pid, str(path))


def live_worker_processes(registry: CollectorRegistry) -> float:
    """Sum of ``render_worker_processes`` in a registry (what ``/readyz`` checks first)."""
    total = 0.0
    for family in registry.collect():
        if family.name == "render_worker_processes":
            total += sum(s.value for s in family.samples if s.name == "render_worker_processes")
    return total


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        logger.debug("metrics http: " + format, *args)


def readiness_problems(registry: CollectorRegistry, readiness: Readiness | None, checked: bool) -> list[str]:
    """Why this host is not ready (empty: ready): no booted worker process, Redis or storage unreachable."""
    problems = []
    if live_worker_processes(registry) <= 0:
        problems.append("no worker process has booted")
    if checked:
        if readiness is None:
            problems.append("Redis and storage not checked yet (or the check is stuck)")
        else:
            problems.extend(readiness.problems)
    return problems


class MetricsServer:
    """The HTTP endpoint: ``/metrics`` (Prometheus text), ``/healthz`` (process up), ``/readyz`` (can take jobs).

    ``/readyz`` answers 503 until at least one worker process has booted, and, when ``readiness`` is given (the
    telemetry process always gives it), while Redis or the output bucket is unreachable, so a rollout waits for
    workers that can work and a Service stops routing to a host cut off from its dependencies.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        readiness: Callable[[], Readiness | None] | None = None,
    ) -> None:
        self.registry = registry
        metrics_app = make_wsgi_app(registry)

        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "/")
            if path == "/healthz":
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            if path == "/readyz":
                current = readiness() if readiness is not None else None
                problems = readiness_problems(self.registry, current, readiness is not None)
                status = "503 Service Unavailable" if problems else "200 OK"
                start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
                return [("\n".join(problems) + "\n").encode() if problems else b"ready\n"]
            return metrics_app(environ, start_response)

        self._server = make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
        self.port: int = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_http_server(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    readiness: Callable[[], Readiness | None] | None = None,
) -> MetricsServer | None:
    """Serve :func:`make_registry` on ``settings.metrics_host:metrics_port``; None when the port is 0 (disabled)."""
    if not settings.metrics_port:
        return None
    server = MetricsServer(registry or make_registry(), settings.metrics_host, settings.metrics_port, readiness)
    logger.info("metrics: serving on %s:%d", settings.metrics_host, server.port)
    return server
