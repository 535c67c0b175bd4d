"""End to end in a real headless browser (Playwright driving Debian's chromium): sign in,
queue, case, viewer with tiles and findings, a keyboard decision, the hotspot button, and
an admin's CSV export. Screenshots go to test-artifacts/."""

import os
import shutil
import time
from pathlib import Path

import pytest
from django.conf import settings

from cases.models import Decision
from tests.conftest import PASSWORD

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason="no chromium: `make test` installs Debian's chromium where apt-get can run",
    ),
]


@pytest.fixture
def browser(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the ORM must still run here.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


def wait_until(page, expression: str, timeout: float = 20.0) -> None:
    """Poll a JavaScript expression until it is true. (Playwright's wait_for_function
    compiles its predicate with eval, which the pages' Content-Security-Policy forbids.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(100)


def sign_in(browser, live_server, username):
    page = browser.new_page(viewport={"width": 1500, "height": 900}, accept_downloads=True)
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    return page, errors


@pytest.mark.django_db(transaction=True)
def test_a_pathologist_reviews_with_the_keyboard(browser, live_server, pathologist, reviewed_slide):
    page, errors = sign_in(browser, live_server, pathologist.username)
    case = reviewed_slide.case
    page.click(f"text={case.accession}")
    page.wait_for_selector("text=Sign-out")
    page.screenshot(path=ARTIFACTS / "case.png", full_page=True)

    page.click(f"text={reviewed_slide.original_name}")
    wait_until(
        page,
        "window.mitolensViewer && window.mitolensViewer.world.getItemCount() > 0"
        " && window.mitolensViewer.world.getItemAt(0).getFullyLoaded()",
    )
    wait_until(
        page, "window.mitolensFindings && window.mitolensFindings.state.visible.length === 5"
    )
    page.wait_for_selector("#review-panel:not([hidden])")
    assert "0 of 5 decided" in page.inner_text("#review-progress-text")

    page.keyboard.press("n")
    page.wait_for_selector("#finding-panel:not([hidden])")
    with page.expect_response(lambda r: "/decide/" in r.url and r.status == 200):
        page.keyboard.press("a")
    wait_until(
        page, "document.getElementById('review-progress-text').textContent.startsWith('1 of 5')"
    )
    decision = Decision.objects.get()
    assert decision.verdict == "agree" and decision.reviewer == pathologist
    assert decision.finding == reviewed_slide.findings.order_by("-score").first()

    page.wait_for_selector("#hpf-controls:not([hidden])")
    before = page.evaluate("window.mitolensViewer.viewport.getZoom()")
    page.click("#goto-hotspot")
    page.wait_for_timeout(1200)
    assert page.evaluate("window.mitolensViewer.viewport.getZoom()") != before
    page.keyboard.press("n")
    page.wait_for_timeout(600)
    page.screenshot(path=ARTIFACTS / "viewer.png")
    assert not errors, errors


@pytest.mark.django_db(transaction=True)
def test_an_admin_exports_the_audit_csv(
    browser, live_server, lab_admin, reviewed_slide, pathologist
):
    finding = reviewed_slide.findings.first()
    from cases.review import decide

    decide(finding, pathologist, "disagree", reason="lookalike")
    page, errors = sign_in(browser, live_server, lab_admin.username)
    page.click("text=Audit export")
    page.screenshot(path=ARTIFACTS / "audit_export.png")
    with page.expect_download() as download:
        page.click("button[name=download]")
    path = download.value.path()
    text = Path(path).read_text(encoding="utf-8-sig")
    assert text.splitlines()[0].startswith("decision_id,decided_at,case")
    assert "disagree" in text and pathologist.username in text
    assert not errors, errors
