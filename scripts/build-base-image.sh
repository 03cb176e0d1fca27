#!/usr/bin/env bash
# Builds the Dockerfile's default base image, ocellus-base:bookworm, from Debian's
# archive with mmdebstrap: Debian 12 with its Python 3.11 and venv, and nothing else.
# For machines that reach Debian's apt mirror but no container registry, where
# `FROM python:3.11-slim` cannot be pulled (docs/container.md). Idempotent: does nothing
# when the image exists (FORCE=1 rebuilds it). Needs root (or sudo), mmdebstrap and a
# Docker engine.
#   scripts/build-base-image.sh [IMAGE]        # default ocellus-base:bookworm
# MIRROR and SECURITY_MIRROR name other Debian mirrors.
set -euo pipefail

image="${1:-ocellus-base:bookworm}"
mirror="${MIRROR:-http://deb.debian.org/debian}"
security="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

if [ -z "${FORCE:-}" ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image exists (FORCE=1 rebuilds it)"
    exit 0
fi
command -v mmdebstrap >/dev/null || {
    echo "error: mmdebstrap is not installed (Debian: apt-get install mmdebstrap)" >&2
    exit 1
}
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# minbase: essential packages and apt only. python3-venv brings ensurepip, so the
# image's /opt/venv gets its own pip and Debian's externally managed python3 stays
# untouched. ca-certificates: pip and npm verify TLS. mmdebstrap leaves no apt lists
# or .debs behind; the Dockerfile runs `apt-get update` before it installs anything.
$sudo mmdebstrap --variant=minbase --quiet \
    --include=python3,python3-venv,ca-certificates \
    --aptopt='APT::Install-Recommends "false"' \
    bookworm - \
    "deb $mirror bookworm main" \
    "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main" \
    | docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "mmdebstrap --variant=minbase bookworm (scripts/build-base-image.sh)" \
        - "$image" >/dev/null
docker image inspect "$image" --format "$image: {{.Size}} bytes"
