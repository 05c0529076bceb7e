"""On a lent GPU machine: the NVML collector against a real driver, and the series it exports.

Run there with dramatiq and redis carried as wheels (the GPU image has
prometheus-client and nvidia-ml-py). Prints the samples and the exposition.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from worker.gpu import GpuCollector  # noqa: E402
from worker.telemetry import RenderMetrics  # noqa: E402


def main() -> int:
    registry = CollectorRegistry()
    metrics = RenderMetrics(registry=registry)
    collector = GpuCollector()
    samples = collector.sample()
    metrics.set_gpu_samples(samples)
    print("enabled:", collector.enabled)
    for s in samples:
        print("sample:", s)
    text = generate_latest(registry).decode()
    lines = [line for line in text.splitlines() if line.startswith("render_gpu_")]
    print("\n".join(lines))
    names = {line.split("{")[0] for line in lines}
    print("series names:", sorted(names))
    return 0 if samples and len(names) >= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
