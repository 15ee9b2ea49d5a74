# pebslab — two commands matter: `make lab` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: lab test bench fuzz clean

$(STAMP): pyproject.toml
	@if ! command -v uv >/dev/null 2>&1 && ! $(PYTHON) -m uv --version >/dev/null 2>&1; then \
	    echo "bootstrapping uv with pip"; \
	    $(PYTHON) -m pip install --quiet uv || $(PYTHON) -m pip install --quiet --user uv; \
	fi
	@UV=$$(command -v uv || echo "$(PYTHON) -m uv"); \
	  $$UV venv --quiet --allow-existing --python $(PYTHON) $(VENV) && \
	  $$UV pip install --quiet --python $(PY) -e '.[test]'
	@$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (pebslab)" >/dev/null
	@touch $(STAMP)

## Open JupyterLab on the notebooks (creates .venv on first use).
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --notebook-dir=notebooks \
	    $$([ "$$(id -u)" = 0 ] && echo --allow-root)

## The whole suite: unit + property tests and notebooks, then the tests again in pure Python
## (numba disabled: the fallback path must stay correct).
test: $(STAMP)
	$(PY) -m pytest -q tests notebooks --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg
	NUMBA_DISABLE_JIT=1 $(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

## Benchmarks (print JSON): core speed, start-up, explorer callbacks.
bench: $(STAMP)
	$(PY) bench/bench_core.py
	$(PY) bench/bench_explorers.py

## Long property campaigns over every design and CPU model (>= 100,000 actions), each
## ending with a sweep of every PMU MSR index; FUZZ_JOBS=2 uses two worker processes.
FUZZ_JOBS ?= 1
fuzz: $(STAMP)
	$(PY) -m pebslab.fuzz --actions 100000 --profile long --jobs $(FUZZ_JOBS)

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache .hypothesis
