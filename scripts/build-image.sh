#!/usr/bin/env bash
# Builds the Ocellus image (`make image`): the local base image first when the Dockerfile
# uses it (scripts/build-base-image.sh), then `docker build --network host`.
#   scripts/build-image.sh                      # ocellus:latest on ocellus-base:bookworm
#   IMAGE=ocellus:dev BASE=python:3.11-slim scripts/build-image.sh
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/build-image.sh
# --network host: the build downloads from PyPI, npm and Debian, and a dockerd started
# with --bridge=none (as on this project's machines) has no other network to give it.
# The CA certificates this machine trusts beyond Debian's (update-ca-certificates' local
# folder, /usr/local/share/ca-certificates) are passed to the build stage, so that its
# downloads verify TLS as the host's do behind an intercepting proxy; they do not reach
# the served image. EXTRA_CA_DIR names another folder; empty passes none.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${IMAGE:-ocellus:latest}"
base="${BASE:-ocellus-base:bookworm}"
ca_dir="${EXTRA_CA_DIR-/usr/local/share/ca-certificates}"

case "$base" in
    ocellus-base:*) scripts/build-base-image.sh "$base" ;;
esac

args=(--network host -t "$image" --build-arg "BASE=$base")
if [ -n "$ca_dir" ] && [ -d "$ca_dir" ]; then
    certs="$(find "$ca_dir" -name '*.crt' -type f -print0 | sort -z | xargs -0r cat)"
    [ -z "$certs" ] || args+=(--build-arg "EXTRA_CA_CERTS=$certs")
fi
# download.pytorch.org (the Dockerfile's default, CPU-only wheels) is out of reach here:
# PyPI's torch, the CUDA build, unless TORCH_INDEX_URL says otherwise.
args+=(--build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://pypi.org/simple}")
[ -z "${PIP_INDEX_URL:-}" ] || args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")

start=$(date +%s)
docker build "${args[@]}" .
echo "built $image in $(( $(date +%s) - start )) s:" \
    "$(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.2f GB", $1 / 1e9}')"
