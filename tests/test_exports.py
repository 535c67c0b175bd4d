"""The CSV decision report and the GeoJSON export."""

import csv
import io
from datetime import date

import pytest
from django.core.management import CommandError, call_command

from cases.models import AuditEvent
from review.exports import COLUMNS, neutralise
from review.models import Decision


@pytest.fixture
def decided(client_for, pathologist, reviewed_slide):
    client = client_for(pathologist)
    findings = list(reviewed_slide.findings.order_by("-score"))
    client.post(f"/findings/{findings[0].pk}/decide/", {"verdict": "agree"})
    client.post(
        f"/findings/{findings[1].pk}/decide/",
        {
            "verdict": "disagree",
            "reason": "lookalike",
            "comment": '=HYPERLINK("http://evil.example","click")',
        },
    )
    client.post(f"/findings/{findings[1].pk}/decide/", {"verdict": "uncertain"})
    client.post(
        f"/findings/{findings[2].pk}/decide/",
        {"verdict": "agree", "corrected_phase": "telophase", "comment": "élan ✓"},
    )
    return reviewed_slide


def read_csv(content: bytes) -> list[dict]:
    text = content.decode("utf-8")
    assert text.startswith("\ufeff")
    return list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))


@pytest.mark.django_db
def test_the_csv_matches_the_decisions_row_for_row(client_for, lab_admin, decided):
    response = client_for(lab_admin).get("/audit/export/", {"download": "1"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = read_csv(b"".join(response.streaming_content))
    assert list(rows[0]) == COLUMNS
    decisions = list(Decision.objects.order_by("id").select_related("finding__run__detector"))
    assert [int(r["decision_id"]) for r in rows] == [d.pk for d in decisions]
    for row, d in zip(rows, decisions, strict=True):
        assert row["verdict"] == d.verdict and row["reviewer"] == d.reviewer.username
        assert int(row["finding_id"]) == d.finding_id
        assert float(row["x_px"]) == pytest.approx(d.finding.x, abs=0.05)
        assert float(row["x_um"]) == pytest.approx(d.finding.x * 0.25, abs=0.01)
        assert row["detector_sha256"] == d.finding.run.detector.sha256
        assert row["decided_at"] == d.created_at.isoformat()
    assert rows[3]["corrected_phase"] == "telophase" and rows[3]["comment"] == "élan ✓"
    assert AuditEvent.objects.filter(action="audit_export").exists()


@pytest.mark.django_db
def test_formula_cells_are_neutralised(client_for, lab_admin, decided):
    rows = read_csv(
        b"".join(client_for(lab_admin).get("/audit/export/", {"download": "1"}).streaming_content)
    )
    assert rows[1]["comment"] == '\'=HYPERLINK("http://evil.example","click")'
    assert [neutralise(v) for v in ("+1", "-2", "@x", "ok", 3)] == ["'+1", "'-2", "'@x", "ok", 3]


@pytest.mark.django_db
def test_filters_and_the_command(client_for, lab_admin, decided, tmp_path, pathologist):
    client = client_for(lab_admin)
    none = client.get("/audit/export/", {"download": "1", "date_to": "2000-01-01"})
    assert len(read_csv(b"".join(none.streaming_content))) == 0
    mine = client.get(
        "/audit/export/",
        {"download": "1", "pathologist": pathologist.username, "case": decided.case.accession},
    )
    assert len(read_csv(b"".join(mine.streaming_content))) == 4
    out = tmp_path / "audit.csv"
    call_command("export_audit", "--out", str(out), "--from", date.today().isoformat())
    assert len(read_csv(out.read_bytes())) == Decision.objects.count()


@pytest.mark.django_db
def test_pathologists_cannot_export_or_see_statistics(client_for, pathologist, decided):
    client = client_for(pathologist)
    for url in ("/audit/export/?download=1", "/audit/export/", "/agreement/"):
        response = client.get(url)
        assert response.status_code == 403, url
        assert b"HYPERLINK" not in response.content and b"kappa" not in response.content


@pytest.mark.django_db
def test_geojson_for_qupath(client_for, pathologist, decided):
    response = client_for(pathologist).get(f"/slides/{decided.pk}/findings.geojson")
    assert response.status_code == 200 and "attachment" in response["Content-Disposition"]
    data = response.json()
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 5
    feature = data["features"][0]
    ring = feature["geometry"]["coordinates"][0]
    assert feature["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
    props = feature["properties"]
    assert props["objectType"] == "annotation"
    assert (
        props["classification"]["name"] == "Metaphase"
        and len(props["classification"]["color"]) == 3
    )
    assert props["mitolens"]["decisions"][0]["verdict"] == "agree"


@pytest.mark.django_db
def test_unassigned_pathologist_gets_no_geojson(client_for, other_pathologist, decided):
    response = client_for(other_pathologist).get(f"/slides/{decided.pk}/findings.geojson")
    assert response.status_code == 404 and b"Feature" not in response.content


@pytest.mark.django_db
def test_export_audit_refuses_the_filters_the_page_refuses(tmp_path):
    out = tmp_path / "report.csv"
    with pytest.raises(CommandError, match="date_to: Enter a valid date"):
        call_command("export_audit", "--out", str(out), "--to", "2024-02-30")
    with pytest.raises(CommandError, match="case: Select a valid choice"):
        call_command("export_audit", "--out", str(out), "--case", "NO-SUCH-CASE")
    assert not out.exists()
