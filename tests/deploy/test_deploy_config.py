"""Static checks of the Docker and compose files against what the tests really run.

No Docker engine runs here, so these check what can be checked without one:
the files parse, every port and path agrees across Dockerfile, compose,
Prometheus and Grafana, and the dashboard's PromQL names only metrics that a
real Ocellus process exports, or series that the alerting rules record.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import httpx
import pytest
import yaml
from helpers import QUICK_START, png_bytes, promql_metric_names

REPO = Path(__file__).resolve().parents[2]
PORT = 8000


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def prometheus_config() -> dict:
    return yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert text.splitlines()[[ln.startswith("FROM") for ln in text.splitlines()].index(True)] \
        == "FROM python:3.11-slim"
    assert "torch==2.14.1 torchvision==0.29.1" in text and "whl/cpu" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    health = re.search(r"HEALTHCHECK.*?CMD (.*)", text, re.S).group(1)
    assert f"http://127.0.0.1:{PORT}/readyz" in health
    cmd = json.loads(re.search(r"^CMD (\[.*\])", text, re.M).group(1))
    assert cmd[:2] == ["ocellus", "serve"] and _flag(cmd, "--host") == "0.0.0.0"
    assert int(_flag(cmd, "--port")) == PORT and f"EXPOSE {PORT}" in text
    for src in re.findall(r"^COPY (\S+)", text, re.M):
        assert (REPO / src).exists(), src
    assert "scripts/fetch-nanodet.sh" in text and (REPO / "scripts/fetch-nanodet.sh").is_file()
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "tests" in ignored


def test_compose_ports_and_paths_agree(compose: dict, prometheus_config: dict) -> None:
    services = compose["services"]
    assert {"ocellus", "prometheus", "grafana", "retrain"} <= set(services)
    ocellus = services["ocellus"]
    assert int(_flag(ocellus["command"], "--port")) == PORT
    assert ocellus["ports"][0].endswith(f":{PORT}")
    registry_dir = _flag(ocellus["command"], "--registry")
    mounts = {s: {v.split(":")[0]: v.split(":")[1] for v in svc.get("volumes", [])}
              for s, svc in services.items()}
    assert mounts["ocellus"]["registry"] == registry_dir
    assert mounts["retrain"]["registry"] == registry_dir  # the job shares the registry
    assert services["retrain"]["profiles"] == ["retrain"]
    assert services["retrain"]["entrypoint"][:2] == ["ocellus", "retrain"]
    assert _flag(services["retrain"]["entrypoint"], "--registry") == registry_dir
    assert "registry" in compose["volumes"]
    for service, volumes in mounts.items():
        for source in volumes:
            if source.startswith("./deploy/"):  # ./data is the operator's own folder
                assert (REPO / source).exists(), f"{service}: {source}"
    # Prometheus scrapes the ocellus service on its port and /metrics.
    (job,) = prometheus_config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["ocellus"] and sd["port"] == PORT
    prom = services["prometheus"]
    conf_target = mounts["prometheus"]["./deploy/prometheus/prometheus.yml"]
    assert _flag([a for c in prom["command"] for a in c.split("=", 1)], "--config.file") \
        == conf_target
    # Each rule file is mounted where the config's relative path finds it: beside it.
    for rule_file in prometheus_config["rule_files"]:
        assert mounts["prometheus"][f"./deploy/prometheus/{rule_file}"] \
            == str(PurePosixPath(conf_target).parent / rule_file)
    # Grafana: the datasource points at the prometheus service, the dashboards are mounted.
    ds = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml")
                        .read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and prom["ports"] == ["9090:9090"]
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/ocellus.yml")
                              .read_text())["providers"][0]
    assert mounts["grafana"]["./deploy/grafana/dashboards"] == provider["options"]["path"]


def test_compose_passes_secrets_through_only_when_set(compose: dict) -> None:
    """An unset admin token stays unset: `${VAR:-}` would hand the service an empty one."""
    environment = compose["services"]["ocellus"]["environment"]
    for var in ("OCELLUS_ADMIN_TOKEN", "OCELLUS_API_KEYS"):
        assert var in environment and environment[var] is None, (var, environment[var])
    from service.settings import Settings

    # And the service reads a blank token as none (the admin API off), wherever it came from.
    assert Settings(admin_token="").admin_token is None
    assert Settings(admin_token="  ").admin_token is None
    assert Settings(admin_token="t").admin_token.get_secret_value() == "t"


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_cli_accepts_the_file() -> None:
    """`docker compose config` parses without an engine; skipped where no compose CLI is."""
    cli = _compose_cli()
    if cli is None:
        message = ("no `docker compose` or `docker-compose` here (scripts/system-deps.sh "
                   "installs Debian's docker-compose); the YAML checks above still ran")
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(message)
        pytest.skip(message)
    out = subprocess.run([*cli, "-f", str(REPO / "docker-compose.yml"), "--profile", "retrain",
                          "config", "--services"], capture_output=True, text=True, timeout=60,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) == {"registry-init", "ocellus", "prometheus", "grafana",
                                       "retrain"}


def test_prometheus_config_is_valid() -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).exists():
        pytest.fail("promtool (Debian's prometheus) is missing: run `make system-deps`")
    out = subprocess.run([promtool, "check", "config",
                          str(REPO / "deploy/prometheus/prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_dashboard_queries_only_exported_metrics(start_server, tiny_exports) -> None:
    server = start_server("--model", str(tiny_exports[0]), env=QUICK_START)
    assert httpx.post(f"{server.url}/v1/classify", timeout=60,
                      files={"file": ("x.png", png_bytes(), "image/png")}).status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200  # the HEALTHCHECK's path
    text = httpx.get(f"{server.url}/metrics").text  # the scrape config's metrics_path
    exported = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)", text, re.M):
        exported.add(name)
        if kind == "histogram":
            exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/ocellus.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set().union(*map(promql_metric_names, exprs))
    raw = {m for m in used if ":" not in m}
    assert raw and raw <= exported, sorted(raw - exported)
    # The alert panels read the series that deploy/prometheus/alerts.yml records.
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    assert used - raw <= recorded, sorted(used - raw - recorded)
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("request rate", "error rate", "p50", "p99", "batch size", "queue depth",
                  "predictions by class", "confidence", "image", "model version"):
        assert topic in titles, topic
