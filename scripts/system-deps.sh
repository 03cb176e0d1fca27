#!/usr/bin/env bash
# Installs the Debian packages the tests read real data from (Fashion-MNIST, darknet's
# photos), Prometheus with its promtool, nginx, Chromium, and a Docker engine.
# Idempotent: it does nothing when they are present, and needs root (or sudo) otherwise.
set -euo pipefail
want=()
[ -d /usr/share/datasets/fashion-mnist ] || want+=(dataset-fashion-mnist)
# Real photos with COCO objects (dog.jpg, person.jpg, giraffe.jpg) and coco.names.
[ -f /usr/share/darknet/data/dog.jpg ] || want+=(darknet)
# tests/deploy/test_prometheus.py starts a real Prometheus server; test_alerts.py and
# test_deploy_config.py run its promtool (the same package) on the rules and the config.
{ [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; } || want+=(prometheus)
# tests/deploy/test_nginx.py runs nginx, with deploy/nginx/ocellus.conf, in front of replicas.
[ -x /usr/sbin/nginx ] || want+=(nginx)
# tests/service/test_console.py drives the web console in a real browser (Playwright).
[ -x /usr/bin/chromium ] || want+=(chromium)
# tests/deploy/test_k8s.py renders deploy/k8s with kubectl's built-in kustomize v5: the
# `kubectl` package of Google's Cloud SDK apt repository, which the project's machines
# have. (Debian's kubernetes-client is kubectl 1.20, whose kustomize 2 cannot build the
# overlays' `patches`.) Asked for only where an apt source offers it, so that its
# absence fails that test, with a message, rather than this whole script.
[ -x /usr/bin/kubectl ] || ! apt-cache show kubectl >/dev/null 2>&1 || want+=(kubectl)
# tests/deploy/test_deploy_config.py parses docker-compose.yml with a real compose CLI
# (`config` needs no Docker engine).
# A docker client without its compose plugin does not count: check that compose answers.
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 \
    || want+=(docker-compose)
# tests/deploy/test_container.py builds and runs the image (scripts/container-check.sh):
# Debian's Docker engine, and mmdebstrap for the base image no registry can give here.
[ -x /usr/sbin/dockerd ] || want+=(docker.io)
[ -x /usr/bin/mmdebstrap ] || want+=(mmdebstrap)
[ -n "${want[*]:-}" ] || exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${want[@]}" >/dev/null
