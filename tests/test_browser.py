"""End to end in a real headless browser (Playwright driving Debian's chromium): sign in,
queue, case, viewer with tiles and findings, a keyboard decision, the hotspot button, and
an admin's CSV export. Screenshots go to test-artifacts/."""

import os
from pathlib import Path

import pytest

from review.models import Decision
from review.vocabulary import PHASE_SIGNS
from tests.browser import ARTIFACTS, CHROMIUM, SKIP_REASON, sign_in, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=SKIP_REASON),
]


@pytest.mark.django_db(transaction=True)
def test_a_pathologist_reviews_with_the_keyboard(
    browser, live_server, pathologist, reviewed_slide, rq_queues
):
    page, errors = sign_in(browser, live_server.url, pathologist.username)
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
    dot = "#phase-filters input[value=metaphase] + .phase-dot"  # drawn from the vocabulary
    colour = page.eval_on_selector(dot, "e => getComputedStyle(e).backgroundColor")
    assert colour == "rgb({}, {}, {})".format(*PHASE_SIGNS["metaphase"]["rgb"])

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
    from review.services import decide

    decide(finding, pathologist, "disagree", reason="lookalike")
    page, errors = sign_in(browser, live_server.url, lab_admin.username)
    page.click("text=Audit export")
    page.screenshot(path=ARTIFACTS / "audit_export.png")
    with page.expect_download() as download:
        page.click("button[name=download]")
    path = download.value.path()
    text = Path(path).read_text(encoding="utf-8-sig")
    assert text.splitlines()[0].startswith("decision_id,decided_at,case")
    assert "disagree" in text and pathologist.username in text
    assert not errors, errors
