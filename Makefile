# Switchyard: `make run` serves proxy.yaml on 127.0.0.1:8080, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install native clean-native run test test-fast check lint clean redis postgres tools bench bench-suites bench-anchors

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The request path's modules (pyproject.toml's [tool.switchyard.native]) compiled to C with
# mypyc, beside their sources (proxy/native.py); rebuilt when any source changes. Importing
# proxy refuses a compiled module older than its source; `make clean-native` runs from source.
NATIVE := proxy/native.json
# removed before each build, outside Python: importing proxy refuses a stale build
REMOVE_NATIVE := find proxy -name '*.so' -delete; rm -f $(NATIVE)
$(NATIVE): $(STAMP) pyproject.toml $(shell find proxy -name '*.py')
	@$(REMOVE_NATIVE)
	$(BIN)/python -c 'from proxy.native import main; main()'

native: $(NATIVE)

clean-native:
	$(REMOVE_NATIVE)

run: install native
	$(BIN)/switchyard serve --config proxy.yaml

# Programs the tests need besides Python packages (Prometheus, redis-server): installed
# from Debian's packages when this user can, else a clear note of what is missing.
tools:
	@bash tests/install-tools.sh

# Tests use the real Redis at $$SWITCHYARD_TEST_REDIS_URL (default redis://127.0.0.1:6379/15,
# a database of their own); start a local one when none answers.
redis: install tools
	@$(BIN)/python -c "import os, redis; redis.Redis.from_url(os.environ.get('SWITCHYARD_TEST_REDIS_URL', 'redis://127.0.0.1:6379/15'), socket_connect_timeout=1).ping()" 2>/dev/null \
	  || { command -v redis-server >/dev/null \
	       && redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
	       && sleep 1 && echo "started redis-server on 127.0.0.1:6379"; } \
	  || echo "no Redis answers and redis-server is not installed: Redis tests will fail"

# The ledger tests use the real PostgreSQL at $$SWITCHYARD_TEST_PG_URL (default
# postgresql://postgres@127.0.0.1:5432/postgres; each run creates and drops a database of
# its own); start a private one when none answers and initdb/pg_ctl are installed.
postgres: install
	@PYTHON=$(BIN)/python bash tests/postgres.sh

test: check tools redis postgres
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# the fast loop: no subprocesses, Redis, Prometheus or PostgreSQL (`make test` runs everything)
test-fast: check
	$(BIN)/python -m pytest -q -m "not integration" $(PYTEST_ARGS)

# Load tests (need wrk: apt-get install wrk); tables and charts go to stdout and loadtest/results/.
# `make bench` puts Switchyard, the bare mock, two featureless references (a pass-through on
# Switchyard's own stack, and nginx: installed here as root, else its column is skipped) and
# (after `make bench-anchors`) LiteLLM and Portkey side by side in one run, with each one's
# CPU µs per request; `make bench-suites` has the cache and telemetry detail.
bench: install native
	$(BIN)/pip install --quiet -e '.[bench]'
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { [ "$$(id -u)" = 0 ] \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx >/dev/null; } \
	  || echo "nginx is not installed (apt-get install -y nginx): the nginx column is skipped"
	$(BIN)/python loadtest/compare.py --scenarios steady,spike,stress,surfaces

bench-suites: install native redis
	for suite in core cache telemetry; do $(BIN)/python loadtest/bench.py --suite $$suite || exit 1; done

bench-anchors:
	bash loadtest/install_anchors.sh

# the linters and the type checker (configured in pyproject.toml), then the shipped config
# (through the compiled build, as it is served)
lint: install
	$(BIN)/ruff check proxy tests loadtest
	$(BIN)/mypy

check: lint native
	$(BIN)/switchyard check proxy.yaml > /dev/null

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info build
	$(REMOVE_NATIVE)
