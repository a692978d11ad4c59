# otrain: `make demo` and `make test` do all set-up on a fresh clone.
SHELL := /bin/bash
# This Makefile's folder: its scripts are found from any working directory (make -f .../Makefile).
HERE := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed
# The demo's working folder (ignored by git).
DEMO_DIR ?= data

export OTRAIN_PROGRESS ?= 1
# Never let a stray default tracking store appear in the working tree.
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db

# Extra pytest arguments, e.g. PYTEST_ARGS='-m "not docker"' (the CI workflow splits the suite so).
PYTEST_ARGS ?=
# The set-up a target needs; in the images otrain is installed already: make ... VENV=/opt/venv SETUP=
SETUP ?= $(STAMP)
IMAGE ?= otrain:cpu
GPU_IMAGE ?= otrain:gpu
SPARK_IMAGE ?= otrain:spark
# Base images; empty: the Dockerfiles' defaults (for the CPU image, docker/base-image.sh decides).
BASE_IMAGE ?=
GPU_BASE_IMAGE ?=

.PHONY: help install demo test lint docs format bench lock clean docker-image docker-image-gpu docker-image-spark docker-test retrain

help:
	@echo "make demo    set up, then run the pipeline on the built-in synthetic survey"
	@echo "make test    set up, then run ruff, make docs and the whole test suite"
	@echo "make docs    build the documentation site into docs/_build/html (warnings are errors)"
	@echo "make bench   run the benchmarks in benchmarks/"
	@echo "make lock    re-resolve requirements/constraints.txt from pyproject.toml"
	@echo "make docker-image      build the CPU image $(IMAGE) (docker/Dockerfile)"
	@echo "make docker-image-gpu  build the GPU image $(GPU_IMAGE) (docker/Dockerfile.gpu)"
	@echo "make docker-image-spark  build $(SPARK_IMAGE): the CPU image plus Java and pyspark (docker/Dockerfile.spark)"
	@echo "make docker-test       build the CPU image and run the pipeline in it (starts an engine if needed)"
	@echo "make retrain           pull, retrain (PARAMS=...), promote, push, summarise: the retrain workflow"

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet --constraint $(CONSTRAINTS) --editable ".[dev]"
	touch $@

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/otrain-summary
	@echo
	@echo "Look at:"
	@echo "  data/survey/                          the synthetic survey (true/, false/, night/, truth.csv,"
	@echo "                                        night_alerts.tar.gz: the night as ZTF alert packets)"
	@echo "  models/CNN_training/survey/           the model, its card, metrics.json, curves"
	@echo "  reports/vetting/index.html            the vetting page of the scored night: open it in a browser"
	@echo "                                        ($(CURDIR)/reports/vetting/index.html)"
	@echo "  reports/                              diagnostics, plots, Grad-CAM, scored night, CheckInfer"
	@echo "  reports/infer_results_alerts.dat      the same night scored from its alert packets"
	@echo "  $(BIN)/dvc metrics show               every metric; $(BIN)/dvc plots show for the figures"
	@echo "  $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db   the tracked run (http://127.0.0.1:5000)"

lint: $(STAMP)
	$(BIN)/ruff check otrain tests benchmarks docker docs/conf.py docs/_ext
	$(BIN)/ruff format --check otrain tests benchmarks docker docs/conf.py docs/_ext

format: $(STAMP)
	$(BIN)/ruff format otrain tests benchmarks docker docs/conf.py docs/_ext
	$(BIN)/ruff check --fix otrain tests benchmarks docker docs/conf.py docs/_ext

# The documentation site (Sphinx: docs/conf.py), read afresh each time (-E) so that a warning of a
# page that did not change still fails; warnings are errors (-W), broken references too (-n).
docs: $(STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -n -q -b html docs docs/_build/html
	@echo "docs/_build/html/index.html"

test: $(STAMP) lint docs
	OTRAIN_PROGRESS=0 MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/.pytest_cache/mlflow.db \
		$(BIN)/python -m pytest $(PYTEST_ARGS)

# The container tests alone (tests/containers/test_docker.py, tests/containers/test_compose.py): they start Debian's
# Docker engine when none runs, build the CPU image with `make docker-image`, run the Docker commands
# of docs/containers.md, and bring the compose stack up and down (docker/compose.sh: Compose v2, or
# Debian's docker-compose, installed as root with OTRAIN_INSTALL_SYSTEM_PACKAGES=1).
docker-test: $(STAMP)
	OTRAIN_PROGRESS=0 MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/.pytest_cache/mlflow.db \
		$(BIN)/python -m pytest -m docker $(PYTEST_ARGS)

# Needs a running engine (DOCKER_HOST is honoured). Without access to Docker Hub the base image
# is a local Debian one built with debootstrap (docker/base-image.sh).
# Each build leaves the image it replaces, and its stages, untagged: 2 to 4 GB a time. After a
# build, the untagged images that carry otrain's label (io.otrain.stage: its Dockerfiles' images
# and images built FROM them) are pruned, nothing else; the deps stage is tagged ($(IMAGE)-deps)
# so that it stays the next build's cache. A failed prune only warns: the image is built.
PRUNE_UNTAGGED := docker image prune --force --filter label=io.otrain.stage >/dev/null \
	|| echo "warning: could not prune otrain's untagged images (docker image prune --filter label=io.otrain.stage)" >&2
docker-image:
	base=$(or $(BASE_IMAGE),$$(docker/base-image.sh)) && \
		docker build --network host --build-arg BASE_IMAGE=$$base -f docker/Dockerfile --target deps \
			-t $(IMAGE)-deps . && \
		docker build --network host --build-arg BASE_IMAGE=$$base -f docker/Dockerfile -t $(IMAGE) .
	$(PRUNE_UNTAGGED)

# The CPU image plus Java and pyspark, for otrain-infer-spark (docker/Dockerfile.spark).
docker-image-spark: docker-image
	docker build --network host --build-arg OTRAIN_IMAGE=$(IMAGE) -f docker/Dockerfile.spark -t $(SPARK_IMAGE) .
	$(PRUNE_UNTAGGED)

docker-image-gpu:
	docker build --network host $(if $(GPU_BASE_IMAGE),--build-arg BASE_IMAGE=$(GPU_BASE_IMAGE)) \
		-f docker/Dockerfile.gpu --target deps -t $(GPU_IMAGE)-deps .
	docker build --network host $(if $(GPU_BASE_IMAGE),--build-arg BASE_IMAGE=$(GPU_BASE_IMAGE)) \
		-f docker/Dockerfile.gpu -t $(GPU_IMAGE) .
	$(PRUNE_UNTAGGED)

# Retraining, as .github/workflows/retrain.yml runs it (tests/pipeline/test_pipeline.py runs it too):
# scripts/retrain.sh, configured by the environment: DVC_REMOTE_URL (DVC_REMOTE_USER,
# DVC_REMOTE_PASSWORD), PARAMS (params.yaml overrides) and SUMMARY (Markdown report).
retrain: $(SETUP)
	PATH="$(abspath $(BIN)):$$PATH" $(HERE)scripts/retrain.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_convert.py
	$(BIN)/python benchmarks/bench_infer.py
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_interrupt.py
	$(BIN)/python benchmarks/bench_fits.py
	$(BIN)/python benchmarks/bench_scale.py
	$(BIN)/python benchmarks/bench_report.py
	$(BIN)/python benchmarks/bench_tta.py

# Re-resolve the pins: a fresh venv from pyproject.toml alone, frozen.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade "pip==25.3"
	.lock-venv/bin/python -m pip install --quiet ".[dev]"
	{ echo "# Pinned versions for every install of otrain (Makefile, Dockerfiles, CI). Regenerate: make lock"; \
	  .lock-venv/bin/python -m pip freeze --exclude otrain; \
	  .lock-venv/bin/python -m pip freeze --exclude otrain | sed -n 's/^tensorflow[-_]cpu==/tensorflow==/p'; } > $(CONSTRAINTS)
	.lock-venv/bin/python -m pip install --quiet --dry-run --ignore-installed --report .lock-venv/gpu.json \
		--constraint $(CONSTRAINTS) "tensorflow[and-cuda]"
	.lock-venv/bin/python docker/requirements.py cuda-pins .lock-venv/gpu.json > requirements/constraints-gpu.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info docs/_build docs/_api
