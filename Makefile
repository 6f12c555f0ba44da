# The two commands of the README: `make run` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config/gateway.yaml

.PHONY: run test test-floors test-compose check check-config docs bench clean

## run: create the virtualenv and serve the showcase (demo/) on the embedded defaults; the first
## run migrates demo/var/db.sqlite3 and creates the admin / admin superuser (demo/README.md)
run: $(VENV)/.run-deps
	cd demo && ../$(BIN)/python manage.py demo_init
	$(BIN)/gateway run -c $(CONFIG)

## test: create the virtualenv, install the test peers (Mosquitto, Redis, Dovecot, Chromium), run every test
test: $(VENV)/.test-deps
	sh tests/install-peers.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## test-floors: the whole suite with every runtime dependency pinned at the floor pyproject.toml declares
## (a virtualenv of its own, .venv-floors); see tests/floors.sh and docs/compatibility.md
test-floors:
	PYTHON=$(PYTHON) sh tests/floors.sh $(PYTEST_ARGS)

## test-compose: docker-compose.yml for real (root; installs docker.io, docker-compose, debootstrap;
## starts its own dockerd; images cached in $$COMPOSE_TEST_CACHE); see docs/deploy.md
test-compose: $(VENV)/.test-deps
	sh tests/compose/install.sh
	$(BIN)/python -m pytest tests/compose/check_compose.py --timeout=1800 -v -s $(PYTEST_ARGS)

## check: lint (ruff) and type-check (mypy) gateway/, adapters/ and plugins/ with the settings in
## pyproject.toml, lint tests/ and bench/, then validate the config file (check-config)
check: $(VENV)/.test-deps $(VENV)/mypy-path/gateway_adapters
	$(BIN)/ruff check gateway adapters plugins tests bench
	$(BIN)/mypy
	$(MAKE) --no-print-directory check-config

## check-config: validate the config file without starting anything
check-config: $(VENV)/.run-deps
	$(BIN)/gateway check $(CONFIG)

# mypy checks adapters/ under its installed name, gateway_adapters (see [tool.mypy] in pyproject.toml)
$(VENV)/mypy-path/gateway_adapters: $(VENV)/.python
	mkdir -p $(VENV)/mypy-path
	ln -sfn ../../adapters $@

## docs: regenerate docs/config-reference.md from the config models
docs: $(VENV)/.run-deps
	$(BIN)/gateway schema > docs/config-reference.md

## bench: the side-by-side benchmarks (needs wrk: apt-get install wrk); see bench/README.md
bench: $(VENV)/.bench-deps
	$(BIN)/python bench/http.py
	$(BIN)/python bench/http_cpu.py
	$(BIN)/python bench/websocket.py
	$(BIN)/python bench/layer.py
	$(BIN)/python bench/mqtt.py
	$(BIN)/python bench/email.py
	$(BIN)/python bench/django.py

$(VENV)/.python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "asgi-gateway needs Python 3.11 or newer; run: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	touch $@

# setuptools explains at length how an editable install with a package-dir mapping works
# (adapters/ is installed as gateway_adapters); a set-up command should print nothing.
PIP_INSTALL := PYTHONWARNINGS=ignore $(BIN)/pip install -q

$(VENV)/.run-deps: $(VENV)/.python pyproject.toml
	$(PIP_INSTALL) -e '.[speed,django,reload]'
	touch $@

$(VENV)/.test-deps: $(VENV)/.python pyproject.toml
	$(PIP_INSTALL) -e '.[dev,redis,speed,django,reload]'
	touch $@ $(VENV)/.run-deps

$(VENV)/.bench-deps: $(VENV)/.python pyproject.toml
	$(PIP_INSTALL) -e '.[bench,redis,dev]'
	touch $@

clean:
	rm -rf $(VENV) .venv-floors build *.egg-info
