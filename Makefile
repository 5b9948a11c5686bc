# Everything a fresh machine needs comes from here, pyproject.toml and requirements.lock.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# the exact version of every package .venv may hold (all extras), made by `make lock` from pyproject.toml. No
# hashes: pip's hash-checking mode, which hashes in it would switch on, refuses the editable install of phicenter
LOCK := requirements.lock
# two stamps for one pyproject.toml + lock: the runtime (`make run`), then the dev extras on top (`make test`)
KEY := $(shell cat pyproject.toml $(wildcard $(LOCK)) | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.installed-$(KEY)
DEV_STAMP := $(VENV)/.installed-dev-$(KEY)
# what .venv holds beyond the lock's lines (names only)
UNLOCKED = $(PY) -m pip freeze --exclude-editable | grep -vxF -f $(LOCK) | cut -d= -f1
# the installer: uv (pinned, fetched by pip into $(VENV)/.uv-VERSION; about 4 times faster than pip on torch's wheels),
# or INSTALLER=pip. uv is given pip's own settings of this machine, read from `pip config list` (:env: first,
# then [install], then [global]): index-url, extra-index-url, find-links, constraint, cert, default-timeout,
# no-index; and pip's choice of the best version across every index (UV_INDEX_STRATEGY=unsafe-best-match)
INSTALLER ?= uv
UV_VERSION := 0.13.10
UV := $(VENV)/.uv-$(UV_VERSION)/bin/uv
ifeq ($(INSTALLER),pip)
INSTALLER_BIN :=
INSTALL = $(PY) -m pip install --quiet
WARM = true
else
# uv writes no bytecode, and a run under PYTHONDONTWRITEBYTECODE would compile what it imports every time: the
# runtime's imports compiled once here (the rest of site-packages only for the dev extras, UV_COMPILE_BYTECODE)
WARM = $(PY) -c 'import sys; sys.dont_write_bytecode = False; \
	import pytorch_lightning, torchvision, sklearn.datasets, tensorboard, hydra, matplotlib.pyplot'
INSTALLER_BIN := $(UV)
INSTALL = conf="$$($(PY) -m pip config list 2>/dev/null)"; \
	pipconf() { for s in :env: install global; do \
	    v="$$(printf '%s\n' "$$conf" | sed -n "s/^$$s\.$$1='\(.*\)'$$/\1/p" | head -n1)"; \
	    if [ -n "$$v" ]; then echo "$$v"; return; fi; done; }; \
	set_uv() { if [ -n "$$2" ]; then export "$$1=$$2"; fi; }; \
	set_uv UV_DEFAULT_INDEX "$$(pipconf index-url)"; set_uv UV_EXTRA_INDEX_URL "$$(pipconf extra-index-url)"; \
	set_uv UV_FIND_LINKS "$$(pipconf find-links | tr -s ' \t' ',')"; set_uv UV_CONSTRAINT "$$(pipconf constraint)"; \
	set_uv SSL_CERT_FILE "$$(pipconf cert)"; set_uv UV_HTTP_TIMEOUT "$$(pipconf default-timeout)"; \
	case "$$(pipconf no-index)" in 1|true|yes|on) export UV_NO_INDEX=1;; esac; \
	UV_INDEX_STRATEGY=unsafe-best-match $(UV) pip install --quiet --python $(PY)
endif

.PHONY: setup setup-dev lock audit run test test-slow lint format clean

setup: $(STAMP)  ## .venv at requirements.lock's versions, made or brought up to date

setup-dev: $(DEV_STAMP)  ## setup, and the dev extras on top (tests, ruff, pip-audit, the docs)

# .venv made to hold the lock's versions of what running needs: what the lock does not list goes first (a
# package dropped or at another version; the dev extras it lists stay), then the lock's versions install; a
# package installed that it does not list means pyproject.toml changed without `make lock`
$(STAMP): pyproject.toml $(LOCK) | $(INSTALLER_BIN)
	$(PYTHON) -m venv $(VENV)
	@extra="$$($(UNLOCKED))"; if [ -n "$$extra" ]; then $(PY) -m pip uninstall --quiet --yes $$extra; fi
	@echo "$(INSTALLER) install -c $(LOCK) pip setuptools, then -e ."
	@$(INSTALL) -c $(LOCK) pip setuptools
	@$(INSTALL) -c $(LOCK) -e .
	@$(WARM)
	@extra="$$($(UNLOCKED))"; if [ -n "$$extra" ]; then \
	    echo "$(LOCK) lists no version of:" $$extra "-- run make lock"; exit 1; fi
	rm -f $(VENV)/.installed-*
	touch $@

# and the dev extras (tests, loggers, ONNX, ruff, pip-audit), at the lock's versions
$(DEV_STAMP): $(STAMP) | $(INSTALLER_BIN)
	@echo "$(INSTALLER) install -c $(LOCK) -e '.[dev]'"
	@export UV_COMPILE_BYTECODE=1; $(INSTALL) -c $(LOCK) -e '.[dev]'
	@extra="$$($(UNLOCKED))"; if [ -n "$$extra" ]; then \
	    echo "$(LOCK) lists no version of:" $$extra "-- run make lock"; exit 1; fi
	touch $@

# uv itself, beside .venv's packages (not one of them), by the venv's pip from the package index
$(UV):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	rm -rf $(VENV)/.uv-*
	$(PY) -m pip install --quiet --disable-pip-version-check --target $(VENV)/.uv-$(UV_VERSION) uv==$(UV_VERSION)

# requirements.lock anew: the newest versions pyproject.toml allows (every extra), resolved in an empty venv,
# frozen. Run it after changing a dependency in pyproject.toml, or to take up new releases; then `make audit`.
lock:  ## requirements.lock anew from pyproject.toml's newest allowed versions (then make audit)
	@set -e; tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --quiet --upgrade pip setuptools; \
	"$$tmp/venv/bin/python" -m pip install --quiet -e '.[dev]'; \
	{ echo "# made by \`make lock\` from pyproject.toml (every extra) on Python $$("$$tmp/venv/bin/python" -V | cut -d' ' -f2), $$(uname -sm)"; \
	  echo "# \`make setup\` installs with it as constraints (pip -c); \`make audit\` checks it for known vulnerabilities"; \
	  "$$tmp/venv/bin/python" -m pip freeze --all --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

# every package the lock pins against the advisories PyPI publishes (pip-audit); fails on a finding, and on a
# package it could not check. make audit ARGS='-s osv': OSV's database instead of PyPI's
audit: setup-dev  ## the pinned versions against published vulnerabilities (pip-audit)
	@$(PY) -m pip_audit --strict --no-deps --disable-pip --progress-spinner off -r $(LOCK) $(ARGS) || { \
	    echo "make audit: failed. A package 'not found on PyPI' that is there means pip-audit could not reach" \
	         "PyPI's JSON API for single releases from this network; try ARGS='-s osv'"; exit 1; }

run: setup  ## the default experiment (quickstart); make run ARGS='overrides'
	$(PY) -m phicenter.train $(ARGS)

.PHONY: report
report: setup  ## the paper's tables from a grid: make report DIR=outputs/multirun/... [ARGS='--select test --out OUT']
	@test -n "$(DIR)" || { echo "usage: make report DIR=<multirun folder> [ARGS=...]"; exit 2; }
	$(PY) -m phicenter.report $(DIR) $(ARGS)

.PHONY: bench
bench: setup  ## the benchmarks, into outputs/bench.json [ARGS='--quick --data-dir ../shared/data']
	OMP_NUM_THREADS=1 $(PY) -m phicenter.bench --out outputs/bench.json $(ARGS)

test: setup-dev  ## the test suite, the slow tests left out
	$(PY) -m pytest -q $(ARGS)

lint: setup-dev  ## ruff's checks and its formatting, as pyproject.toml configures them; changes nothing
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup-dev  ## what make lint asks for, done: safe fixes, then the formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# docs/ and the API reference from the docstrings (mkdocs.yml) into outputs/site; a warning or a broken link fails
# it, and nothing is fetched while it builds. NO_MKDOCS_2_WARNING: without mkdocs-material's end-of-life banner
.PHONY: docs
docs: setup-dev  ## build the docs site
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d outputs/site

.PHONY: gpu-check
gpu-check: setup-dev  ## on one GPU: the CUDA-only checks and a short bench (< 8 min); writes outputs/gpu-check.json
	$(PY) -m phicenter.bench.gpu_check --out outputs/gpu-check.json $(ARGS)

test-slow: setup-dev  ## the slow tests only
	$(PY) -m pytest -q -m slow $(ARGS)

clean:  ## remove .venv, outputs/ and the caches
	rm -rf $(VENV) outputs .pytest_cache $(LOCK).new

.PHONY: help
help:  ## each target with what it does (the comment on its line)
	@awk -F ':.*## ' '/^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
