"""The shape of the package (issue 19): no import cycle, and no import back up a layer.

Read from the source with ``ast``, so it covers every import, lazy ones inside functions included. The layers,
lowest first, are the flow of one job (ARCHITECTURE.md): the pure core (plan, probe, presets, graph, the
planner) knows nothing of Redis, S3, the renderer or the queue; the renderers know nothing of the queue; the
pipeline knows nothing of Dramatiq.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "worker"

#: Each module's layer; a module may import only from its own layer or below. A new module is added here.
LAYERS: dict[str, int] = {
    # 0: the contract's vocabulary and the settings
    "worker": 0,
    "worker.errors": 0,
    "worker.settings": 0,
    "worker.logsafe": 0,
    "worker.allowlists": 0,
    # 1: pure building blocks, and the runner
    "worker.plan": 1,
    "worker.chunks": 1,
    "worker.probe": 1,
    "worker.presets": 1,
    "worker.scratch": 1,
    "worker.ffmpeg": 1,
    "worker.netguard": 1,
    "worker.gpu": 1,
    "worker.loudness": 1,
    "worker.reframe": 1,
    # 2: what to make, and how a graph and an encoder are chosen
    "worker.exports.timecode": 2,
    "worker.exports.cut": 2,
    "worker.exports.xmeml": 2,
    "worker.exports.fcpxml": 2,
    "worker.exports.edl": 2,
    "worker.exports.otio": 2,
    "worker.exports": 2,
    "worker.output": 2,
    "worker.encoding": 2,
    "worker.graph": 2,
    "worker.gops": 2,
    "worker.smart": 2,
    "worker.cover": 2,
    "worker.encoders": 2,
    # 3: the planner
    "worker.planner": 3,
    # 4: renderers and the export run
    "worker.render": 4,
    "worker.render.result": 4,
    "worker.render.packets": 4,
    "worker.render.smart": 4,
    "worker.render.encode": 4,
    "worker.render.track": 4,
    "worker.render.together": 4,
    "worker.render.splice": 4,
    "worker.render.whole": 4,
    "worker.render.parts": 4,
    "worker.render.chunked": 4,
    "worker.render.loudness": 4,
    "worker.render.faces": 4,
    "worker.exports.file": 4,
    # 5: the services a queue worker talks to, and the job message
    "worker.storage": 5,
    "worker.storage.base": 5,
    "worker.storage.memory": 5,
    "worker.storage.s3": 5,
    "worker.records": 5,
    "worker.records.base": 5,
    "worker.records.memory": 5,
    "worker.records.redis_store": 5,
    "worker.webhooks": 5,
    "worker.jobs": 5,
    "worker.source_cache": 5,
    # 6: one delivery
    **{f"worker.pipeline{m}": 6 for m in ("", ".deps", ".messages", ".guards", ".events", ".outputs")},
    **{f"worker.pipeline{m}": 6 for m in (".completion", ".sources", ".export_job", ".chunked", ".flow")},
    # 7: the queue, the metrics side and the command line
    "worker.deliveries": 7,
    "worker.telemetry": 7,
    "worker.telemetry.definitions": 7,
    "worker.telemetry.exposition": 7,
    "worker.telemetry.middleware": 7,
    "worker.telemetry.observer": 7,
    "worker.telemetry.process": 7,
    "worker.telemetry.queues": 7,
    "worker.telemetry.readiness": 7,
    "worker.actors": 7,
    "worker.cli.base": 8,
    "worker.cli.local": 8,
    "worker.cli.queue": 8,
    "worker.cli": 8,
    "worker.cli.__main__": 8,
}
#: Libraries of the services: the core and the renderers (below the services' own modules) never touch them.
SERVICE_LIBRARIES = ("redis", "boto3", "botocore", "dramatiq")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(path: Path, known: set[str], *, top_level_only: bool = False) -> set[str]:
    """The worker modules and the libraries ``path`` imports (``from pkg import submodule`` is the submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def test_every_module_has_a_layer() -> None:
    assert set(modules()) - set(LAYERS) == set(), "add the new module to LAYERS"


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_import_goes_up_a_layer(name: str) -> None:
    known = set(modules())
    path = modules()[name]
    up = sorted(m for m in imports(path, known) if m in LAYERS and LAYERS[m] > LAYERS[name])
    assert up == [], f"{name} (layer {LAYERS[name]}) imports from above its layer: {up}"
    if LAYERS[name] < LAYERS["worker.storage"]:
        libs = sorted(m for m in imports(path, known) if m.split(".")[0] in SERVICE_LIBRARIES)
        assert libs == [], f"{name} is below the services' layer and imports {libs}"


def test_no_import_cycle() -> None:
    """Module-level imports only (what runs at import time); a cycle is reported as its modules."""
    known = set(modules())
    graph = {name: imports(path, known, top_level_only=True) & known for name, path in modules().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_guards_bite() -> None:
    """The checks above read what they claim to: a lazy import inside a function counts, and a submodule
    named through its package resolves to the submodule."""
    known = set(modules())
    flow = imports(modules()["worker.pipeline.flow"], known)
    assert "worker.planner" in flow and "worker.pipeline.outputs" in flow
    cli = imports(modules()["worker.cli.queue"], known)
    assert "worker.pipeline" in cli  # imported inside a command, not at the top
