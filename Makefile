# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FLASK  := $(BIN)/flask --app wsgi
PG_ADMIN_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres

.PHONY: install run test lint format test-sqlite test-postgres browser bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(FLASK) db upgrade
	$(FLASK) billing catalog load --if-empty billing/plans/default_catalog.yaml
	SCHEDULER_ENABLED=true $(FLASK) run --host 127.0.0.1 --port 5000 --no-reload

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-sqlite: install
	$(BIN)/pytest -q -p no:cacheprovider

test-postgres: install
	@if scripts/ensure-postgres.sh; then \
	  TEST_DATABASE_URL=$(PG_ADMIN_URL) $(BIN)/pytest -q -p no:cacheprovider; \
	else \
	  echo "SKIPPED the PostgreSQL run: no PostgreSQL server could be started (see above)."; \
	fi

# The browser tests drive Debian's Chromium (never a downloaded browser); install it when missing.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian's chromium for the browser tests..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "No /usr/bin/chromium and no way to install it: the browser tests will be skipped."; \
	  fi; \
	fi

# The two suites at once (one after the other they took 23 minutes on the 2-core host at its
# slowest, past CI's 20); each one's output is printed whole when it is done.
test: lint browser install
	$(MAKE) --no-print-directory -j2 --output-sync=target test-sqlite test-postgres

# Benchmarks print their figures (ratios against baselines measured in the same run) on PostgreSQL.
bench: install
	scripts/ensure-postgres.sh
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

# The long reliability variants (storms, crashes, fuzzing soaks).
soak: install
	scripts/ensure-postgres.sh
	TEST_DATABASE_URL=$(PG_ADMIN_URL) $(BIN)/pytest -q -p no:cacheprovider -m slow tests/reliability

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache
