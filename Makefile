# Everyday commands. Each one sets up the virtual environment first if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_INSTALL := $(PY) -m pip install -q -c constraints.txt

.PHONY: setup demo test bench lint

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP_INSTALL) -e '.[dev,art]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/deepcloak demo

test: setup
	$(PY) -m pytest

# Ratios measured in one run, written to docs/performance.md; e.g. BENCH_ARGS="--device cuda".
bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m mypy
