# The two commands: `make run` and `make test`. Both set up .venv first if it is missing:
# `make run` installs taskd's runtime dependencies only, `make test` adds the test tools.
# Each install leaves a stamp file, so neither command installs again until pyproject.toml
# changes (and `make run` after `make test` installs nothing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.installed-runtime
TEST_STAMP := $(VENV)/.installed-test

CHROMIUM := /usr/bin/chromium

.PHONY: run test test-fast lint bench zipapp clean browser postgresql

$(BIN)/python:
	@echo "taskd: creating the virtual environment $(VENV) with $(PYTHON)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	@echo "taskd: installing runtime dependencies into $(VENV) (first run only)..."
	$(BIN)/python -m pip install -e .
	touch $@

$(TEST_STAMP): $(RUNTIME_STAMP) pyproject.toml
	@echo "taskd: installing the test tools into $(VENV) (first run only)..."
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

# The example config names var/keys/admin as its API key: made here on first use. taskd
# refuses a config file others may write, which a checkout made under umask 002 would be.
run: $(RUNTIME_STAMP)
	@chmod go-w etc/taskd.toml
	@test -e var/keys/admin || $(BIN)/taskd gen-key --out var/keys/admin
	$(BIN)/taskd check-config etc/taskd.toml
	@# Shown on this terminal only (the daemon never logs a key): what the web page asks for.
	@echo "taskd: web page http://127.0.0.1:8470/ui/ - sign in with the admin key (var/keys/admin): $$(cat var/keys/admin)"
	$(BIN)/taskd serve --config etc/taskd.toml

# The web page's tests drive Debian's headless Chromium (Playwright's own browser builds are
# never downloaded). Installed here when missing, as root (CI runs as root on a fresh
# machine); otherwise this says what to install, and those tests are skipped.
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "taskd: installing Debian's chromium for the web page's tests..."; \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
		else \
			echo "taskd: $(CHROMIUM) is missing; the web page's browser tests will be skipped."; \
			echo "       Install it as root: apt-get update && apt-get install -y chromium"; \
		fi; \
	fi

# The tests start a PostgreSQL server of their own from the machine's binaries (no server
# needs to run). A new machine lacks them: as root with apt-get, install Debian's package;
# otherwise say what to install (the PostgreSQL tests skip then, except in CI).
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "taskd: installing PostgreSQL for the tests (first run only)..."; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; \
	else \
		echo "taskd: PostgreSQL's server binaries are missing: install them as root" \
			"(Debian: apt-get install postgresql); the PostgreSQL tests skip until then"; \
	fi

test: $(TEST_STAMP) browser postgresql
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The quick loop while editing: everything but the tests marked `slow` (subprocess daemons,
# the zipapp build, the API fuzz, long property tests); under 30 s on two cores.
test-fast: $(TEST_STAMP) postgresql
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow"

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(RUNTIME_STAMP)
	$(BIN)/python bench/schedule.py

# taskd beside APScheduler 3.11 and 4.0 (pre-release): the same scenarios, alternating, with
# ratios (bench/peers/run.py; ~15 min). APScheduler goes into virtual environments of its own
# under $XDG_CACHE_HOME/taskd-bench-peers (else ~/.cache), made on first use, never into $(VENV).
.PHONY: bench-peers
bench-peers: $(RUNTIME_STAMP)
	$(BIN)/python bench/peers/run.py

# One file, dist/taskd.pyz, that runs with the system's Python 3.11+ on a server without pip:
# `python3 taskd.pyz serve --config /etc/taskd/taskd.toml`. Dependencies are bundled (built
# for this machine's Python version and architecture).
zipapp: $(TEST_STAMP)
	mkdir -p dist
	$(BIN)/shiv --quiet --reproducible --console-script taskd --output-file dist/taskd.pyz .
	@echo "built dist/taskd.pyz"

clean:
	rm -rf $(VENV) var build dist *.egg-info
