"""NVML telemetry: per-GPU utilisation, NVENC/NVDEC load, encoder sessions and memory.

Why it is shaped like this:

* NVML is initialised lazily, once, on the first :meth:`GpuCollector.sample`, so importing this module (or running
  on a CPU-only host) costs nothing.
* A host without a GPU, without ``libnvidia-ml`` or without ``pynvml`` is an ordinary deployment, not an error: the
  collector logs ONE debug line and disables itself for good. It never raises and never publishes zeros – the
  ``render_gpu_*`` series are simply absent, so dashboards and alerts can tell "no GPU" from "idle GPU".
* It returns plain :class:`GpuSample` values and knows nothing of Prometheus: ``worker.telemetry`` publishes them.
* A query a particular GPU does not support (``NVMLError_NotSupported``; e.g. data-centre parts without NVENC)
  leaves that one field ``None`` and its series absent; the other fields still report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuSample:
    """One reading of one GPU. ``None`` means the GPU does not support that query."""

    index: int
    name: str
    utilization_ratio: float | None = None
    encoder_utilization_ratio: float | None = None
    decoder_utilization_ratio: float | None = None
    encoder_sessions: int | None = None
    encoder_fps: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None


class GpuCollector:
    """Reads NVML for every GPU on the host.

    ``nvml`` may be given (a test double with pynvml's function names); by default ``pynvml`` from nvidia-ml-py is
    imported on first use.
    """

    def __init__(self, nvml: ModuleType | Any | None = None) -> None:
        self._nvml: Any = nvml
        self._initialised = False
        self._disabled = False
        self._failed_once: set[str] = set()

    @property
    def enabled(self) -> bool:
        """False once NVML turned out to be unusable here (it is not retried)."""
        return not self._disabled

    def _init(self) -> bool:
        if self._disabled:
            return False
        if self._initialised:
            return True
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            count = int(self._nvml.nvmlDeviceGetCount())
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
            self._disable(f"NVML unavailable ({type(exc).__name__}: {exc})")
            return False
        if count == 0:
            self._shutdown()
            self._disable("NVML reports no GPU")
            return False
        self._initialised = True
        return True

    def _disable(self, why: str) -> None:
        self._disabled = True
        logger.debug("gpu telemetry disabled: %s", why)

    def sample(self) -> list[GpuSample]:
        """One :class:`GpuSample` per GPU; an empty list where there is no usable GPU."""
        if not self._init():
            return []
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            self._note("count", exc)
            return []
        samples = []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except nvml.NVMLError as exc:  # e.g. a GPU that fell off the bus: report the others
                self._note(f"handle[{index}]", exc)
                continue
            samples.append(self._sample_one(index, handle))
        return samples

    def _sample_one(self, index: int, handle: Any) -> GpuSample:
        nvml = self._nvml
        name = self._query("name", nvml.nvmlDeviceGetName, handle)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        util = self._query("utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        enc = self._query("encoder_utilization", nvml.nvmlDeviceGetEncoderUtilization, handle)
        dec = self._query("decoder_utilization", nvml.nvmlDeviceGetDecoderUtilization, handle)
        stats = self._query("encoder_stats", nvml.nvmlDeviceGetEncoderStats, handle)
        mem = self._query("memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        return GpuSample(
            index=index,
            name=str(name) if name is not None else "unknown",
            utilization_ratio=util.gpu / 100.0 if util is not None else None,
            encoder_utilization_ratio=enc[0] / 100.0 if enc is not None else None,
            decoder_utilization_ratio=dec[0] / 100.0 if dec is not None else None,
            encoder_sessions=int(stats[0]) if stats is not None else None,
            encoder_fps=float(stats[1]) if stats is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
            memory_total_bytes=int(mem.total) if mem is not None else None,
        )

    def _query(self, what: str, fn: Any, handle: Any) -> Any:
        nvml = self._nvml
        try:
            return fn(handle)
        except nvml.NVMLError_NotSupported:
            return None  # this GPU lacks the feature: the series stays absent, silently
        except nvml.NVMLError as exc:
            self._note(what, exc)
            return None

    def _note(self, what: str, exc: Exception) -> None:
        # Unexpected NVML errors are logged once per query kind, then ignored: telemetry must not flood the logs.
        if what not in self._failed_once:
            self._failed_once.add(what)
            logger.warning("gpu telemetry: %s failed: %s", what, exc)

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - best effort at exit
            logger.debug("nvmlShutdown failed", exc_info=True)

    def close(self) -> None:
        if self._initialised:
            self._shutdown()
            self._initialised = False
