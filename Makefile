# Everything a fresh machine needs comes from here and pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup run test test-slow lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

run: setup
	$(PY) -m phicenter.train $(ARGS)

.PHONY: report
report: setup  # make report DIR=outputs/multirun/... [ARGS='--select test --out OUT']
	@test -n "$(DIR)" || { echo "usage: make report DIR=<multirun folder> [ARGS=...]"; exit 2; }
	$(PY) -m phicenter.report $(DIR) $(ARGS)

.PHONY: bench
bench: setup  # make bench [ARGS='--quick --data-dir ../shared/data']; writes outputs/bench.json
	OMP_NUM_THREADS=1 $(PY) -m phicenter.bench --out outputs/bench.json $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

lint: setup  # ruff's checks and its formatting, as pyproject.toml configures them; changes nothing
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup  # what `make lint` asks for, done: safe fixes, then the formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

.PHONY: gpu-check
gpu-check: setup  # on one GPU: the CUDA-only checks and a short bench (< 8 min); writes outputs/gpu-check.json
	$(PY) -m phicenter.bench.gpu_check --out outputs/gpu-check.json $(ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
