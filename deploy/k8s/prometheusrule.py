"""Writes base/prometheusrule.yaml: deploy/prometheus/alerts.yml as a PrometheusRule.

The Prometheus Operator loads rules from PrometheusRule objects, whose ``spec`` is a
rule file's contents; kustomize cannot wrap a file into a field, so the object is
generated and committed. alerts.yml stays the one home of the rules (promtool tests
it); tests/deploy/test_k8s.py fails when the copy differs, and says to run:

    python deploy/k8s/prometheusrule.py
"""

from __future__ import annotations

import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yml"
OUT = HERE / "base" / "prometheusrule.yaml"
HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/k8s/prometheusrule.py: edit
# alerts.yml, then run `python deploy/k8s/prometheusrule.py`.
# Add the label your Prometheus's ruleSelector wants (kube-prometheus-stack:
# `release: <its release name>`), in an overlay.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: ocellus
  labels:
    app.kubernetes.io/name: ocellus
spec:
"""


def render(alerts: str) -> str:
    """The PrometheusRule: the rule file indented under ``spec``, comments and all."""
    return HEADER + textwrap.indent(alerts, "  ")


if __name__ == "__main__":
    OUT.write_text(render(ALERTS.read_text()))
