"""Static checks of the Docker and compose files against what the tests really run.

These need no Docker engine (scripts/container-check.sh builds and runs the image,
docs/container.md): the files parse, every port and path agrees across Dockerfile,
compose, Prometheus and Grafana, and the dashboard's PromQL names only metrics that
a real Ocellus process exports, or series that the alerting rules record.
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


def _env(text: str) -> dict[str, str]:
    """The ENV settings of a Dockerfile stage (the `ENV K=V \\` form)."""
    return dict(re.findall(r"\b([A-Z_]+)=(\S+)", " ".join(
        m for m in re.findall(r"^ENV (.*?)(?<!\\)$", text, re.M | re.S))))


def test_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text()
    # The base and the indexes are arguments whose defaults serve a builder with internet
    # access; scripts/build-image.sh passes this machine's: the base that
    # scripts/build-base-image.sh makes, and PyPI's torch.
    assert re.search(r"^ARG BASE=python:3\.11-slim-bookworm$", text, re.M)
    script = (REPO / "scripts/build-image.sh").read_text()
    local = re.search(r'base="\$\{BASE:-(\S+)\}"', script).group(1)
    assert local in (REPO / "scripts/build-base-image.sh").read_text()
    assert re.search(r"^ARG PIP_INDEX_URL=https://pypi.org/simple$", text, re.M)
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    # The dependencies' venv, the build stage on it, and the served image on the base: it
    # copies the venv, so that no build argument (index URLs, certificates) is in its
    # history.
    assert froms == ["${BASE}", "deps", "${BASE}"], froms
    served = text[text.rindex("\nFROM "):]
    # torch from PyPI by default, pinned as pyproject.toml pins it.
    pins = re.findall(r'"(torch(?:vision)?==[^"]+)"', (REPO / "pyproject.toml").read_text())
    assert f"{pins[0]} {pins[1]}" in text, pins
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu$", text,
                     re.M)
    users = re.findall(r"^USER (\S+)", served, re.M)
    uid = re.search(r"--uid (\d+)", served).group(1)
    assert users and users[-1].split(":")[0] in (uid, "ocellus") and uid != "0"
    env = _env(served)
    # Its own ENV puts the copied venv first: `ocellus` and the HEALTHCHECK's python.
    assert env["VIRTUAL_ENV"] == "/opt/venv" and env["PATH"].startswith("/opt/venv/bin:")
    assert env["OCELLUS_HOST"] == "0.0.0.0" and int(env["OCELLUS_PORT"]) == PORT
    assert f"EXPOSE {PORT}" in served
    health = re.search(r"HEALTHCHECK.*?CMD (.*)", served, re.S).group(1)
    assert "http://127.0.0.1:%s/readyz" in health and f"'OCELLUS_PORT', '{PORT}'" in health
    cmd = json.loads(re.search(r"^CMD (\[.*\])", served, re.M).group(1))
    assert cmd == ["ocellus", "serve"]  # host and port from the ENV above
    # The served image takes the dependencies' venv, installs the project's wheel, and takes
    # the baked models from the build stage.
    cache = _env(text[:text.rindex("\nFROM ")])["OCELLUS_CACHE_DIR"]
    assert cache == env["OCELLUS_CACHE_DIR"]
    copied = re.findall(r"^COPY --from=(\S+) (?:--\S+ )*(\S+)", served, re.M)
    assert {("deps", "/opt/venv"), ("build", "/wheels"), ("build", cache)} <= set(copied)
    # The build's pip settings and CA certificates stay out of the served image.
    assert not any(k.startswith("PIP_") for k in env), env
    assert "EXTRA_CA_CERTS" not in served and "ARG " not in served
    # .dockerignore is an allow-list that lets in every COPY source and nothing else.
    rules = [ln for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln and not ln.startswith("#")]
    assert rules[0] == "*", rules
    sources = [src for line in re.findall(r"^COPY (?!--from)(.*)$", text, re.M)
               for src in line.split()[:-1]]  # the last word is the destination
    for src in sources:
        assert (REPO / src).exists(), src
    assert {r[1:] for r in rules if r.startswith("!")} == set(sources), rules
    assert "scripts/fetch-nanodet.sh" in sources and "--require-int8" in text


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
