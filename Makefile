# MitoLens: `make demo` runs the portal with demo data; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install static clean-var test-tools

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py setup_demo
	$(PY) manage.py serve_demo

test: $(STAMP) test-tools
	$(PY) -m pytest $(PYTEST_ARGS)

# The browser tests drive Debian's chromium (never a downloaded browser) and the front
# server test Debian's nginx; install them where we may, otherwise those tests skip with
# the reason.
test-tools:
	@(command -v chromium && command -v nginx) >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] \
	  || ! command -v apt-get >/dev/null 2>&1 \
	  || apt-get install -y -q chromium nginx-light >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium nginx-light >/dev/null 2>&1) \
	  || echo "chromium and nginx could not be installed: the browser and front-server tests will be skipped"

# Static files as production serves them (the Dockerfile runs the same script).
static: $(STAMP)
	PYTHON=$(PY) scripts/build-static

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-var:
	rm -rf var/
