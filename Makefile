# The two commands: `make run` and `make test`. Both set up .venv first if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench zipapp clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/taskd check-config etc/taskd.toml
	$(BIN)/taskd serve --config etc/taskd.toml

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/schedule.py

# One file, dist/taskd.pyz, that runs with the system's Python 3.11+ on a server without pip:
# `python3 taskd.pyz serve --config /etc/taskd/taskd.toml`. Dependencies are bundled (built
# for this machine's Python version and architecture).
zipapp: $(STAMP)
	mkdir -p dist
	$(BIN)/shiv --quiet --reproducible --console-script taskd --output-file dist/taskd.pyz .
	@echo "built dist/taskd.pyz"

clean:
	rm -rf $(VENV) var build dist *.egg-info
