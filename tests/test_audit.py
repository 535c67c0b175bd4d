"""The audit log: what is recorded, the hash chain, and the append-only table."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from cases.audit import verify_chain
from cases.models import AuditEvent
from tests.conftest import PASSWORD


@pytest.mark.django_db
def test_logins_logouts_and_failed_logins_are_recorded(client, pathologist):
    client.post("/accounts/login/", {"username": pathologist.username, "password": "wrong"})
    client.post("/accounts/login/", {"username": pathologist.username, "password": PASSWORD})
    client.post("/accounts/logout/")
    events = list(AuditEvent.objects.values_list("action", "actor_name", "client_ip"))
    assert events == [
        ("login_failed", pathologist.username, "127.0.0.1"),
        ("login", pathologist.username, "127.0.0.1"),
        ("logout", pathologist.username, "127.0.0.1"),
    ]


@pytest.mark.django_db
def test_slide_views_are_recorded(client_for, pathologist, slide):
    client_for(pathologist).get(f"/slides/{slide.pk}/")
    event = AuditEvent.objects.get(action="slide_view")
    assert (event.actor, event.case, event.object_id) == (pathologist, slide.case, str(slide.pk))


def _tamper(event_id: int) -> None:
    """Change a row behind the application's back (on PostgreSQL the trigger must be
    switched off first, as only the table's owner could)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no deferred checks pending
            cursor.execute("ALTER TABLE cases_auditevent DISABLE TRIGGER audit_append_only")
        cursor.execute(
            "UPDATE cases_auditevent SET details = %s WHERE id = %s",
            ['{"verdict": "agree"}', event_id],
        )
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE cases_auditevent ENABLE TRIGGER audit_append_only")


@pytest.mark.django_db
def test_editing_a_row_breaks_the_chain_and_verify_audit_names_it(
    client_for, pathologist, reviewed_slide, capsys
):
    client = client_for(pathologist)
    for finding in reviewed_slide.findings.all()[:3]:
        client.post(f"/findings/{finding.pk}/decide/", {"verdict": "disagree"})
    call_command("verify_audit")
    assert "intact" in capsys.readouterr().out
    second = AuditEvent.objects.filter(action="decision").order_by("id")[1]
    _tamper(second.pk)
    assert verify_chain().broken_id == second.pk
    with pytest.raises(CommandError, match=f"broken at row {second.pk}"):
        call_command("verify_audit")


@pytest.mark.django_db
def test_postgresql_refuses_updates_and_deletes_of_audit_rows(client_for, pathologist, slide):
    if connection.vendor != "postgresql":
        pytest.skip("the trigger exists on PostgreSQL (CI); SQLite relies on the hash chain")
    client_for(pathologist).get(f"/slides/{slide.pk}/")
    before = list(AuditEvent.objects.values_list("id", "action"))
    for statement in ("UPDATE cases_auditevent SET action = 'x'", "DELETE FROM cases_auditevent"):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement)
    assert list(AuditEvent.objects.values_list("id", "action")) == before
