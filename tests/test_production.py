"""The production stack as docker-compose runs it, driven by a real browser.

Static files are built by scripts/build-static (as the Dockerfile builds them), the web is
the Dockerfile's gunicorn command with DEBUG=0, an RQ worker runs the AI and the
explanations, and the database and Redis are CI's PostgreSQL and Redis (or the embedded
ones). gunicorn serves TLS itself here, standing in for the TLS proxy of docs/deploy.md,
so secure cookies, CSRF origin checks and HTTPS redirects work as they do deployed.
"""

import json
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from cases.registration import register_slide
from inference import services
from inference.models import InferenceRun
from review.models import Decision
from tests.browser import ARTIFACTS, CHROMIUM, SKIP_REASON, sign_in, wait_until
from tests.conftest import subprocess_env

ROOT = Path(settings.BASE_DIR)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=SKIP_REASON),
]


def dockerfile_cmd() -> list[str]:
    """The web container's command, as the Dockerfile states it."""
    line = next(
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")
    )
    return json.loads(line.removeprefix("CMD "))


@pytest.fixture(scope="session")
def static_root(tmp_path_factory) -> Path:
    """Static files built the one production way, into a fresh STATIC_ROOT."""
    root = tmp_path_factory.mktemp("staticfiles")
    subprocess.run(
        [str(ROOT / "scripts" / "build-static")],
        env={**subprocess_env(), "STATIC_ROOT": str(root), "PYTHON": sys.executable},
        check=True,
        timeout=300,
    )
    assert (root / "staticfiles.json").exists(), "no manifest: DEBUG=0 pages would answer 500"
    return root


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(url: str) -> tuple[int, bytes]:
    context = ssl._create_unverified_context()  # our own self-signed certificate
    try:
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def production_stack(static_root, certificate, rq_queues):
    """gunicorn (the Dockerfile's CMD, DEBUG=0, TLS) and one RQ worker; yields the URL."""
    port = free_port()
    cert, key = certificate
    env = {
        **subprocess_env(),
        "DEBUG": "0",
        "SECRET_KEY": "production-test-" + "k" * 40,
        "ALLOWED_HOSTS": "127.0.0.1",
        "STATIC_ROOT": str(static_root),
        "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} --workers 2 --certfile {cert} "
        f"--keyfile {key}",
    }
    command = dockerfile_cmd()
    command[0] = str(Path(sys.executable).parent / command[0])
    log = ARTIFACTS / "production-stack.log"
    ARTIFACTS.mkdir(exist_ok=True)
    with open(log, "w") as output:
        web = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=output)
        worker = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "rqworker",
                "inference",
                "explain",
                "default",
                "tiles",
                "training",
            ],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=output,
        )
        url = f"https://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while fetch_or_none(f"{url}/accounts/login/") != 200:
                assert web.poll() is None, f"gunicorn exited: see {log}"
                assert time.monotonic() < deadline, f"gunicorn did not answer: see {log}"
                time.sleep(0.3)
            yield url
        finally:
            for process in (web, worker):
                process.terminate()
            for process in (web, worker):
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


def fetch_or_none(url: str) -> int | None:
    try:
        return fetch(url)[0]
    except OSError:
        return None


def wait_for_run(run: InferenceRun, timeout: float = 300) -> InferenceRun:
    deadline = time.monotonic() + timeout
    while not run.is_finished:
        assert time.monotonic() < deadline, f"run still {run.status} at {run.progress} %"
        time.sleep(0.5)
        run.refresh_from_db()
    return run


def assert_static_served(responses: list[tuple[int, str]]) -> None:
    """Every static asset answered 200, under its hashed (manifest) name."""
    static = [(status, url) for status, url in responses if "/static/" in url]
    assert static, "the pages referenced no static files"
    assert all(status in (200, 304) for status, _ in static), static
    hashed = re.compile(r"\.[0-9a-f]{12}\.\w+$")
    assert any(hashed.search(url) for _, url in static), static


@pytest.mark.django_db(transaction=True)
def test_the_production_stack_serves_a_whole_review(
    browser, production_stack, pathologist, lab_admin, case, synthetic_slide, shipped_models
):
    url = production_stack
    slide = register_slide(synthetic_slide, case, synthetic_slide.name)
    run = wait_for_run(services.start_run(slide))
    assert run.status == InferenceRun.Status.SUCCEEDED, run.error
    assert fetch(f"{url}/healthz")[0] == 200

    page, errors = sign_in(browser, production_stack, pathologist.username)
    responses: list[tuple[int, str]] = []
    page.on("response", lambda r: responses.append((r.status, r.url)))
    page.goto(f"{url}/")
    page.click(f"text={case.accession}")
    page.wait_for_selector("text=Sign-out")
    page.click(f"text={slide.original_name}")
    wait_until(
        page,
        "window.mitolensViewer && window.mitolensViewer.world.getItemCount() > 0"
        " && window.mitolensViewer.world.getItemAt(0).getFullyLoaded()",
    )
    assert any("_files/" in u and s == 200 for s, u in responses), "no tile loaded"
    page.wait_for_selector("#review-panel:not([hidden])")
    page.keyboard.press("n")
    page.wait_for_selector("#finding-panel:not([hidden])")
    with page.expect_response(lambda r: "/decide/" in r.url and r.status == 200):
        page.keyboard.press("a")
    decision = Decision.objects.get()
    assert decision.verdict == "agree" and decision.reviewer == pathologist
    page.screenshot(path=ARTIFACTS / "production-viewer.png")

    missing = page.request.get(f"{url}/cases/{case.pk + 1000}/")
    assert missing.status == 404 and "Not found" in missing.text()
    page.goto(f"{url}/api/docs/")
    page.wait_for_selector(".swagger-ui .info")
    assert_static_served(responses)
    assert not errors, errors
    page.close()

    page, errors = sign_in(browser, production_stack, lab_admin.username)
    page.on("response", lambda r: responses.append((r.status, r.url)))
    page.click("text=Audit export")
    with page.expect_download() as download:
        page.click("button[name=download]")
    text = Path(download.value.path()).read_text(encoding="utf-8-sig")
    assert "agree" in text and pathologist.username in text
    assert_static_served(responses)
    assert not errors, errors
