# Two commands from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-sqlite test-postgres lint test-tools client-tools relay-tools bench bench-fleet bench-tools clean

# The node, plus (dev/) its test doubles and the demo, which the wheel does not carry.
$(STAMP): pyproject.toml dev/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]" -e ./dev
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/satsrouter-demo

lint: $(STAMP)
	$(BIN)/ruff check satsrouter dev tests bench
	$(BIN)/ruff format --check satsrouter dev tests bench
	$(BIN)/mypy

# The whole suite twice, at once (one pytest process each, on 2 cores): every node the tests
# start runs on SQLite, then on Postgres (tests/databases.py). Each half's output appears
# when it ends. `make test-sqlite` or `make test-postgres` runs one half alone;
# PYTEST_ARGS passes arguments to pytest (e.g. PYTEST_ARGS="-x tests/test_ecash.py").
test: lint test-tools
	@echo "pytest: the suite on SQLite and on Postgres, side by side (each prints when done)"
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-sqlite test-postgres

test-sqlite: $(STAMP) test-tools
	SATSROUTER_TEST_DATABASE=sqlite $(BIN)/pytest -q $(PYTEST_ARGS)

# Its own cache directory: the two halves' "last failed" lists would overwrite each other.
test-postgres: $(STAMP) test-tools
	SATSROUTER_TEST_DATABASE=postgres $(BIN)/pytest -q -o cache_dir=.pytest_cache/postgres \
		$(PYTEST_ARGS)

# The tests start their own throwaway Postgres cluster from Debian's server binaries.
TEST_TOOLS := $(if $(wildcard /usr/lib/postgresql/*/bin/initdb),ok)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The dashboard's browser test (tests/test_dashboard_browser.py, marker `browser`) drives
# Debian's Chromium through Playwright: no browser is downloaded (`playwright install` is
# never run).
CHROMIUM := $(if $(wildcard /usr/bin/chromium),ok)

# Rate limits shared through Redis (tests/test_rate_limits.py) run Debian's `redis-server`,
# started by the tests on a free loopback port (tests/conftest_redis.py).
REDIS := $(if $(wildcard /usr/bin/redis-server),ok)

# The nginx example (deploy/nginx.conf) is checked with `nginx -t` (tests/test_deploy_files.py);
# the bench's fleet mode runs nginx and wrk (tests/test_bench_fleet.py).
NGINX := $(if $(and $(wildcard /usr/sbin/nginx),$(wildcard /usr/bin/wrk)),ok)

# The Nostr tests' relay (PyPI nostr-relay) runs from its own venv, .venv/nostr-relay: its
# pins conflict with ours (dev/satsrouter_dev/nostr_relay_requirements.txt). Remade only
# when those pins change.
relay-tools: $(STAMP)
	$(BIN)/python -m satsrouter_dev.nostr_relay --install >/dev/null

test-tools: client-tools relay-tools
ifneq ($(TEST_TOOLS),ok)
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
endif
ifneq ($(CHROMIUM),ok)
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
endif
ifneq ($(REDIS),ok)
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
endif
ifneq ($(NGINX),ok)
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk
endif

# The real-program tests (tests/test_real_clients.py, marker `clients`) run Claude Code, the
# Node.js openai SDK and curl. Node.js, npm and curl come from Debian when missing; the npm
# packages, pinned in tests/clients/package-lock.json, are installed by `npm ci`, again only
# when the lock is newer than the last install (npm writes node_modules/.package-lock.json).
CLIENTS := tests/clients
CLIENT_INSTALL := $(CLIENTS)/node_modules/.package-lock.json
CLIENT_PROGRAMS := $(shell command -v node >/dev/null && command -v npm >/dev/null && command -v curl >/dev/null && echo ok)

client-tools: $(CLIENT_INSTALL)

$(CLIENT_INSTALL): $(CLIENTS)/package.json $(CLIENTS)/package-lock.json
ifneq ($(CLIENT_PROGRAMS),ok)
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm curl
endif
	cd $(CLIENTS) && npm ci --no-audit --no-fund
	touch $@

# nginx (the fast fake upstream) and wrk (the load generator) come from Debian.
BENCH_TOOLS := $(shell command -v wrk >/dev/null && { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null && echo ok)

bench-tools:
ifneq ($(BENCH_TOOLS),ok)
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq nginx-light wrk
endif

# BASELINE=<commit>: A/B, that commit's node beside this tree's, in turns (bench/README.md).
bench: $(STAMP) bench-tools
	$(BIN)/python -m bench $(if $(BASELINE),--baseline $(BASELINE)) $(BENCH_ARGS)

# One SQLite node, then one, two and three nodes on one Postgres (bench/README.md, "Fleet").
bench-fleet: $(STAMP) bench-tools
ifneq ($(TEST_TOOLS),ok)
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
endif
	$(BIN)/python -m bench --fleet $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache $(CLIENTS)/node_modules
