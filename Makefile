VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint demo

# torch==2.13.0 first: any other torch spec in a fresh venv pulls a multi-GB CUDA build.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# lint first: CI runs `make test` (.ci/run), so a formatting slip fails CI too
test: lint
	PYTHONFAULTHANDLER=1 $(PY) -m pytest

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

demo: setup
	$(VENV)/bin/vlm-audit demo
