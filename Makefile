# The two commands the README opens with work on a fresh machine with only Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit docs docs-build bench clean redis-server

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "moneykit_async needs Python 3.11 or newer (set PYTHON=python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

## demo: install the package and run it end to end against the built-in offline sandbox
demo: $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check .
	$(BIN)/python -m moneykit_async demo

## test: install with the dev and docs dependency groups, then lint, type-check, build the docs and run the whole
## suite with coverage
test: $(BIN)/python redis-server
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade 'pip>=25.1'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --group dev --group docs -e .
	$(MAKE) lint typecheck docs-build unit

# The fleet tests (RedisTokenStore, arq) start their own redis-server. Installed here where that can be done
# without asking (root with apt-get, as in CI); otherwise they are skipped, and both this and pytest say so loudly.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; } || true
	@command -v redis-server >/dev/null 2>&1 || \
		echo "*** redis-server is not installed and could not be installed here: the fleet tests will be SKIPPED ***"

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy --strict moneykit_async moneykit_async_pytest.py examples

unit:
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest -W error
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report

## docs: install the docs dependency group, then build the documentation into build/site/ (open index.html there)
docs: $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade 'pip>=25.1'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --group docs
	$(MAKE) docs-build

# Warnings are errors (strict: true in mkdocs.yml): a broken link, a missing anchor, an included file or a
# documented name that no longer exists fails the build (not with --quiet: it hides the warnings, and strict
# then passes). The variable hides a notice about MkDocs 2.
docs-build:
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

## bench: the side-by-side benchmarks: throughput against a fair raw-aiohttp baseline, then rate-limited
## batches (this SDK, an ideal paced client, the official client), then the web integrations' overhead per request
## on a cache hit; see benchmarks/
bench: $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade 'pip>=25.1'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --group bench -e '.[speed]'
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/rate_limited.py $(RATE_BENCH_ARGS)
	$(BIN)/python benchmarks/integrations.py $(INTEGRATION_BENCH_ARGS)

clean:
	rm -rf $(VENV) .coverage .mypy_cache .ruff_cache .pytest_cache dist build
