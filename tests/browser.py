"""Helpers for the browser tests: Playwright driving Debian's chromium (never a downloaded
browser). The `browser` fixture is in conftest.py."""

import shutil
import time
from pathlib import Path

from django.conf import settings

from tests.conftest import PASSWORD

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
SKIP_REASON = "no chromium: `make test` installs Debian's chromium where apt-get can run"


def wait_until(page, expression: str, timeout: float = 20.0) -> None:
    """Poll a JavaScript expression until it is true. (Playwright's wait_for_function
    compiles its predicate with eval, which the pages' Content-Security-Policy forbids.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(100)


def sign_in(browser, base_url: str, username: str):
    """A new page signed in as ``username``, and the list its console errors, page errors
    and failed responses are collected into."""
    page = browser.new_page(
        viewport={"width": 1500, "height": 900}, accept_downloads=True, ignore_https_errors=True
    )
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(f"{base_url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/")
    return page, errors
