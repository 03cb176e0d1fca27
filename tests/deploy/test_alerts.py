"""The alerting rules (deploy/prometheus/alerts.yml) against Debian's promtool and the
service's metrics.

promtool accepts the rules and passes their unit tests (deploy/prometheus/*_test.yml);
every series the rules read is one that service/metrics.py defines or a rule records;
every alert is tested firing and quiet, and has the labels and annotations that
docs/operations.md's runbook expects.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import promql_metric_names

from service.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy/prometheus/alerts.yml"
RULE_TESTS = sorted((REPO / "deploy/prometheus").glob("*_test.yml"))
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
# A histogram's or a counter's series, by the family's type (client_python's names).
SERIES_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}


def _promtool(*args: str) -> str:
    """promtool's output; fails the test with that output unless it exits 0."""
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool (Debian's prometheus package) is missing: run `make system-deps`")
    out = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    if out.returncode != 0:
        pytest.fail(f"promtool {' '.join(args)} exited {out.returncode}:\n"
                    f"{out.stdout}{out.stderr}")
    return out.stdout + out.stderr


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def _alerts() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def test_promtool_accepts_the_rules() -> None:
    out = _promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(_rules())} rules found" in out, out


@pytest.mark.slow
def test_rule_unit_tests_pass() -> None:
    """The synthetic series of every scenario give exactly the expected alerts (~10 s)."""
    assert RULE_TESTS, "no deploy/prometheus/*_test.yml"
    out = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert out.count("SUCCESS") == len(RULE_TESTS), out


def _exported_series() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names |= {family.name + suffix for suffix in SERIES_SUFFIXES.get(family.type, ("",))}
    return names


def test_rules_read_only_series_that_exist() -> None:
    rules = _rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    used = set().union(*(promql_metric_names(rule["expr"]) for rule in rules))
    raw = {name for name in used if ":" not in name}
    exported = _exported_series()
    assert raw, "no ocellus_ metric found in the rules"
    assert raw <= exported, f"not in service/metrics.py: {sorted(raw - exported)}"
    assert used - raw <= recorded, f"recorded by no rule: {sorted(used - raw - recorded)}"


def _runbook_section() -> str:
    text = (REPO / "docs/operations.md").read_text()
    start = text.index("\n## Alerts\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_every_alert_has_severity_annotations_and_runbook() -> None:
    runbook = _runbook_section()
    for name, rule in _alerts().items():
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["runbook_url"] == "docs/operations.md#alerts", name
        assert f"`{name}`" in runbook, f"{name} is not in docs/operations.md, Alerts"
        # An alert on a recorded series per model or per route names which one.
        levels = {label for series in promql_metric_names(rule["expr"]) if ":" in series
                  for label in series.split(":")[0].split("_")}
        for label in levels & {"model", "route"}:
            assert f"$labels.{label}" in annotations["summary"], (name, label)


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases: dict[str, list[bool]] = {}
    for path in RULE_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
    for name in _alerts():
        assert True in cases.get(name, []), f"{name}: no test where it fires"
        assert False in cases.get(name, []), f"{name}: no test where it stays quiet"
