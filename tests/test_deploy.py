"""deploy/ stays consistent with the code: settings names, ports, shutdown timing, images, dashboard structure."""

from __future__ import annotations

import json
import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from worker.settings import SETTINGS, Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SETTING_ENVS = {s.env for s in SETTINGS}
DEFAULTS = Settings()
# Seconds the pod keeps after the shutdown timeout for the requeue and process exit.
GRACE_MARGIN_S = 30

_RENDER_NAME = re.compile(r"\bRENDER_[A-Z0-9_]*[A-Z0-9]\b")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in _docs(p)]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def _deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "Deployment"]


@pytest.fixture(scope="module")
def config(k8s: list[dict[str, Any]]) -> dict[str, str]:
    data = _one(k8s, "ConfigMap")["data"]
    return {k: str(v) for k, v in data.items()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


# --- settings names -------------------------------------------------------------------------------------------


def test_every_render_name_in_deploy_is_a_real_setting() -> None:
    unknown = {}
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            names = set(_RENDER_NAME.findall(path.read_text(errors="replace")))
            if names - SETTING_ENVS:
                unknown[str(path.relative_to(ROOT))] = sorted(names - SETTING_ENVS)
    assert not unknown, f"RENDER_* names that worker/settings.py does not define: {unknown}"


def test_env_keys_are_settings_or_standard(config: dict[str, str], compose: dict[str, Any]) -> None:
    keys = set(config)
    for service in compose["services"].values():
        keys |= set(service.get("environment") or {})
    standard = {k for k in keys if not k.startswith("RENDER_")}
    assert keys - standard <= SETTING_ENVS
    worker_env = compose["services"]["worker"]["environment"]
    assert {k for k in worker_env if not k.startswith("RENDER_")} <= {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
    }
    # Values parse with the worker's own settings parser.
    Settings.from_env(config)
    Settings.from_env({k: str(v) for k, v in worker_env.items()})


# --- Kubernetes -----------------------------------------------------------------------------------------------


def test_k8s_manifests_parse_with_expected_kinds(k8s: list[dict[str, Any]]) -> None:
    kinds = Counter(d["kind"] for d in k8s)
    assert kinds["Deployment"] == 2
    assert kinds["ScaledObject"] >= 1
    assert kinds["Service"] == 1
    assert kinds["ConfigMap"] == 1
    assert kinds["Secret"] == 1
    kustomization = _one(k8s, "Kustomization")
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    for doc in k8s:
        assert doc.get("apiVersion"), doc["kind"]


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _effective_env(dep: dict[str, Any], config: dict[str, str]) -> dict[str, str]:
    env = dict(config)
    env.update({e["name"]: str(e["value"]) for e in _container(dep).get("env", []) if "value" in e})
    return env


def test_termination_grace_outlasts_shutdown_timeout(k8s: list[dict[str, Any]], config: dict[str, str]) -> None:
    for dep in _deployments(k8s):
        settings = Settings.from_env(_effective_env(dep, config))
        grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= settings.shutdown_timeout_s + GRACE_MARGIN_S, dep["metadata"]["name"]


def test_compose_stop_grace_outlasts_shutdown_timeout(compose: dict[str, Any]) -> None:
    for name in ("worker", "worker-gpu"):
        service = compose["services"][name]
        timeout = Settings.from_env({k: str(v) for k, v in service["environment"].items()}).shutdown_timeout_s
        grace = service["stop_grace_period"]
        assert grace.endswith("s")
        assert float(grace[:-1]) >= timeout + GRACE_MARGIN_S, name


# Room on top of a source and its output: /tmp, container logs.
EPHEMERAL_MARGIN_BYTES = 2 * 1024**3
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _bytes(quantity: object) -> int:
    """A Kubernetes storage quantity ("48Gi", "500M", 1024) in bytes."""
    m = _QUANTITY.match(str(quantity))
    assert m, f"not a storage quantity: {quantity!r}"
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def test_quantities_parse() -> None:
    assert _bytes("4Gi") == 4 * 1024**3 and _bytes("500M") == 500_000_000 and _bytes(1024) == 1024


def test_pods_have_ephemeral_storage_for_the_largest_source_and_output(
    k8s: list[dict[str, Any]], config: dict[str, str]
) -> None:
    """A render holds its source and its output in RENDER_WORK_DIR at once; the pod must have room for both.

    The largest source is RENDER_MAX_SOURCE_BYTES as that deployment is configured
    (the code's default where the manifests don't set it); an output is never
    larger than its source plus a margin (its bitrate is capped to the source's).
    """
    for dep in _deployments(k8s):
        name = dep["metadata"]["name"]
        env = _effective_env(dep, config)
        settings = Settings.from_env(env)
        need = 2 * settings.max_source_bytes + EPHEMERAL_MARGIN_BYTES
        resources = _container(dep)["resources"]
        limit = _bytes(resources["limits"]["ephemeral-storage"])
        assert limit >= need, (
            f"{name}: ephemeral-storage {limit} < {need} for sources up to {settings.max_source_bytes}"
        )
        # Scheduled only where the space is: a node that runs out evicts renders mid-job.
        assert _bytes(resources["requests"]["ephemeral-storage"]) >= need, name
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in _container(dep)["volumeMounts"]}
        work = volumes[mounts[env["RENDER_WORK_DIR"]]]["emptyDir"]
        assert work.get("medium") != "Memory", name
        assert _bytes(work["sizeLimit"]) >= 2 * settings.max_source_bytes, name
        # Every disk-backed emptyDir counts against the container's limit: they must fit in it together.
        on_disk = sum(_bytes(v["emptyDir"]["sizeLimit"]) for v in volumes.values()
                      if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory")  # fmt: skip
        assert on_disk <= limit, name


def test_deployments_probe_the_metrics_port(k8s: list[dict[str, Any]], config: dict[str, str]) -> None:
    configmap = _one(k8s, "ConfigMap")["metadata"]["name"]
    secret = _one(k8s, "Secret")["metadata"]["name"]
    for dep in _deployments(k8s):
        name = dep["metadata"]["name"]
        c = _container(dep)
        settings = Settings.from_env(_effective_env(dep, config))
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == settings.metrics_port, name
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, name
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, name
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], name
        assert c["resources"]["limits"]["memory"], name
        refs = {next(iter(ref.values()))["name"] for ref in c["envFrom"]}
        assert refs == {configmap, secret}, name
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(settings.metrics_port)
        # The multiprocess directory is a volume, so a read-only root filesystem still works.
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert settings.metrics_dir in mounts and settings.work_dir in mounts and "/tmp" in mounts
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_gpu_deployment_requests_a_gpu_and_nvenc(k8s: list[dict[str, Any]], config: dict[str, str]) -> None:
    gpu = [d for d in _deployments(k8s) if "nvidia.com/gpu" in _container(d)["resources"].get("limits", {})]
    cpu = [d for d in _deployments(k8s) if d not in gpu]
    assert len(gpu) == 1 and len(cpu) == 1
    c = _container(gpu[0])
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    env = _effective_env(gpu[0], config)
    assert Settings.from_env(env).nvenc == "auto"
    assert "video" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    assert "cuda" in c["image"]


def test_service_selects_the_worker_pods(k8s: list[dict[str, Any]]) -> None:
    service = _one(k8s, "Service")
    for dep in _deployments(k8s):
        assert service["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_scaled_objects_scale_on_the_dramatiq_ready_list(k8s: list[dict[str, Any]], config: dict[str, str]) -> None:
    deployments = {d["metadata"]["name"] for d in _deployments(k8s)}
    settings = Settings.from_env(config)
    redis_url = urlsplit(settings.redis_url)
    scaled = [d for d in k8s if d["kind"] == "ScaledObject"]
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == deployments
    for so in scaled:
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        assert so["spec"]["minReplicaCount"] >= 1, "the telemetry lives in the worker pods"
        redis_triggers = [t for t in so["spec"]["triggers"] if t["type"] == "redis"]
        assert len(redis_triggers) == 1
        meta = redis_triggers[0]["metadata"]
        assert meta["listName"] == f"dramatiq:{settings.queue}"
        assert int(meta["listLength"]) >= 1
        assert meta["address"] == f"{redis_url.hostname}:{redis_url.port or 6379}"
        assert meta.get("databaseIndex", "0") == (redis_url.path.lstrip("/") or "0")


# --- compose, Prometheus, Grafana -----------------------------------------------------------------------------


def test_compose_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "minio", "create-buckets", "worker", "prometheus", "grafana"} <= set(services)
    assert (ROOT / services["worker"]["build"]["dockerfile"]).is_file()
    assert (ROOT / services["worker-gpu"]["build"]["dockerfile"]).is_file()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), volume
    env = Settings.from_env({k: str(v) for k, v in services["worker"]["environment"].items()})
    assert env.output_bucket in services["create-buckets"]["command"][0]
    assert urlsplit(env.redis_url).hostname == "redis"
    assert urlsplit(env.s3_endpoint_url).hostname == "minio"
    prometheus_mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"] if v.startswith("."))
    assert prometheus_mounts["./prometheus/rules"] == "/etc/prometheus/rules"


def test_prometheus_scrapes_the_worker_job(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    worker = jobs["render-worker"]
    port = Settings.from_env({k: str(v) for k, v in compose["services"]["worker"]["environment"].items()}).metrics_port
    assert worker["dns_sd_configs"][0]["port"] == port
    assert worker["dns_sd_configs"][0]["names"] == ["worker"]
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


def test_grafana_provisioning_matches_compose(compose: dict[str, Any]) -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and urlsplit(ds["url"]).hostname == "prometheus"
    provider = yaml.safe_load((prov / "dashboards" / "render-worker.yml").read_text())["providers"][0]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("."))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert Path(mounts["./grafana/render-worker.json"]).parent == Path(provider["options"]["path"])


# --- dashboard ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads((DEPLOY / "grafana" / "render-worker.json").read_text()))


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "render-worker"
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    rows = [p for p in panels if p["type"] == "row"]
    assert len(rows) >= 6
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 15
    for p in graphs:
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= g.keys() and g["x"] + g["w"] <= 24, p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}"


def test_dashboard_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in dashboard["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_dashboard_covers_the_operator_questions(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for needle in (
        "render_queue_depth",
        "render_queue_oldest_age_seconds",
        "render_failures_total",
        "histogram_quantile(0.95, sum by (le, format) (rate(render_job_duration_seconds_bucket",
        "render_realtime_factor_bucket",
        "render_jobs_in_progress",
        "render_upload_bytes_total",
        "render_gpu_utilization_ratio",
        "render_gpu_encoder_utilization_ratio",
        "render_gpu_encoder_sessions",
        "render_gpu_memory_used_bytes",
        'up{job="render-worker"}',
        "render_worker_processes",
        "dramatiq_messages_inprogress",
    ):
        assert needle in exprs, needle


# --- images ---------------------------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name, base", [("Dockerfile", "python:3.11-slim"), ("Dockerfile.cuda", "nvidia/cuda:")])
def test_dockerfiles(name: str, base: str) -> None:
    instructions = _instructions(DEPLOY / name)
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert froms[-1].startswith(base), froms
    users = [rest for word, rest in instructions if word == "USER"]
    assert users, "the image must drop root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    entrypoints = [rest for word, rest in instructions if word == "ENTRYPOINT"]
    assert json.loads(entrypoints[-1]) == ["render-worker"]
    exposed = [rest for word, rest in instructions if word == "EXPOSE"]
    assert exposed == [str(DEFAULTS.metrics_port)]
    for word, rest in instructions:
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"{name}: COPY {source} (build context is the repository root)"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "render-worker" in scripts
    if name == "Dockerfile.cuda":
        env_text = " ".join(rest for word, rest in instructions if word == "ENV")
        caps = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env_text)
        assert caps is not None and {"video", "utility"} <= set(caps.group(1).split(","))


def test_operate_doc_explains_every_alert() -> None:
    doc = (ROOT / "README.md").read_text()
    for path in (DEPLOY / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                assert rule["alert"] in doc, rule["alert"]
                assert rule["annotations"]["runbook"] and rule["annotations"]["summary"]
