# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test lint typecheck pytest clis postgres bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

# The pinned agent CLIs (package.json + package-lock.json) go into node_modules/.
# Without node/npm the real-CLI tests skip (and .ci/run, which sets
# BEAMAGENT_REQUIRE_CLIS=1, fails them).
clis: $(STAMP)
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
		$(BIN)/python -c 'from beamagent.testing import ensure_installed; ensure_installed(("claude", "codex", "gemini", "copilot", "opencode"))'; \
	else \
		echo "warning: node and npm not found; the real-CLI tests will be skipped" >&2; \
	fi

# The PostgreSQL server the store tests start in a temp dir (Debian's postgresql-15; see
# docs/decisions.md), installed only when no /usr/lib/postgresql/*/bin/postgres exists.
# Without root or apt-get the PostgreSQL tests are skipped (and fail in CI: CI=true or
# BEAMAGENT_REQUIRE_POSTGRES=1, see beamagent/testing/postgres.py).
postgres:
	@if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends postgresql-15; \
	else \
		echo "warning: no PostgreSQL server and no root/apt-get to install postgresql-15;" \
			"the PostgreSQL tests will be skipped" >&2; \
	fi

demo: $(STAMP)
	$(BIN)/beamagent demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) clis postgres
	$(BIN)/python -m pytest -p no:cacheprovider

test: lint typecheck pytest

# The long form of the reliability suite (tests/reliability): more faults, kills, examples.
soak: $(STAMP) clis
	BEAMAGENT_SOAK=1 $(BIN)/python -m pytest -p no:cacheprovider -m reliability -s \
		-o timeout=7200 tests/reliability

# Every benchmark, one after another; writes bench/REPORT.md. BENCH_ARGS=--quick for a smoke run.
bench: $(BENCH_STAMP) clis
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
