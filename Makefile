# Two commands set everything up on a fresh Debian machine with Python ≥ 3.11
# and git:  `make run`  and  `make test`.

VENV := .venv
PYTHON := $(VENV)/bin/python
SYSTEM_TOOLS := bwrap:bubblewrap socat:socat

.PHONY: run test lint install system-deps bench clean

run: install
	$(VENV)/bin/routined serve

test: $(VENV)/.dev-installed system-deps
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -n auto --maxprocesses 4 --dist loadfile

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

install: $(VENV)/.installed system-deps

bench: $(VENV)/.dev-installed system-deps
	$(PYTHON) bench/fire_latency.py
	$(PYTHON) bench/scheduler.py
	$(PYTHON) bench/fire_load.py
	$(PYTHON) bench/webhook_ingest.py
	$(PYTHON) bench/workspace.py
	$(PYTHON) bench/setup_cache.py
	$(PYTHON) bench/cli_start.py

$(PYTHON):
	python3 -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@ $(VENV)/.installed

# The sandbox needs bubblewrap and socat from Debian; installed only when missing.
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
