"""deploy/ stays consistent with the code: settings names, ports, shutdown timing, autoscaling, scraping, schemas,
images, dashboard structure."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
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
# Seconds a draining pod needs on top of the render's own time limit: the source download and the upload.
TRANSFER_MARGIN_S = 600
JOB = "render-worker"  # the scrape job the dashboard, the alerts and the KEDA queries select

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
    assert kinds["Namespace"] == 1
    assert kinds["PodMonitor"] == 1
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


def test_scale_down_never_stops_a_render(k8s: list[dict[str, Any]], config: dict[str, str]) -> None:
    """Whichever pod a scale-down or rollout stops, the render it holds finishes: the drain on SIGTERM lasts as long
    as the longest render plus its transfers, and the kubelet waits longer than the drain."""
    for dep in _deployments(k8s):
        name = dep["metadata"]["name"]
        settings = Settings.from_env(_effective_env(dep, config))
        assert settings.shutdown_timeout_s >= settings.time_limit_s + TRANSFER_MARGIN_S, name
        grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= settings.shutdown_timeout_s + GRACE_MARGIN_S, name


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
        # Scraped by the PodMonitor only: annotation scraping would add a second copy under another job name.
        annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
        assert not [a for a in annotations if a.startswith("prometheus.io/")], name
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
    assert Settings.from_env(env).ffmpeg_path == "", "the bundled ffmpeg (NVENC, runs the graphs), not a system one"


def test_service_selects_the_worker_pods(k8s: list[dict[str, Any]]) -> None:
    service = _one(k8s, "Service")
    for dep in _deployments(k8s):
        assert service["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def _jobs_per_pod(dep: dict[str, Any]) -> int:
    """Renders one pod runs at once: worker processes x threads, from the container's args (defaults 1 and 1)."""
    args = list(_container(dep).get("args", []))
    value = {"--processes": 1, "--threads": 1}
    for flag, alias in (("--processes", "-p"), ("--threads", "-t")):
        for i, arg in enumerate(args[:-1]):
            if arg in (flag, alias):
                value[flag] = int(args[i + 1])
    return value["--processes"] * value["--threads"]


def test_scaled_objects_ask_for_one_pod_per_waiting_or_running_job(
    k8s: list[dict[str, Any]], config: dict[str, str]
) -> None:
    deployments = {d["metadata"]["name"]: d for d in _deployments(k8s)}
    settings = Settings.from_env(config)
    redis_url = urlsplit(settings.redis_url)
    scaled = [d for d in k8s if d["kind"] == "ScaledObject"]
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == set(deployments)
    for so in scaled:
        name = so["metadata"]["name"]
        dep = deployments[so["spec"]["scaleTargetRef"]["name"]]
        assert _jobs_per_pod(dep) == 1, f"{name}: KEDA's arithmetic below assumes one render per pod"
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        assert so["spec"]["minReplicaCount"] >= 1, "the telemetry lives in the worker pods"
        # One composite metric, waiting + in flight, one replica per unit: HPA would take the max of two separate
        # triggers, which under-counts (5 waiting and 5 running would ask for 5 pods, not 10).
        modifiers = so["spec"]["advanced"]["scalingModifiers"]
        assert modifiers["formula"].replace(" ", "") == "waiting+inflight", name
        assert float(modifiers["target"]) == 1 and modifiers.get("metricType", "AverageValue") == "AverageValue"
        triggers = {t["name"]: t for t in so["spec"]["triggers"]}
        assert set(triggers) == {"waiting", "inflight"}, name
        waiting = triggers["waiting"]
        assert waiting["type"] == "redis"
        meta = waiting["metadata"]
        assert meta["listName"] == f"dramatiq:{settings.queue}"
        assert meta["address"] == f"{redis_url.hostname}:{redis_url.port or 6379}"
        assert meta.get("databaseIndex", "0") == (redis_url.path.lstrip("/") or "0")
        inflight = triggers["inflight"]
        assert inflight["type"] == "prometheus"
        query = inflight["metadata"]["query"]
        assert "render_jobs_in_progress" in query and f'job="{JOB}"' in query, name
        component = dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        assert f'component="{component}"' in query, f"{name} must count only its own Deployment's renders"


def _podmonitor(k8s: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(k8s, "PodMonitor")


def test_podmonitor_scrapes_every_worker_pod_as_the_job_everything_selects(k8s: list[dict[str, Any]]) -> None:
    spec = _podmonitor(k8s)["spec"]
    (endpoint,) = spec["podMetricsEndpoints"]
    for dep in _deployments(k8s):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), dep["metadata"]["name"]
        assert endpoint["port"] in {p["name"] for p in _container(dep)["ports"]}
    relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    assert relabel["job"]["action"] == "replace" and relabel["job"]["replacement"] == JOB
    assert relabel["component"]["sourceLabels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]


def test_every_expression_selects_the_scraped_job() -> None:
    """An alert or a KEDA query on another job name would select nothing and never fire or scale."""
    from promql import all_exprs

    jobs = {m for _, expr in all_exprs() for m in re.findall(r'\bjob\s*=~?\s*"([^"]*)"', expr)}
    assert jobs == {JOB}
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert JOB in {j["job_name"] for j in config["scrape_configs"]}


# --- kustomize output against the Kubernetes and KEDA / Prometheus Operator schemas ------------------------------

SCHEMAS = ROOT / "tests" / "k8s_schemas"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCHEMAS / "scaledobject-keda-v1alpha1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): SCHEMAS / "podmonitor-monitoring-v1.json",
}
KUBERNETES_VERSION = "1.30"
CLUSTER_SCOPED = {"Namespace"}


def render_kustomization(directory: Path = K8S) -> list[dict[str, Any]]:
    """What `kubectl kustomize` makes of our kustomization: its resources in order, with its namespace set.

    Only the two features deploy/k8s uses (resources, namespace); anything else in the kustomization fails here
    rather than being ignored.
    """
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "namespace", "resources"}
    assert not unsupported, f"render_kustomization does not implement {unsupported}"
    namespace = kustomization.get("namespace")
    out = []
    for resource in kustomization["resources"]:
        for doc in _docs(directory / resource):
            if namespace:
                if doc["kind"] in CLUSTER_SCOPED:
                    if doc["kind"] == "Namespace":
                        doc["metadata"]["name"] = namespace
                else:
                    doc["metadata"]["namespace"] = namespace
            out.append(doc)
    return out


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render_kustomization()


def test_kustomize_output_is_what_kubectl_would_apply(rendered: list[dict[str, Any]]) -> None:
    assert {d["kind"] for d in rendered} >= {"Namespace", "Deployment", "ScaledObject", "PodMonitor"}
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    for doc in rendered:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == namespace
        else:
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
    # The in-cluster addresses in the manifests name that namespace too.
    config = _one(rendered, "ConfigMap")["data"]
    assert urlsplit(config["RENDER_REDIS_URL"]).hostname.split(".")[1] == namespace  # type: ignore[union-attr]
    kubectl = shutil.which("kubectl")
    if kubectl is not None:  # where kubectl exists, its own kustomize must agree with the renderer above
        proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        theirs = sorted(
            (
                (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))
                for d in yaml.safe_load_all(proc.stdout)
            ),
        )
        ours = sorted((d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in rendered)
        assert theirs == ours


def _validate(doc: dict[str, Any]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        schema = json.loads(CRD_SCHEMAS[key].read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomize_output_validates_against_the_schemas(rendered: list[dict[str, Any]]) -> None:
    kinds = set()
    for doc in rendered:
        try:
            _validate(doc)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
        kinds.add(doc["kind"])
    assert {"Deployment", "ScaledObject", "PodMonitor", "Namespace"} <= kinds


@pytest.mark.parametrize(
    "kind, path, bad",
    [
        ("Deployment", ("spec", "template", "spec", "terminationGracePeriod"), 15660),  # misspelt field
        ("ScaledObject", ("spec", "advanced", "scalingModifier"), {"formula": "waiting"}),  # misspelt field
        ("PodMonitor", ("spec", "podMetricsEndpoints", 0, "interval"), "15 seconds"),  # bad value
        ("Namespace", ("spec", "finalizers"), "kubernetes"),  # wrong type
    ],
)
def test_schema_validation_catches_mistakes(
    rendered: list[dict[str, Any]], kind: str, path: tuple[Any, ...], bad: Any
) -> None:
    """The validator bites: each schema (Kubernetes, KEDA, Prometheus Operator) rejects a broken copy."""
    doc = copy.deepcopy(next(d for d in rendered if d["kind"] == kind))
    target = doc
    for step in path[:-1]:
        target = target.setdefault(step, {}) if isinstance(step, str) else target[step]
    target[path[-1]] = bad
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        _validate(doc)


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


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles(name: str) -> None:
    instructions = _instructions(DEPLOY / name)
    froms = [rest for word, rest in instructions if word == "FROM"]
    # The GPU image needs no CUDA base: ffmpeg and NVML load the driver libraries the NVIDIA toolkit mounts.
    assert froms[-1].startswith("python:3.11-slim"), froms
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
                ignore = (DEPLOY / f"{name}.dockerignore").read_text().splitlines()
                assert f"!{source.rstrip('/')}" in ignore or f"!{source.rstrip('/')}/" in ignore, (
                    f"{name}.dockerignore keeps {source} out of the build context"
                )
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "render-worker" in scripts
    env_text = " ".join(rest for word, rest in instructions if word == "ENV")
    # ffmpeg is the bundled one (it runs -/filter_complex and has NVENC); no distribution ffmpeg for rendering.
    assert "RENDER_FFMPEG_PATH" not in env_text
    runs = [rest for word, rest in instructions if word == "RUN"]
    assert not [r for r in runs if re.search(r"apt(-get)?\s+install[^&;]*\bffmpeg\b", r)], name
    # Every pip install of the worker installs the tested versions from constraints.txt.
    installs = [r for r in runs if re.search(r"\bpip install\b", r)]
    assert installs, name
    for run in installs:
        assert re.search(r"pip install (-c|--constraint|-r) \S*constraints\.txt", run), f"{name}: {run}"
    for run in runs:
        if "pip wheel" in run:
            assert "--no-deps" in run, "dependencies come from the constraints, not from a resolve at build time"
    if name == "Dockerfile.cuda":
        caps = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env_text)
        assert caps is not None and {"video", "utility"} <= set(caps.group(1).split(","))


def _nvenc_driver_minimum() -> str:
    """The minimum NVIDIA driver the bundled ffmpeg's NVENC needs, read from the binary the images install."""
    import imageio_ffmpeg

    binary = Path(imageio_ffmpeg.get_ffmpeg_exe()).read_bytes()
    assert b"The minimum required Nvidia driver for nvenc is" in binary, "the bundled ffmpeg has no NVENC"
    found = set(re.findall(rb"\x00([3-9][0-9]{2}\.[0-9]{2})\x00", binary))
    assert len(found) == 1, found
    return found.pop().decode()


def test_gpu_image_states_the_driver_its_ffmpeg_needs() -> None:
    minimum = _nvenc_driver_minimum()
    dockerfile = (DEPLOY / "Dockerfile.cuda").read_text()
    assert f"NVIDIA driver >= {minimum}" in dockerfile
    operate = (ROOT / "README.md").read_text().split("## Operate the fleet", 1)[1]
    assert f"driver >= {minimum}" in operate.replace("≥ ", ">= ")


def test_bundled_ffmpeg_runs_the_worker_graphs_and_has_nvenc() -> None:
    """The GPU image renders with this binary: it must be >= 7 (for -/filter_complex) and built with NVENC."""
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    version = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, text=True, timeout=30).stdout
    major = re.match(r"ffmpeg version n?(\d+)", version)
    assert major is not None and int(major.group(1)) >= 7, version.splitlines()[0]
    encoders = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30).stdout
    assert "h264_nvenc" in encoders and "hevc_nvenc" in encoders


def test_compose_gpu_worker_uses_the_bundled_ffmpeg(compose: dict[str, Any]) -> None:
    for name in ("worker", "worker-gpu"):
        assert "RENDER_FFMPEG_PATH" not in compose["services"][name]["environment"], name


def test_operate_doc_explains_every_alert() -> None:
    doc = (ROOT / "README.md").read_text()
    for path in (DEPLOY / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                assert rule["alert"] in doc, rule["alert"]
                assert rule["annotations"]["runbook"] and rule["annotations"]["summary"]


def test_cancels_show_beside_failures_and_never_count_as_failures(dashboard: dict[str, Any]) -> None:
    """A cancel (issue 12) is a finished render someone asked to stop: visible, but never in a failure ratio.

    Every use of render_jobs_total in the alert rules and in the dashboard's failure ratio leaves the
    cancelled outcome out; the finished-renders panel splits by outcome, so cancels are a line of their own.
    """
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "render-worker.rules.yml").read_text())
    rule_exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    uses = [m for e in rule_exprs for m in re.findall(r"render_jobs_total(\{[^}]*\})?", e)]
    assert uses, "the failure-ratio alert reads render_jobs_total"
    assert all('outcome!="cancelled"' in (labels or "") for labels in uses), uses
    targets = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    by_outcome = [t for t, e in targets if re.search(r"sum by \(outcome\) \(rate\(render_jobs_total\[", e)]
    assert by_outcome, "no panel shows finished renders by outcome (cancelled beside failed)"
    ratios = [e for _, e in targets if "render_failures_total" in e and "render_jobs_total" in e]
    assert ratios and all('render_jobs_total{outcome!="cancelled"}' in e for e in ratios), ratios


def test_lifecycle_rule_expires_the_chunk_pieces_and_nothing_else() -> None:
    """deploy/s3-lifecycle.json expires the temporary prefix of chunked renders, which holds nothing else."""
    from worker.pipeline import TMP_PREFIX, piece_key
    from worker.settings import Settings
    from worker.storage import output_key

    rules = json.loads((ROOT / "deploy" / "s3-lifecycle.json").read_text())["Rules"]
    assert [r["Filter"] for r in rules] == [{"Prefix": TMP_PREFIX}]
    assert rules[0]["Status"] == "Enabled" and rules[0]["Expiration"]["Days"] >= 1
    for prefix in ("renders", "", "a/b"):
        s = Settings(output_prefix=prefix)
        assert piece_key(s, "rnd_1", "mp4", 7).startswith(TMP_PREFIX)
        assert not output_key(s.output_prefix, "rnd_1", "mp4").startswith(TMP_PREFIX)
