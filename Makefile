PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test lint clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

system-deps:  # Debian packages for the live (RTSP) tests; needs root or sudo
	.ci/setup-system

demo: $(STAMP)
	$(BIN)/streamad demo --out demo-output

test: $(STAMP)
	$(BIN)/ruff check streamad pipelines tests benchmarks cli.py
	$(BIN)/mypy streamad pipelines
	$(BIN)/python -m pytest -q streamad pipelines tests

lint: $(STAMP)
	$(BIN)/ruff check streamad pipelines tests benchmarks cli.py

clean:
	rm -rf demo-output .pytest_cache
