"""Shared fixtures: roles, a case with a synthetic slide, the embedded or CI Redis."""

import os
import tempfile

# Tests get their own var/ (secret key, slide store, embedded Redis) before Django loads.
os.environ.setdefault("MITOLENS_VAR_DIR", tempfile.mkdtemp(prefix="mitolens-test-"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth.models import Group, User  # noqa: E402

from cases.groups import LAB_ADMIN, PATHOLOGIST  # noqa: E402
from cases.models import Case, CaseAssignment, Patient  # noqa: E402
from cases.registration import register_slide  # noqa: E402

PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="session")
def import_dir() -> Path:
    directory = Path(settings.SLIDE_IMPORT_DIRS[0])
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="session")
def synthetic_slide(import_dir) -> Path:
    """A small synthetic slide at 0.25 µm/px, made once per test session."""
    from inference.engine.synth import generate_slide

    path = import_dir / "synthetic-small.tiff"
    generate_slide(path, seed=7, size=(3000, 2400), mpp=0.25)
    return path


def make_user(username: str, group: str, staff: bool = False) -> User:
    user = User.objects.create_user(username, password=PASSWORD, is_staff=staff)
    user.groups.add(Group.objects.get(name=group))
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
