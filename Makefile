PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test docs lint clean

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
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q
	$(BIN)/python -m pytest -q --durations=15 streamad pipelines tests

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check streamad pipelines tests benchmarks cli.py

clean:
	rm -rf demo-output .pytest_cache build/site
