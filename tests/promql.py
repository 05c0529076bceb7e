"""A small PromQL metric-name extractor, and the list of every PromQL expression shipped in ``deploy/``.

Used by tests/test_metrics_static.py (names checked against a scrape of exercised metrics) and meant to be reused by
a live-scrape test with real workers. Not a PromQL parser: it removes everything that cannot be a metric name
(strings, label matchers, ranges, grouping clauses, numbers, Grafana variables) and keeps identifiers that are not
keywords and are not called like functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "render-worker.json"
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
K8S_DIR = DEPLOY / "k8s"

# Series Prometheus makes up for every target; they are in no scrape.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"})

_KEYWORDS = frozenset(
    {
        "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
        "inf", "nan", "start", "end", "atan2",
    }
)  # fmt: skip

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_COMMENT = re.compile(r"#[^\n]*")
_NAME_MATCHER = re.compile(r"__name__\s*=\s*(\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*')")
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_TOKEN = re.compile(r"(?P<number>\d[\w.]*(?:[eE][+-]?\d+)?)|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects, e.g. ``{"render_job_duration_seconds_bucket"}``.

    Handles functions and aggregations (``rate(``, ``sum by (le) (``), label matchers, range and subquery selectors,
    ``offset``/``@``, binary operators with ``on``/``ignoring``/``group_left``, string arguments (``label_replace``),
    ``{__name__="x"}`` selectors and Grafana variables such as ``$__rate_interval``. Suffixes such as ``_bucket``
    stay on the name: they are compared with the sample names of a scrape.
    """
    names: set[str] = set()
    text = _COMMENT.sub(" ", expr)
    for block in _BRACES.findall(_STRING.sub(lambda m: _protect(m.group(0)), text)):
        for m in _NAME_MATCHER.finditer(_unprotect(block)):
            names.add(m.group(1)[1:-1])
    text = _STRING.sub(" ", text)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _GRAFANA_VAR.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    for m in _TOKEN.finditer(text):
        ident = m.group("ident")
        if ident is None or ident.lower() in _KEYWORDS:
            continue
        rest = text[m.end() :].lstrip()
        if rest.startswith("("):
            continue  # a function or an aggregation
        names.add(ident)
    return names


# Braces inside strings would confuse the brace matcher; swap them out while the braces are located.
def _protect(s: str) -> str:
    return s.replace("{", "\x00").replace("}", "\x01")


def _unprotect(s: str) -> str:
    return s.replace("\x00", "{").replace("\x01", "}")


_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<metric>.*),\s*[A-Za-z_]\w*\s*\)\s*$", re.DOTALL)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_exprs(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """``(where, expr)`` for every panel target and every query variable of the dashboard."""
    dash = json.loads(path.read_text())
    out = []
    for panel in _panels(dash.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query or "")
        m = _LABEL_VALUES.match(query)
        out.append((f"variable {var.get('name')!r}", m.group("metric") if m else query))
    return out


def rule_exprs(paths: list[Path] = RULE_FILES) -> list[tuple[str, str]]:
    out = []
    for path in paths:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                out.append((f"{path.name} {name}", str(rule["expr"])))
    return out


def keda_exprs(directory: Path = K8S_DIR) -> list[tuple[str, str]]:
    """Queries of ``prometheus`` triggers in KEDA ScaledObjects: they must name real metrics too."""
    out = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "ScaledObject":
                continue
            for trigger in doc["spec"].get("triggers", []):
                if trigger.get("type") == "prometheus":
                    out.append((f"{path.name} {doc['metadata']['name']}", trigger["metadata"]["query"]))
    return out


def all_exprs() -> list[tuple[str, str]]:
    return dashboard_exprs() + rule_exprs() + keda_exprs()


def dashboard_and_rule_exprs() -> list[str]:
    """Every PromQL expression shipped in deploy/: dashboard targets and variables, alert rules, KEDA queries."""
    return [expr for _, expr in all_exprs()]
