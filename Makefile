# MitoLens: `make demo` runs the portal with demo data; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install static clean-var chromium

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

test: $(STAMP) chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# The browser tests drive Debian's chromium (never a downloaded browser); install it
# where we may, otherwise those tests skip with the reason.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 \
	  || apt-get install -y -q chromium >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) \
	  || echo "chromium could not be installed: the browser tests will be skipped"

# Static files as production serves them (the Dockerfile runs the same script).
static: $(STAMP)
	PYTHON=$(PY) scripts/build-static

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-var:
	rm -rf var/
