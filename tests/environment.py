"""Loaded with ``-p tests.environment`` (pyproject addopts), before pytest-django reads the
settings: tests get their own var/ (secret key, slide store, embedded Redis, SQLite test
database), AI runs and tile pre-rendering start only where a test starts them."""

import os
import tempfile

os.environ.setdefault("MITOLENS_VAR_DIR", tempfile.mkdtemp(prefix="mitolens-test-"))
os.environ["AUTO_RUN_INFERENCE"] = "0"
os.environ["TILE_PRERENDER"] = "off"
