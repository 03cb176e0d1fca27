"""The Kubernetes manifests (deploy/k8s), rendered and validated offline.

No cluster runs here. Every overlay is rendered by `kubectl kustomize` (kustomize v5,
built into kubectl), and every object of a built-in kind is validated by
kubernetes-validate against the Kubernetes 1.30 OpenAPI schemas, strictly: an unknown
field is an error. Its schemas have no custom resources, so the Prometheus Operator's
PodMonitor and PrometheusRule and KServe's InferenceService get a structural check
instead (`CUSTOM_CHECKS`); the InferenceService's predictor, a pod spec inline, is
validated as a Pod. Then the manifests are checked against the code: the probe paths
answer on a real server, ports and label selectors agree, the ConfigMap's variables are
Settings fields, the CronJob's command parses with `ocellus retrain`'s parser, and the
PrometheusRule holds deploy/prometheus/alerts.yml's rules.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml
from helpers import QUICK_START

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy/k8s"
OVERLAYS = ("dev", "production", "kserve")
KUBERNETES_VERSION = "1.30.0"  # the oldest minor release still maintained upstream
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
REGISTRY_CLAIM = "ocellus-registry"
HPA_METRIC = "ocellus_requests_in_flight"
STARTUP_BUDGET_S = 300  # model load, warm-up and batch-size tuning on 2 CPUs
# InferenceService predictor fields that are KServe's own, not a pod spec's.
PREDICTOR_FIELDS = {"minReplicas", "maxReplicas", "timeoutSeconds", "labels", "annotations",
                    "scaleMetric", "scaleTarget", "containerConcurrency"}


def _render(overlay: str) -> list[dict]:
    if not Path(KUBECTL).exists():
        pytest.fail("kubectl is missing (it renders deploy/k8s with its built-in kustomize): "
                    "run `make system-deps`, which installs the `kubectl` package")
    out = subprocess.run([KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize overlays/{overlay}:\n{out.stderr}"
    return [obj for obj in yaml.safe_load_all(out.stdout) if obj]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: _render(overlay) for overlay in OVERLAYS}


def _find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects
            if o["kind"] == kind and name in (None, o["metadata"]["name"])]


def _one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = _find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _server_pod(objects: list[dict]) -> tuple[dict, dict]:
    """The server's pod spec and pod labels: the Deployment's, or KServe's predictor."""
    if isvcs := _find(objects, "InferenceService"):
        predictor = isvcs[0]["spec"]["predictor"]
        return predictor, predictor["labels"]
    template = _one(objects, "Deployment", "ocellus")["spec"]["template"]
    return template["spec"], template["metadata"]["labels"]


def _retrain_pod(objects: list[dict]) -> tuple[dict, dict]:
    template = _one(objects, "CronJob", "ocellus-retrain")["spec"]["jobTemplate"]["spec"][
        "template"]
    return template["spec"], template["metadata"]["labels"]


def _selects(match_labels: dict, labels: dict) -> bool:
    return bool(match_labels) and match_labels.items() <= labels.items()


def _cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# Structural checks of the custom resources: what their operators need to act on them.
def _check_podmonitor(obj: dict) -> None:
    spec = obj["spec"]
    assert spec["selector"]["matchLabels"], "a PodMonitor selects pods by label"
    for endpoint in spec["podMetricsEndpoints"]:
        assert isinstance(endpoint["port"], str) and endpoint["path"].startswith("/")


def _check_prometheusrule(obj: dict) -> None:
    for group in obj["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule) and rule["expr"], rule


def _check_inferenceservice(obj: dict) -> None:
    predictor = obj["spec"]["predictor"]
    assert predictor["containers"][0]["image"]
    pod_spec = {k: v for k, v in predictor.items() if k not in PREDICTOR_FIELDS}
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod",
                                  "metadata": {"name": obj["metadata"]["name"]},
                                  "spec": pod_spec}, KUBERNETES_VERSION, strict=True)


CUSTOM_CHECKS: dict[tuple[str, str], Callable[[dict], None]] = {
    ("monitoring.coreos.com/v1", "PodMonitor"): _check_podmonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): _check_prometheusrule,
    ("serving.kserve.io/v1beta1", "InferenceService"): _check_inferenceservice,
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid(rendered, overlay: str) -> None:
    errors = []
    for obj in rendered[overlay]:
        what = f"overlays/{overlay}: {obj['kind']} {obj['metadata']['name']}"
        assert obj["metadata"].get("namespace"), f"{what}: the overlay sets no namespace"
        check = CUSTOM_CHECKS.get((obj["apiVersion"], obj["kind"]))
        try:
            if check:
                check(obj)
            else:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{what}: {e.message} at {'.'.join(map(str, e.path))}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{what}: {e.message}; a custom resource needs a CUSTOM_CHECKS entry")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_and_selectors_agree(rendered, overlay: str) -> None:
    from service.cli import get_args_parser

    objects = rendered[overlay]
    pod, labels = _server_pod(objects)
    container = pod["containers"][0]
    command = container["command"]
    assert command[:2] == ["ocellus", "serve"], command
    args = get_args_parser().parse_args(command[2:])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.host == "0.0.0.0" and ports["http"] == args.port, (command, ports)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    assert str(args.registry) == mounts[next(n for n, c in claims.items()
                                             if c == REGISTRY_CLAIM)]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http", probe
    _, retrain_labels = _retrain_pod(objects)
    for service in _find(objects, "Service"):  # none in kserve: KServe makes its own
        assert service["spec"]["ports"][0]["targetPort"] in ("http", ports["http"])
        assert _selects(service["spec"]["selector"], labels)
        assert not _selects(service["spec"]["selector"], retrain_labels), \
            "the Service would send traffic to the retrain job's pods"
    monitor = _one(objects, "PodMonitor")
    assert _selects(monitor["spec"]["selector"]["matchLabels"], labels)
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["http"]
    assert _selects(_one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                    labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_startup_probe_and_drain_budget(rendered, overlay: str) -> None:
    from service.settings import Settings

    pod, _ = _server_pod(rendered[overlay])
    container = pod["containers"][0]
    startup = container["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= STARTUP_BUDGET_S
    sleep, seconds = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep"
    config = _one(rendered[overlay], "ConfigMap")["data"]
    timeout = float(config.get("OCELLUS_REQUEST_TIMEOUT_S", Settings().request_timeout_s))
    graceful = re.search(r"timeout_graceful_shutdown=(\d+)",
                         (REPO / "service/cli.py").read_text())
    assert graceful, "service/cli.py no longer passes timeout_graceful_shutdown to uvicorn"
    drain = max(timeout, float(graceful.group(1)))
    assert pod["terminationGracePeriodSeconds"] >= int(seconds) + drain + 10, (
        f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} leaves no "
        f"margin after the preStop sleep ({seconds} s) and the drain ({drain} s)")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_locked_down(rendered, overlay: str) -> None:
    uid = int(re.search(r"--uid (\d+)", (REPO / "Dockerfile").read_text()).group(1))
    for pod, _ in (_server_pod(rendered[overlay]), _retrain_pod(rendered[overlay])):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == uid
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, container["name"]
            assert sc["allowPrivilegeEscalation"] is False, container["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
            # The read-only root leaves /tmp (the upload spool) to an emptyDir.
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volume = next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])
            assert "emptyDir" in volume, container["name"]
            assert "limits" in container["resources"], container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_real_and_fit_the_cpus(rendered, overlay: str, monkeypatch) -> None:
    from service.settings import Settings

    objects = rendered[overlay]
    config = _one(objects, "ConfigMap")
    pod, _ = _server_pod(objects)
    container = pod["containers"][0]
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == config["metadata"]["name"]  # hash suffix too
    names = list(config["data"]) + [e["name"] for e in container["env"] if e["name"] != "PROTOCOL"]
    fields = set(Settings.model_fields)
    for name in names:
        assert name.startswith("OCELLUS_") and name[8:].lower() in fields, (
            f"{name} is no setting: service/settings.py has {sorted(fields)}")
    for env in container["env"]:
        if "valueFrom" in env:
            ref = env["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "ocellus-secrets" and ref["optional"] is True, env
    for name, value in config["data"].items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # the values parse too
    assert settings.reload_drain_seconds > settings.request_timeout_s
    cpus = _cpus(container["resources"]["limits"]["cpu"])
    assert 0 < settings.torch_threads <= cpus, "torch would size its pool to the node's cores"
    assert 0 < settings.decode_threads <= cpus
    retrain, _ = _retrain_pod(objects)
    env = {e["name"]: e.get("value") for e in retrain["containers"][0]["env"]}
    assert 0 < int(env["OMP_NUM_THREADS"]) <= _cpus(
        retrain["containers"][0]["resources"]["limits"]["cpu"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_retrain_cronjob(rendered, overlay: str) -> None:
    from training.retrain import EXIT_ERROR, EXIT_KEPT, get_args_parser

    objects = rendered[overlay]
    cronjob = _one(objects, "CronJob", "ocellus-retrain")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    job = cronjob["spec"]["jobTemplate"]["spec"]
    pod, _ = _retrain_pod(objects)
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:2] == ["ocellus", "retrain"], command
    try:
        args = get_args_parser().parse_args(command[2:])
    except SystemExit:
        pytest.fail(f"`ocellus retrain` refuses the CronJob's arguments: {command[2:]}")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    registry = volumes[mounts[str(args.registry)]["name"]]["persistentVolumeClaim"]
    assert registry["claimName"] == REGISTRY_CLAIM  # the volume the server reads
    for path in (args.data, args.eval_data):
        assert any(path.is_relative_to(m) and mounts[m].get("readOnly") for m in mounts), path
    # Kept and error are decisions, not crashes: no retry (podFailurePolicy needs Never).
    assert pod["restartPolicy"] == "Never"
    (fail,) = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert sorted(fail["onExitCodes"]["values"]) == sorted([EXIT_ERROR, EXIT_KEPT])
    assert fail["onExitCodes"]["containerName"] == container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_volumes_and_names_resolve(rendered, overlay: str) -> None:
    objects = rendered[overlay]
    claims = {c["metadata"]["name"]: c for c in _find(objects, "PersistentVolumeClaim")}
    for pod, _ in (_server_pod(objects), _retrain_pod(objects)):
        for volume in pod["volumes"]:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, volume
        names = {v["name"] for v in pod["volumes"]}
        for container in pod["containers"] + pod.get("initContainers", []):
            assert {m["name"] for m in container["volumeMounts"]} <= names
    # Replicas on several nodes and the job share the registry (dev: one node).
    modes = claims[REGISTRY_CLAIM]["spec"]["accessModes"]
    assert modes == (["ReadWriteOnce"] if overlay == "dev" else ["ReadWriteMany"])


def test_replicas_and_autoscaling(rendered) -> None:
    from service.metrics import Metrics

    dev = _one(rendered["dev"], "Deployment")
    assert dev["spec"]["replicas"] == 1 and not _find(rendered["dev"], "HorizontalPodAutoscaler")
    production = _one(rendered["production"], "HorizontalPodAutoscaler")["spec"]
    assert production["minReplicas"] == 3 < production["maxReplicas"]
    # The HPA owns the count: a `replicas` in the Deployment would reset it at each apply.
    assert "replicas" not in _one(rendered["production"], "Deployment")["spec"]
    assert production["scaleTargetRef"]["name"] == "ocellus"
    kserve = _one(rendered["kserve"], "HorizontalPodAutoscaler")["spec"]
    isvc = _one(rendered["kserve"], "InferenceService")
    assert kserve["scaleTargetRef"]["name"] == f"{isvc['metadata']['name']}-predictor"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    metrics = {m["type"]: m for m in production["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == HPA_METRIC
    assert HPA_METRIC in {f.name for f in Metrics().registry.collect()}
    adapter = yaml.safe_load((K8S / "prometheus-adapter/rules.yaml").read_text())["rules"]
    assert [r["name"]["as"] for r in adapter] == [HPA_METRIC]
    assert adapter[0]["seriesQuery"].startswith(HPA_METRIC + "{")


def test_kserve_predictor_runs_the_deployments_container(rendered) -> None:
    deployment, _ = _server_pod(rendered["production"])
    isvc = _one(rendered["kserve"], "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] \
        == "RawDeployment"
    predictor, _ = _server_pod(rendered["kserve"])
    for key in ("securityContext", "terminationGracePeriodSeconds", "volumes",
                "initContainers", "automountServiceAccountToken"):
        assert predictor[key] == deployment[key], key
    ours, theirs = predictor["containers"][0], deployment["containers"][0]
    assert ours["name"] == "kserve-container"  # the container KServe takes as the model's
    assert {"name": "PROTOCOL", "value": "v2"} in ours["env"]  # KServe's protocol switch
    for key in ("image", "command", "ports", "envFrom", "resources", "lifecycle",
                "securityContext", "volumeMounts"):
        assert ours[key] == theirs[key], key
    assert [e for e in ours["env"] if e["name"] != "PROTOCOL"] == theirs["env"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert {k: v for k, v in ours[probe].items() if k != "httpGet"} \
            == {k: v for k, v in theirs[probe].items() if k != "httpGet"}, probe
        assert ours[probe]["httpGet"]["path"].startswith("/v2/health/"), probe


def test_prometheusrule_holds_the_alerting_rules(rendered) -> None:
    alerts = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    for overlay in OVERLAYS:
        rule = _one(rendered[overlay], "PrometheusRule")
        assert rule["spec"] == alerts, (
            "deploy/k8s/base/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: "
            "run `python deploy/k8s/prometheusrule.py`")


@pytest.mark.slow
def test_probe_and_metrics_paths_answer_on_a_real_server(rendered, start_server, tiny_exports,
                                                         tmp_path) -> None:
    """The server as the manifests run it (registry, the ConfigMap's settings) answers
    every probe path of every overlay, and /metrics has the HPA's metric."""
    from models.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "registry")
    registry.promote("tiny", registry.publish("tiny", tiny_exports[0]))
    paths = {"/metrics"}
    for overlay in OVERLAYS:
        pod, _ = _server_pod(rendered[overlay])
        paths |= {pod["containers"][0][p]["httpGet"]["path"]
                  for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths == {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics"}
    config = _one(rendered["production"], "ConfigMap")["data"]
    server = start_server("--registry", str(registry.root),
                          env={**config, **QUICK_START})  # returns once /readyz is 200
    for path in sorted(paths):
        response = httpx.get(f"{server.url}{path}", timeout=10)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
    assert f"\n{HPA_METRIC} " in httpx.get(f"{server.url}/metrics").text
