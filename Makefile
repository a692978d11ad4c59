# otrain: `make demo` and `make test` do all set-up on a fresh clone.
SHELL := /bin/bash
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

.PHONY: help install demo test lint format bench lock clean

help:
	@echo "make demo    set up, then run the pipeline on the built-in synthetic survey"
	@echo "make test    set up, then run ruff and the whole test suite"
	@echo "make bench   run the benchmarks in benchmarks/"
	@echo "make lock    re-resolve requirements/constraints.txt from pyproject.toml"

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet --constraint $(CONSTRAINTS) --editable ".[dev]"
	touch $@

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/python -m otrain.summary
	@echo
	@echo "Look at:"
	@echo "  data/survey/                          the synthetic survey (true/, false/, night/, truth.csv)"
	@echo "  models/CNN_training/survey/           the model, its card, metrics.json, curves"
	@echo "  reports/                              diagnostics, plots, Grad-CAM, scored night, CheckInfer"
	@echo "  $(BIN)/dvc metrics show               every metric; $(BIN)/dvc plots show for the figures"
	@echo "  $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db   the tracked run (http://127.0.0.1:5000)"

lint: $(STAMP)
	$(BIN)/ruff check otrain tests benchmarks
	$(BIN)/ruff format --check otrain tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format otrain tests benchmarks
	$(BIN)/ruff check --fix otrain tests benchmarks

test: $(STAMP) lint
	OTRAIN_PROGRESS=0 MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/.pytest_cache/mlflow.db \
		$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_convert.py
	$(BIN)/python benchmarks/bench_infer.py
	$(BIN)/python benchmarks/bench_train.py

# Re-resolve the pins: a fresh venv from pyproject.toml alone, frozen.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade "pip==25.3"
	.lock-venv/bin/python -m pip install --quiet ".[dev]"
	{ echo "# Pinned versions for every install of otrain (Makefile, Dockerfiles, CI). Regenerate: make lock"; \
	  .lock-venv/bin/python -m pip freeze --exclude otrain; \
	  .lock-venv/bin/python -m pip freeze --exclude otrain | sed -n 's/^tensorflow[-_]cpu==/tensorflow==/p'; } > $(CONSTRAINTS)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
