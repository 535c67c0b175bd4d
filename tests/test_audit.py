"""The audit log: what is recorded, the hash chain, and the append-only table."""

import csv
import importlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from cases import audit
from cases.audit import verify_chain
from cases.models import AuditEvent, Case
from review import services as review
from review.models import Decision
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
@pytest.mark.parametrize(
    ("remote_addr", "stored"),
    [("", None), ("2001:0db8:0000::0001", "2001:db8::1"), ("10.0.0.7", "10.0.0.7")],
)
def test_the_hash_covers_the_client_address_as_stored(client, pathologist, remote_addr, stored):
    client.post(
        "/accounts/login/",
        {"username": pathologist.username, "password": PASSWORD},
        REMOTE_ADDR=remote_addr,
    )
    event = AuditEvent.objects.get(action="login")
    assert event.client_ip == stored
    assert verify_chain().ok


@pytest.mark.django_db
def test_slide_views_are_recorded(client_for, pathologist, slide):
    client_for(pathologist).get(f"/slides/{slide.pk}/")
    event = AuditEvent.objects.get(action="slide_view")
    assert (event.actor, event.case, event.object_id) == (pathologist, slide.case, str(slide.pk))


APPEND_ONLY_SQLITE = importlib.import_module("cases.migrations.0007_audit_append_only_sqlite")


def _behind_the_back(*statements: tuple[str, list]) -> None:
    """Run SQL on the audit table with its append-only triggers switched off, as only the
    table's owner could."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no deferred checks pending
            cursor.execute("ALTER TABLE cases_auditevent DISABLE TRIGGER audit_append_only")
        else:
            for drop in APPEND_ONLY_SQLITE.DROP:
                cursor.execute(drop)
        for sql, params in statements:
            cursor.execute(sql, params)
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE cases_auditevent ENABLE TRIGGER audit_append_only")
        else:
            for create in APPEND_ONLY_SQLITE.CREATE:
                cursor.execute(create)


def _tamper(event_id: int) -> None:
    """Change a row's details behind the application's back."""
    sql = "UPDATE cases_auditevent SET details = %s WHERE id = %s"
    _behind_the_back((sql, ['{"verdict": "agree"}', event_id]))


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
        pytest.skip("PostgreSQL's trigger; SQLite's is tested below")
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


def _events(n: int) -> list[AuditEvent]:
    return [audit.record("test_event", details={"n": i}) for i in range(n)]


def _anchor() -> str:
    out = io.StringIO()
    call_command("audit_anchor", stdout=out)
    return out.getvalue().strip()


def _verify_audit(*args) -> str:
    """verify_audit's complaint ('' when it passes)."""
    try:
        call_command("verify_audit", *args, stdout=io.StringIO())
    except CommandError as error:
        return str(error)
    return ""


@pytest.mark.django_db
def test_the_anchor_catches_deleting_the_last_events(tmp_path):
    events = _events(5)
    anchor = _anchor()
    assert json.loads(anchor) == {"count": 5, "head": events[-1].hash}
    delete = "DELETE FROM cases_auditevent WHERE id >= %s"
    _behind_the_back((delete, [events[3].pk]))
    assert _verify_audit() == ""  # the chain alone cannot see a shorter log
    assert "truncated: an anchor recorded 5 rows, 3 are left" in _verify_audit("--anchor", anchor)
    _events(4)  # and more events after the truncation do not hide it
    log = tmp_path / "anchors.log"
    log.write_text(f"{anchor}\n\n")
    complaint = _verify_audit("--anchor", str(log))
    assert "it is row number 5, whose hash the anchor recorded" in complaint


@pytest.mark.django_db
def test_the_anchor_catches_an_edit_that_re_chains_every_later_row():
    events = _events(5)
    anchor = _anchor()
    _events(2)
    rows = list(AuditEvent.objects.order_by("id"))
    rows[1].details = {"n": "changed"}
    statements, prev = [], rows[0].hash
    for row in rows[1:]:  # recompute every hash from the edited row on
        row.prev_hash = prev
        row.hash = prev = audit.event_hash(row)
        sql = "UPDATE cases_auditevent SET details = %s, prev_hash = %s, hash = %s WHERE id = %s"
        statements.append((sql, [json.dumps(row.details), row.prev_hash, row.hash, row.pk]))
    _behind_the_back(*statements)
    assert audit.verify_chain().ok  # consistent again, but not the log that was anchored
    complaint = _verify_audit("--anchor", anchor)
    assert f"broken at row {events[4].pk}: it is row number 5" in complaint
    assert "re-chained" in complaint


@pytest.mark.django_db
def test_verify_audit_refuses_a_malformed_anchor():
    for value in ('{"count": "x"}', "/nonexistent/anchors.log", '{"count": 1, "head": "ab"}'):
        complaint = _verify_audit("--anchor", value)
        assert complaint and "Traceback" not in complaint and "/nonexistent" not in complaint


@pytest.mark.django_db
def test_verify_audit_lists_every_broken_row(client_for, pathologist, reviewed_slide):
    events = _events(6)
    _tamper(events[1].pk)
    _tamper(events[4].pk)
    check = audit.verify_chain()
    assert [problem.row for problem in check.problems] == [events[1].pk, events[4].pk]
    complaint = _verify_audit()
    assert f"broken at row {events[1].pk}:" in complaint
    assert f"broken at row {events[4].pk}:" in complaint
    assert f"2 problems; {AuditEvent.objects.count()} rows checked." in complaint


@pytest.mark.django_db
def test_a_direct_edit_of_the_decision_table_is_caught_and_named(
    pathologist, other_pathologist, reviewed_slide
):
    findings = list(reviewed_slide.findings.order_by("id")[:3])
    decisions = [review.decide(f, pathologist, "disagree", comment="mitotic?") for f in findings]
    assert _verify_audit() == ""
    first, second = decisions[0], decisions[1]
    Decision.objects.filter(pk=second.pk).update(verdict="agree", comment="fine")
    Decision.objects.filter(pk=first.pk).update(reviewer=other_pathologist)
    complaint = _verify_audit()
    assert f"Decision {second.pk} changed since audit event" in complaint
    assert "verdict is 'agree', recorded 'disagree'" in complaint
    assert "comment is 'fine', recorded 'mitotic?'" in complaint
    assert f"Decision {first.pk} changed" in complaint and "reviewer is" in complaint
    assert f"Decision {decisions[2].pk}" not in complaint
    Decision.objects.filter(pk=decisions[2].pk).delete()
    assert f"Decision {decisions[2].pk}, recorded by audit event" in _verify_audit()


@pytest.mark.django_db
def test_a_direct_edit_of_a_sign_out_is_caught(pathologist, case):
    review.sign_out(case, pathologist, 7, "Grade 2")
    assert _verify_audit() == ""
    Case.objects.filter(pk=case.pk).update(final_mitotic_count=3)
    complaint = _verify_audit()
    assert f"Case {case.accession}'s sign-out changed" in complaint
    assert "final_mitotic_count is 3, recorded 7" in complaint


@pytest.mark.django_db
def test_older_decision_events_are_verified_as_far_as_they_go(pathologist, reviewed_slide):
    finding = reviewed_slide.findings.first()
    decision = Decision.objects.create(finding=finding, reviewer=pathologist, verdict="agree")
    old_details = {"finding": finding.pk, "verdict": "agree", "corrected_phase": "", "reason": ""}
    audit.record("decision", actor=pathologist, obj=decision, details=old_details)
    out = io.StringIO()
    call_command("verify_audit", stdout=out)
    assert "1 decisions were recorded before events carried every field" in out.getvalue()
    Decision.objects.filter(pk=decision.pk).update(verdict="disagree")
    assert "verdict is 'disagree', recorded 'agree'" in _verify_audit()


@pytest.mark.django_db
def test_sqlite_refuses_updates_and_deletes_inside_the_log_but_can_be_emptied():
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL's trigger is tested above")
    events = _events(4)
    for statement in (
        "UPDATE cases_auditevent SET action = 'x'",
        f"UPDATE cases_auditevent SET details = '{{}}' WHERE id = {events[3].pk}",
        f"DELETE FROM cases_auditevent WHERE id = {events[2].pk}",  # the middle
        f"DELETE FROM cases_auditevent WHERE id = {events[3].pk}",  # the end
    ):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement)
    assert list(AuditEvent.objects.order_by("id")) == events
    with connection.cursor() as cursor:  # what the test suite's flush does
        cursor.execute("DELETE FROM cases_auditevent")
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_transactional_test_can_still_flush_the_log():
    _events(3)  # the flush after this test deletes them through the triggers


def _offline_verify(path: Path, *args: str) -> subprocess.CompletedProcess:
    script = Path(__file__).resolve().parent.parent / "docs" / "verify_events_csv.py"
    return subprocess.run(
        [sys.executable, "-I", str(script), str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.django_db
def test_the_events_csv_from_the_command_verifies_offline_and_tampering_is_named(
    pathologist, reviewed_slide, tmp_path
):
    review.decide(reviewed_slide.findings.first(), pathologist, "uncertain", comment="=1+1")
    audit.record("login_failed", details={"username": '=HYPERLINK("x")', "note": "é ✓"})
    anchor = _anchor()
    out = tmp_path / "events.csv"
    call_command("export_audit", "--out", str(out), "--events", stdout=io.StringIO())
    text = out.read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == audit.EVENT_COLUMNS
    ids = AuditEvent.objects.order_by("id").values_list("id", flat=True)
    assert [row["id"] for row in rows] == [str(pk) for pk in ids][: len(rows)]
    assert rows[-1]["actor_name"] == '\'=HYPERLINK("x")'  # neutralised for spreadsheets
    result = _offline_verify(out, "--anchor", anchor)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verify" in result.stdout
    decision_row = next(r for r in rows if r["action"] == "decision")
    tampered = tmp_path / "tampered.csv"
    edited = text.replace('""verdict"":""uncertain""', '""verdict"":""agree""')  # CSV-quoted
    assert edited != text
    tampered.write_text(edited, "utf-8")
    result = _offline_verify(tampered)
    assert result.returncode == 1
    assert f"row {decision_row['id']}: its content does not match its hash" in result.stdout
    truncated = tmp_path / "truncated.csv"
    truncated.write_text("".join(text.splitlines(keepends=True)[:-1]), "utf-8")
    result = _offline_verify(truncated, "--anchor", anchor)
    assert result.returncode == 1 and "the anchor recorded" in result.stdout


@pytest.mark.django_db
def test_export_audit_events_refuses_filters(tmp_path):
    with pytest.raises(CommandError, match="whole chain"):
        call_command("export_audit", "--out", str(tmp_path / "e.csv"), "--events", "--case", "S")
    assert not (tmp_path / "e.csv").exists()


@pytest.mark.django_db
def test_the_events_csv_from_the_page_and_the_api(client_for, lab_admin, tmp_path):
    _events(3)
    client = client_for(lab_admin)
    page = client.get("/audit/export/")
    assert b'name="kind" value="events"' in page.content
    for url, params in (("/audit/export/", {"kind": "events"}), ("/api/audit/events/", {})):
        response = client.get(url, params)
        assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
        out = tmp_path / "events.csv"
        out.write_bytes(b"".join(response.streaming_content))
        result = _offline_verify(out)
        assert result.returncode == 0, result.stdout
        rows = list(csv.DictReader(out.open(encoding="utf-8-sig")))
        assert rows[-1]["action"] == "audit_export"  # the export records itself first
        assert rows[-1]["actor_name"] == lab_admin.username
    assert AuditEvent.objects.filter(action="audit_export").count() == 2


@pytest.mark.django_db
def test_only_lab_admins_see_or_export_the_events(client_for, pathologist):
    _events(1)
    client = client_for(pathologist)
    api = client.get("/api/audit/events/")
    assert api.status_code == 403
    assert api.json() == {"detail": "Only lab admins can export the audit log."}
    page = client.get("/audit/export/", {"kind": "events"})
    assert page.status_code == 403 and b"lab admins" in page.content
    assert client.get("/admin/cases/auditevent/").status_code in (302, 403)
    assert not AuditEvent.objects.filter(action="audit_export").exists()


@pytest.mark.django_db
def test_the_admin_shows_the_log_read_only(client_for, lab_admin):
    event = _events(1)[0]
    client = client_for(lab_admin)
    listing = client.get("/admin/cases/auditevent/", {"action": "test_event", "q": "test"})
    assert listing.status_code == 200 and b"test_event" in listing.content
    detail = client.get(f"/admin/cases/auditevent/{event.pk}/change/")
    assert detail.status_code == 200 and event.hash.encode() in detail.content
    assert b'name="action"' not in detail.content  # no input: every field read-only
    assert client.get("/admin/cases/auditevent/add/").status_code == 403
    assert (
        client.post(f"/admin/cases/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    client.post(f"/admin/cases/auditevent/{event.pk}/change/", {"action": "x"})
    assert AuditEvent.objects.get(pk=event.pk).action == "test_event"
