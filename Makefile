# pebslab — two commands matter: `make lab` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: lab test bench fuzz clean figures book

$(STAMP): pyproject.toml
	@if ! command -v uv >/dev/null 2>&1 && ! $(PYTHON) -m uv --version >/dev/null 2>&1; then \
	    echo "bootstrapping uv with pip"; \
	    $(PYTHON) -m pip install --quiet uv || $(PYTHON) -m pip install --quiet --user uv; \
	fi
	@UV=$$(command -v uv || echo "$(PYTHON) -m uv"); \
	  $$UV venv --quiet --allow-existing --python $(PYTHON) $(VENV) && \
	  $$UV pip install --quiet --python $(PY) -e '.[test,book]'
	@$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (pebslab)" >/dev/null
	@echo "compiling pebslab's run loop into the numba cache ($(NUMBA_CACHE_DIR))"
	@$(PY) -c "from pebslab import setup_check; setup_check.warm(progress=False)"
	@touch $(STAMP)

## Open JupyterLab on the notebooks (creates .venv on first use).
lab: $(STAMP)
	@$(PY) -c "from pebslab import setup_check; setup_check.warm(progress=False)"  # loads, or recompiles what changed
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --notebook-dir=notebooks \
	    $$([ "$$(id -u)" = 0 ] && echo --allow-root)

## The whole suite: build the site (make book), then unit + property tests, notebooks, the
## Binder kit, figures/ and both browser tests (JupyterLab; the built site, screenshots in
## build/site-shots/), then the tests again in pure Python (numba disabled: the fallback path
## must stay correct).
test: $(STAMP) book
	$(PY) -m pytest -q tests notebooks --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg
	NUMBA_DISABLE_JIT=1 $(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

## Benchmarks (print JSON): core speed, start-up, explorer callbacks.
bench: $(STAMP)
	$(PY) bench/bench_core.py
	$(PY) bench/bench_explorers.py
	$(PY) bench/bench_fullstack.py

## Long property campaigns over every design and CPU model (>= 100,000 actions), each
## ending with a sweep of every PMU MSR index; FUZZ_JOBS=2 uses two worker processes.
FUZZ_JOBS ?= 1
fuzz: $(STAMP)
	$(PY) -m pebslab.fuzz --actions 100000 --profile long --jobs $(FUZZ_JOBS)

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache .hypothesis

## Every static figure in figures/, redrawn from pebslab (deterministic SVG).
figures: $(STAMP)
	$(PY) -m pebslab.figures

## The rendered site (Jupyter Book 1), offline: widget manager and MathJax from npm at build
## time into book/_vendor (not committed), notebooks executed, warnings are errors.
BOOK_NPM := build/book-npm
book: $(STAMP)
	@command -v npm >/dev/null || { echo "make book needs npm (apt-get install npm)" >&2; exit 1; }
	@if [ ! -f book/_vendor/widgets/embed.js ] || [ ! -f book/_vendor/mathjax/tex-chtml.js ]; then \
	  mkdir -p $(BOOK_NPM) && \
	  npm install --silent --no-audit --no-fund --no-save --no-package-lock --prefix $(BOOK_NPM) \
	      @jupyter-widgets/html-manager@1.0.15 mathjax@3.2.2 && \
	  rm -rf book/_vendor && mkdir -p book/_vendor/widgets book/_vendor/mathjax && \
	  cp $(BOOK_NPM)/node_modules/@jupyter-widgets/html-manager/dist/embed.js \
	     $(BOOK_NPM)/node_modules/@jupyter-widgets/html-manager/dist/*.{woff,woff2,ttf,eot,svg} \
	     book/_vendor/widgets/ && \
	  cp -r $(BOOK_NPM)/node_modules/mathjax/es5/{tex-chtml.js,input,output,ui,a11y,sre,adaptors} \
	     book/_vendor/mathjax/; \
	fi
	@start=$$(date +%s); \
	  $(VENV)/bin/jupyter-book build book --all --path-output build/book -W --keep-going && \
	  echo "{\"book_build_s\": $$(( $$(date +%s) - start )), \"site_kb\": $$(du -sk build/book/_build/html | cut -f1)}" \
	  | tee build/book-stats.json
