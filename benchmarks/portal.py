"""A fresh portal for a benchmark: its own folder, SQLite database and embedded Redis (unless
the caller names a database), production settings (DEBUG=0), no automatic AI runs."""

import os
from pathlib import Path

BENCH_PASSWORD = "bench-password-1"


def portal_env(var_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a portal under ``var_dir``; ``settings`` add or override
    variables (e.g. ``TILE_PRERENDER="off"``)."""
    return {
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "MITOLENS_VAR_DIR": str(var_dir),
        "SLIDE_IMPORT_DIRS": str(var_dir / "import"),
        "DATABASE_URL": f"sqlite:///{var_dir / 'mitolens.sqlite3'}",
        "REDIS_URL": "",  # the embedded redis-server under var_dir
        "DEBUG": "0",
        "SECRET_KEY": "benchmark-only-secret-key-" + "x" * 40,
        "ALLOWED_HOSTS": "127.0.0.1,testserver",
        "SECURE_SSL_REDIRECT": "0",
        "LOG_LEVEL": "WARNING",
        "AUTO_RUN_INFERENCE": "0",
        **settings,
    }


def setup_portal(var_dir: Path, **settings: str) -> None:
    """Set Django up in this process for a portal under ``var_dir`` (see
    :func:`portal_env`) and migrate its new database."""
    os.environ.update(portal_env(var_dir, **settings))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def bench_user(name: str, group: str):
    """A user of ``group`` (``pathologist`` or ``lab_admin``) with BENCH_PASSWORD."""
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user(name, password=BENCH_PASSWORD)
    user.groups.add(Group.objects.get(name=group))
    return user


def bench_case(accession: str = "BENCH-1", reader=None):
    """A case of a benchmark patient, assigned to ``reader`` where given."""
    from cases.models import Case, CaseAssignment, Patient

    patient, _ = Patient.objects.get_or_create(external_ref="BENCH")
    case = Case.objects.create(accession=accession, patient=patient)
    if reader is not None:
        CaseAssignment.objects.create(case=case, pathologist=reader)
    return case
