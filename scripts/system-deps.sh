#!/usr/bin/env bash
# Installs the Debian packages the tests read real data from, and Prometheus. Idempotent: it
# does nothing when they are present, and needs root (or sudo) otherwise.
set -euo pipefail
want=()
[ -d /usr/share/datasets/fashion-mnist ] || want+=(dataset-fashion-mnist)
# tests/ops/test_prometheus.py starts a real Prometheus server.
[ -x /usr/bin/prometheus ] || want+=(prometheus)
[ -n "${want[*]:-}" ] || exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${want[@]}" >/dev/null
