# derbus — two commands: `make run` starts the platform, `make test` runs the whole suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# uv on PATH, else the uv module of this python (installed by `make venv` when missing)
UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
APT_PACKAGES := mosquitto mosquitto-clients postgresql victoria-metrics mbpoll chromium chromium-driver npm nats-server
# the console's browser assets (htmx, uPlot; axe-core for the browser tests), from npm, pinned
CONSOLE := services/console
CONSOLE_VENDOR := $(CONSOLE)/src/console/static/vendor
export UV_LINK_MODE := copy

.PHONY: compose-check console-assets console-docs help run test test-dates faketime deps system-deps venv lint format typecheck unit integration topics acl dockerfiles proto bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

system-deps:  ## install mosquitto, postgresql, victoria-metrics, mbpoll, chromium, npm, nats-server when missing (Debian)
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v mosquitto_sub >/dev/null || missing="$$missing mosquitto-clients"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v victoria-metrics >/dev/null || [ -x /usr/bin/victoria-metrics ] || missing="$$missing victoria-metrics"; \
	command -v mbpoll >/dev/null || missing="$$missing mbpoll"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing="$$missing nats-server"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=300 $$missing \
	    || echo "warning: could not install$$missing (make run falls back to amqtt; tests will fail clearly)"; \
	fi

# --compile-bytecode: every service and test process starts from .pyc files even where
# PYTHONDONTWRITEBYTECODE is set (as on the build machines): importing pandas + scipy took
# 18 s without them, 6 s with them, on the same loaded 2-core machine
venv:  ## create .venv with the whole workspace from uv.lock
	@command -v uv >/dev/null || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --all-packages --quiet --compile-bytecode

console-assets: $(CONSOLE_VENDOR)/.stamp  ## vendor the console's browser assets from npm (never a CDN at run time)

$(CONSOLE_VENDOR)/.stamp: $(CONSOLE)/package.json $(CONSOLE)/package-lock.json
	@cd $(CONSOLE) && npm ci --ignore-scripts --no-audit --no-fund --silent
	@mkdir -p $(CONSOLE_VENDOR) $(CONSOLE)/tests/vendor
	@cp $(CONSOLE)/node_modules/htmx.org/dist/htmx.min.js $(CONSOLE)/node_modules/uplot/dist/uPlot.iife.min.js \
	  $(CONSOLE)/node_modules/uplot/dist/uPlot.min.css $(CONSOLE_VENDOR)/
	@cp $(CONSOLE)/node_modules/htmx.org/LICENSE $(CONSOLE_VENDOR)/LICENSE.htmx
	@cp $(CONSOLE)/node_modules/uplot/LICENSE $(CONSOLE_VENDOR)/LICENSE.uplot
	@cp $(CONSOLE)/node_modules/axe-core/axe.min.js $(CONSOLE)/tests/vendor/
	@touch $@

deps: system-deps venv console-assets  ## everything `make run` and `make test` need

run: deps  ## start broker + every service on embedded defaults, show derbus watch (Ctrl-C stops; MQTT_PORT=… picks the broker port)
	@$(UV) run --frozen --no-sync derbus up $(if $(MQTT_PORT),--mqtt-port $(MQTT_PORT))

topics: venv  ## write docs/topics.md, docs/asyncapi.yaml and the broker ACL from the catalogue
	@$(UV) run --frozen --no-sync derbus topics --output docs/topics.md
	@$(UV) run --frozen --no-sync derbus asyncapi --output docs/asyncapi.yaml
	@$(UV) run --frozen --no-sync derbus acl --acl-only

acl: topics  ## same as `make topics` (the ACL follows the catalogue)

dockerfiles: venv  ## render every services/*/Dockerfile from deploy/docker/service.Dockerfile.in
	@$(UV) run --frozen --no-sync python deploy/docker/render.py

proto: venv  ## regenerate the Sparkplug B classes from services/scada_bridge/src/scada_bridge/proto
	@cd services/scada_bridge/src/scada_bridge && ../../../../.venv/bin/python -m grpc_tools.protoc \
	  -Iproto --python_out=. --pyi_out=. proto/sparkplug_b.proto

lint: venv  ## ruff check + ruff format --check
	@$(UV) run --frozen --no-sync ruff check .
	@$(UV) run --frozen --no-sync ruff format --check .

format: venv  ## apply ruff format and fixes
	@$(UV) run --frozen --no-sync ruff format .
	@$(UV) run --frozen --no-sync ruff check --fix .

typecheck: venv  ## mypy --strict on libs/ and services/
	@$(UV) run --frozen --no-sync mypy libs/common/src $(wildcard services/*/src)

unit: venv  ## unit tests only (no network)
	@$(UV) run --frozen --no-sync pytest -q -m "not integration"

integration: deps  ## integration tests against real Mosquitto, PostgreSQL, Modbus, VictoriaMetrics
	@$(UV) run --frozen --no-sync pytest -q -m integration

test: deps lint typecheck  ## install what is missing, lint, type-check, then every test
	@$(UV) run --frozen --no-sync pytest -q

console-docs: deps  ## run the console's browser tests, their screenshots into docs/console (docs/console.md)
	@DERBUS_SCREENSHOTS=docs/console $(UV) run --frozen --no-sync pytest -q tests/integration/test_console_browser.py

# Instants the suite must pass at: European summer time starts, midsummer noon, summer time
# ends, the last minutes of a year. `make test-dates DATES="2028-02-29T12:00Z"` tries others.
DATES ?= 2027-03-28T01:30Z 2027-06-21T12:00Z 2027-10-31T00:30Z 2027-12-31T23:50Z

faketime:  ## install Debian faketime (libfaketime) when missing
	@command -v faketime >/dev/null || { \
	  echo "installing system packages: faketime"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=300 faketime; }

test-dates: deps faketime  ## unit + integration suites under libfaketime at each of DATES (not in make test)
	@mkdir -p run; results=""; failed=0; \
	for d in $(DATES); do \
	  offset=$$(( $$(date -d "$$d" +%s) - $$(date +%s) )); \
	  log="run/test-dates-$$d.log"; \
	  echo "== $$d (clock moved by $$offset s; log $$log)"; \
	  FAKETIME_DONT_FAKE_MONOTONIC=1 NO_FAKE_STAT=1 PYTHONPATH=$(CURDIR)/tests/faketime \
	    faketime -f "+$${offset}s" $(CURDIR)/.venv/bin/pytest -q -p no:cacheprovider -p faketime_plugin 2>&1 | tee "$$log"; \
	  rc=$${PIPESTATUS[0]}; [ $$rc = 0 ] || failed=1; \
	  results="$$results\n$$d: $$(tail -n 1 "$$log") (exit $$rc)"; \
	done; \
	echo -e "\n== test-dates$$results"; exit $$failed

bench: deps  ## run the benchmarks (tables on stdout; see BENCHMARKS.md)
	@for b in bench/bench_*.py; do echo "== $$b"; $(UV) run --frozen --no-sync python $$b || exit 1; done

# Not part of `make test` (it builds every image: many minutes on a loaded machine).
compose-check: venv console-assets  ## build every image, run docker compose up for real (private dockerd, stand-in base images), check it, stop it
	@missing=""; \
	command -v docker >/dev/null || missing="$$missing docker.io"; \
	command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing="$$missing debootstrap"; \
	docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=300 $$missing; \
	fi
	@PATH="/usr/sbin:$$PATH" .venv/bin/python deploy/compose-check/compose_check.py $(COMPOSE_CHECK_ARGS)

clean:  ## remove caches and run folders
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache run
