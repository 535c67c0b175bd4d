"""Garbage in query strings and forms: a 400 that names the parameter and says why, never
a 500, and nothing written. The comment rule is one rule on the page and in the API; the
GeoJSON download's file name cannot break its header."""

import email.message

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cases.models import AuditEvent, Case, Slide
from inference.models import Finding, InferenceRun
from review.models import Decision

HUGE = "99999999999999999999"  # beyond 64 bits
SUPERSCRIPT_TWO = "²"  # str.isdigit() says yes, int() says no
ID_LIMIT = "Ensure this value is less than or equal to 9223372036854775807."


def snapshot(case: Case | None = None) -> tuple:
    """What a refused request must leave as it was."""
    rows = (
        Decision.objects.count(),
        Finding.objects.count(),
        AuditEvent.objects.count(),
        InferenceRun.objects.count(),
        Slide.objects.count(),
    )
    if case is None:
        return rows
    case = Case.objects.get(pk=case.pk)
    return (*rows, case.status, case.final_mitotic_count, case.final_grade, case.signed_out_at)


def body_of(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.fixture
def admin(lab_admin) -> Client:
    client = Client()
    client.force_login(lab_admin)
    return client


@pytest.fixture
def reader(pathologist) -> Client:
    client = Client()
    client.force_login(pathologist)
    return client


@pytest.fixture
def finding(reviewed_slide) -> Finding:
    return reviewed_slide.findings.order_by("-score").first()


# (url, query, the field named in the answer, the message)
API_FILTERS = [
    ("/api/runs/", {"slide": HUGE}, "slide", ID_LIMIT),
    ("/api/runs/", {"slide": SUPERSCRIPT_TWO}, "slide", "A valid integer is required."),
    ("/api/runs/", {"slide": "-3"}, "slide", "Ensure this value is greater than or equal to 1."),
    ("/api/findings/", {"slide": SUPERSCRIPT_TWO}, "slide", "A valid integer is required."),
    ("/api/findings/", {"slide": HUGE}, "slide", ID_LIMIT),
    ("/api/findings/", {}, "slide", "Give the slide id, e.g. ?slide=3."),
    ("/api/findings/", {"min_score": "nan"}, "min_score", "A valid number is required."),
    ("/api/findings/", {"min_score": "7"}, "min_score", "less than or equal to 1"),
    ("/api/findings/", {"phase": "interphase"}, "phase", '"interphase" is not a valid choice.'),
    ("/api/findings/", {"source": "oracle"}, "source", '"oracle" is not a valid choice.'),
    ("/api/findings/", {"page": SUPERSCRIPT_TWO}, "page", "A valid integer is required."),
    ("/api/cases/", {"status": "lost"}, "status", '"lost" is not a valid choice.'),
    ("/api/cases/", {"accession": "S-\x00"}, "accession", "Null characters are not allowed."),
    ("/api/cases/", {"page": "0"}, "page", "greater than or equal to 1"),
    ("/api/cases/", {"page": HUGE}, "page", ID_LIMIT),
    # the export page's form (review.forms.ExportFilterForm) parses these: its words
    ("/api/audit/export/", {"model_version": HUGE}, "model_version", "Select a valid choice."),
    ("/api/audit/export/", {"date_from": "0001-01-01"}, "date_from", "1900-01-01 to 2999-12-31"),
    ("/api/audit/export/", {"date_to": "2024-02-30"}, "date_to", "Enter a valid date."),
    ("/api/audit/export/", {"case": "x" * 40}, "case", "Select a valid choice."),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("url", "query", "field", "message"), API_FILTERS)
def test_api_list_filters_answer_400_naming_the_parameter(
    admin, reviewed_slide, url, query, field, message
):
    if url == "/api/findings/" and field != "slide":
        query = {"slide": reviewed_slide.pk, **query}
    before = snapshot()
    response = admin.get(url, query)
    assert response.status_code == 400, body_of(response)[:300]
    assert response["Content-Type"] == "application/json"
    errors = response.json()
    assert list(errors) == [field]
    assert any(message in text for text in errors[field]), errors
    assert snapshot() == before  # not even the audit export's own event


@pytest.mark.django_db
def test_api_filters_still_filter(admin, reviewed_slide):
    findings = admin.get("/api/findings/", {"slide": reviewed_slide.pk, "min_score": "0.65"})
    assert [f["score"] for f in findings.json()["results"]] == pytest.approx([0.9, 0.8, 0.7])
    metaphases = admin.get("/api/findings/", {"slide": reviewed_slide.pk, "phase": "metaphase"})
    assert metaphases.json()["count"] == 2
    runs = admin.get("/api/runs/", {"slide": reviewed_slide.pk}).json()
    assert [r["slide"] for r in runs["results"]] == [reviewed_slide.pk]
    assert admin.get("/api/runs/", {"slide": reviewed_slide.pk + 1}).json()["count"] == 0
    cases = admin.get("/api/cases/", {"status": "registered", "accession": "0001", "page": "1"})
    assert [c["accession"] for c in cases.json()["results"]] == ["S-0001"]
    last = admin.get("/api/cases/", {"page": "last"})
    assert last.status_code == 200 and last.json()["count"] == 1
    assert admin.get("/api/cases/", {"page": "2"}).status_code == 404  # past the end


@pytest.mark.django_db
def test_api_bodies_with_huge_or_odd_numbers_write_nothing(admin, reader, reviewed_slide, finding):
    case = reviewed_slide.case
    before = snapshot(case)
    run = admin.post("/api/runs/", {"slide": 10**30}, content_type="application/json")
    assert run.status_code == 400 and run.json() == {"slide": [ID_LIMIT]}
    sign_out = reader.post(
        f"/api/cases/{case.pk}/sign-out/",
        {"final_mitotic_count": 10**30},
        content_type="application/json",
    )
    assert sign_out.status_code == 400
    assert sign_out.json() == {
        "final_mitotic_count": ["Ensure this value is less than or equal to 100000."]
    }
    grade = reader.post(
        f"/api/cases/{case.pk}/sign-out/",
        {"final_mitotic_count": 3, "final_grade": "G" * 65},
        content_type="application/json",
    )
    assert grade.status_code == 400 and list(grade.json()) == ["final_grade"]
    added = reader.post(
        f"/api/slides/{reviewed_slide.pk}/added-findings/",
        {"x": "1e400", "y": SUPERSCRIPT_TWO, "phase": "prophase"},
        content_type="application/json",
    )
    assert added.status_code == 400 and set(added.json()) == {"x", "y"}
    explained = reader.post(
        f"/api/findings/{finding.pk}/explanations/", [1, 2], content_type="application/json"
    )
    assert explained.status_code == 400 and "Expected a dictionary" in str(explained.json())
    target = reader.get(f"/api/findings/{finding.pk}/explanations/", {"target": "x" * 65})
    assert target.status_code == 400 and list(target.json()) == ["target"]
    assert snapshot(case) == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("count", "message"),
    [
        (str(10**30), "Final mitotic count: Ensure this value is less than or equal to 100000."),
        (SUPERSCRIPT_TWO, "Final mitotic count: Enter a whole number."),
        ("-1", "Final mitotic count: Ensure this value is greater than or equal to 0."),
        ("4.5", "Final mitotic count: Enter a whole number."),
        ("", "Final mitotic count: This field is required."),
    ],
)
def test_sign_out_form_refuses_bad_counts(reader, reviewed_slide, count, message):
    case = reviewed_slide.case
    before = snapshot(case)
    response = reader.post(
        f"/cases/{case.pk}/sign-out/", {"final_mitotic_count": count, "confirm": "yes"}
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert message in page and 'name="final_mitotic_count"' in page  # the case page again
    assert snapshot(case) == before


@pytest.mark.django_db
def test_sign_out_form_refuses_a_long_grade_and_a_missing_confirmation(reader, reviewed_slide):
    case = reviewed_slide.case
    before = snapshot(case)
    url = f"/cases/{case.pk}/sign-out/"
    grade = reader.post(
        url, {"final_mitotic_count": "3", "final_grade": "G" * 65, "confirm": "yes"}
    )
    assert grade.status_code == 400
    assert "Final grade: Ensure this value has at most 64 characters (it has 65)." in (
        grade.content.decode()
    )
    unconfirmed = reader.post(url, {"final_mitotic_count": "3", "confirm": "no"})
    assert unconfirmed.status_code == 400
    assert "Tick the confirmation to sign the case out." in unconfirmed.content.decode()
    assert snapshot(case) == before
    done = reader.post(url, {"final_mitotic_count": "3", "final_grade": "G" * 64, "confirm": "yes"})
    assert done.status_code == 302
    case.refresh_from_db()
    assert (case.status, case.final_mitotic_count, case.final_grade) == ("signed_out", 3, "G" * 64)


@pytest.mark.django_db
def test_reopen_form_needs_a_reason_that_fits(admin, reader, reviewed_slide):
    case = reviewed_slide.case
    reader.post(f"/cases/{case.pk}/sign-out/", {"final_mitotic_count": "2", "confirm": "yes"})
    before = snapshot(case)
    url = f"/cases/{case.pk}/reopen/"
    for reason, message in (
        ("", "Give a reason for reopening the case."),
        ("   ", "Give a reason for reopening the case."),
        ("x" * 501, "Reason: Ensure this value has at most 500 characters (it has 501)."),
    ):
        response = admin.post(url, {"reason": reason})
        assert response.status_code == 400 and message in response.content.decode()
    assert snapshot(case) == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"verdict": "maybe"}, {"verdict"}),
        ({"verdict": "agree", "corrected_phase": "interphase"}, {"corrected_phase"}),
        ({"verdict": "agree", "reason": "<script>"}, {"reason"}),
        ({}, {"verdict"}),
    ],
)
def test_decide_form_refuses_garbage_by_field(reader, finding, fields, errors):
    before = snapshot()
    response = reader.post(f"/findings/{finding.pk}/decide/", fields)
    assert response.status_code == 400
    body = response.json()
    assert set(body["errors"]) == errors
    field = sorted(errors)[0]
    assert body["error"] == f"{field}: {body['errors'][field][0]}"
    assert snapshot() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"x": SUPERSCRIPT_TWO, "y": "5", "phase": "prophase"}, {"x": ["Enter a number."]}),
        (
            {"x": "nan", "y": "inf", "phase": "prophase"},
            {"x": ["Enter a number."], "y": ["Enter a number."]},
        ),
        ({"x": "1e400", "y": "5", "phase": "prophase"}, {"x": ["Enter a number."]}),
        (
            {"x": "-1", "y": "5", "phase": "prophase"},
            {"x": ["Ensure this value is greater than or equal to 0."]},
        ),
        (
            {"x": "5", "y": "5", "phase": "non_mitotic"},
            {"phase": ["Select a valid choice. non_mitotic is not one of the available choices."]},
        ),
        ({"y": "5", "phase": "prophase"}, {"x": ["This field is required."]}),
    ],
)
def test_add_finding_form_refuses_garbage_by_field(reader, reviewed_slide, fields, errors):
    before = snapshot()
    response = reader.post(f"/slides/{reviewed_slide.pk}/findings/add/", fields)
    assert response.status_code == 400 and response.json()["errors"] == errors
    assert snapshot() == before


@pytest.mark.django_db
def test_upload_form_without_a_file_or_with_a_long_label(admin, case):
    before = snapshot()
    missing = admin.post(f"/cases/{case.pk}/slides/upload/", {"label": "A1"})
    assert missing.status_code == 400
    assert "Slide file: This field is required." in missing.content.decode()
    upload = SimpleUploadedFile("scan.tiff", b"II*\x00" + b"\x00" * 64)
    long_label = admin.post(f"/cases/{case.pk}/slides/upload/", {"file": upload, "label": "L" * 65})
    assert long_label.status_code == 400
    assert "Label: Ensure this value has at most 64 characters" in long_label.content.decode()
    assert snapshot() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"status": "lost"}, "Status: Select a valid choice. lost is not one of the available"),
        ({"q": "S-\x00"}, "Null characters are not allowed."),
        ({"page": SUPERSCRIPT_TWO}, "Page: Enter a whole number."),
        ({"page": HUGE}, "Page: Ensure this value is less than or equal to 9223372036854775807."),
    ],
)
def test_queue_filters_answer_400_with_the_reason(reader, case, query, message):
    response = reader.get("/", query)
    assert response.status_code == 400
    page = response.content.decode()
    assert message in page and "Case queue" in page


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"model_version": HUGE}, "Select a valid choice."),
        ({"model_version": SUPERSCRIPT_TWO}, "Select a valid choice."),
        ({"date_from": "0001-01-01"}, "Enter a date from 1900-01-01 to 2999-12-31."),
        ({"date_to": "9999-12-31"}, "Enter a date from 1900-01-01 to 2999-12-31."),
        ({"date_to": "31/31/2024"}, "Enter a valid date."),
        ({"case": "S-\x00"}, "Null characters are not allowed."),
    ],
)
def test_audit_export_page_refuses_bad_filters_and_exports_nothing(
    admin, reviewed_slide, query, message
):
    before = snapshot()
    response = admin.get("/audit/export/", {"download": "1", **query})
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")
    assert message in response.content.decode()
    assert snapshot() == before  # no audit_export event: nothing was exported


@pytest.mark.django_db
def test_image_parameters_answer_400(reader, reviewed_slide, finding):
    thumbnail = reader.get(f"/slides/{reviewed_slide.pk}/thumbnail.jpeg", {"size": "huge"})
    assert thumbnail.status_code == 400 and thumbnail.content.startswith(b"size: ")
    small = reader.get(f"/slides/{reviewed_slide.pk}/thumbnail.jpeg", {"size": "small"})
    assert small.status_code == 200 and small["Content-Type"] == "image/jpeg"
    for query, errors in (
        ({"px": SUPERSCRIPT_TWO}, {"px": ["Enter a whole number."]}),
        ({"px": HUGE}, {"px": ["Ensure this value is less than or equal to 512."]}),
        ({"mpp": "nan"}, {"mpp": ["Enter a number."]}),
        ({"mpp": "0.01"}, {"mpp": ["Ensure this value is greater than or equal to 0.1."]}),
    ):
        crop = reader.get(f"/findings/{finding.pk}/crop.jpeg", query)
        assert crop.status_code == 400 and crop.json()["errors"] == errors
    crop = reader.get(f"/findings/{finding.pk}/crop.jpeg", {"px": "64", "mpp": "0.5"})
    assert crop.status_code == 200 and crop["Content-Type"] == "image/jpeg"


# One rule for a decision's comment: the page form and the API answer alike.


@pytest.mark.django_db
@pytest.mark.parametrize("length", [2001, 5000])
def test_a_long_comment_is_refused_alike_on_the_page_and_in_the_api(reader, finding, length):
    before = snapshot()
    comment = "c" * length
    page = reader.post(f"/findings/{finding.pk}/decide/", {"verdict": "agree", "comment": comment})
    api = reader.post(
        f"/api/findings/{finding.pk}/decisions/",
        {"verdict": "agree", "comment": comment},
        content_type="application/json",
    )
    message = f"The comment is {length:,} characters long; the limit is 2,000."
    assert page.status_code == 400 and page.json()["errors"] == {"comment": [message]}
    assert page.json()["error"] == f"comment: {message}"
    assert api.status_code == 400 and api.json() == {"comment": [message]}
    assert snapshot() == before


@pytest.mark.django_db
def test_a_comment_of_2000_characters_is_kept_whole_on_both(reader, finding):
    comment = "ü" * 2000
    page = reader.post(
        f"/findings/{finding.pk}/decide/", {"verdict": "agree", "comment": f"  {comment}\n"}
    )
    api = reader.post(
        f"/api/findings/{finding.pk}/decisions/",
        {"verdict": "disagree", "comment": comment},
        content_type="application/json",
    )
    assert page.status_code == 200 and api.status_code == 201
    assert [d.comment for d in Decision.objects.order_by("id")] == [comment, comment]


# The GeoJSON download's file name comes from the uploader's file name.


@pytest.mark.django_db
@pytest.mark.parametrize(
    "original_name",
    [
        'biopsy "left"; size=1.svs',
        "Gewebe-Probe ÄÖÜ µ 組織.svs",
        "evil\r\nSet-Cookie: stolen=1.svs",
        'a"; filename="other.exe',
    ],
)
def test_geojson_file_name_cannot_break_its_header(reader, reviewed_slide, original_name):
    Slide.objects.filter(pk=reviewed_slide.pk).update(original_name=original_name)
    response = reader.get(f"/slides/{reviewed_slide.pk}/findings.geojson")
    assert response.status_code == 200 and response.json()["type"] == "FeatureCollection"
    header = response["Content-Disposition"]
    assert "\r" not in header and "\n" not in header and "Set-Cookie" not in response.headers
    parsed = email.message.Message()
    parsed["Content-Disposition"] = header
    assert parsed.get_content_disposition() == "attachment"
    expected = original_name.rsplit(".", 1)[0] + "-findings.geojson"
    assert parsed.get_filename() == expected
    assert len(parsed.get_params(header="Content-Disposition")) == 2  # one name, nothing more


# Fuzzing every page form: random text, numbers, huge numbers and unicode digits.

junk = st.one_of(
    st.text(max_size=30),
    st.integers(-(10**40), 10**40).map(str),
    st.sampled_from(
        [SUPERSCRIPT_TWO, "٣", "𝟠", "Ⅻ", "1e400", "nan", "-inf", "0x10", "1_000", "\x00", " 7 "]
    ),
    st.sampled_from(
        [
            "yes",
            "agree",
            "disagree",
            "prophase",
            "metaphase",
            "lookalike",
            "3",
            "1500",
            "0.5",
            "2024-01-01",
            "S-0001",
            "small",
            "64",
            "all",
            "registered",
        ]
    ),  # fmt: skip
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)

PAGE_FORMS = [
    ("post", "/findings/{finding}/decide/", "reader"),
    ("post", "/slides/{slide}/findings/add/", "reader"),
    ("post", "/cases/{case}/sign-out/", "reader"),
    ("post", "/cases/{case}/reopen/", "admin"),
    ("post", "/cases/{case}/slides/upload/", "admin"),
    ("get", "/audit/export/", "admin"),
    ("get", "/", "reader"),
    ("get", "/slides/{slide}/thumbnail.jpeg", "reader"),
    ("get", "/findings/{finding}/crop.jpeg", "reader"),
    ("get", "/findings/{finding}/explanations.json", "reader"),
]
PAGE_FIELDS = [
    "verdict", "corrected_phase", "reason", "comment", "x", "y", "phase",
    "final_mitotic_count", "final_grade", "confirm", "label", "download", "date_from",
    "date_to", "case", "pathologist", "model_version", "q", "status", "page", "size", "px",
    "mpp", "target",
]  # fmt: skip


@pytest.mark.django_db
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    target=st.sampled_from(PAGE_FORMS),
    fields=st.dictionaries(st.sampled_from(PAGE_FIELDS), junk, max_size=6),
)
def test_page_forms_never_answer_500_and_refusals_write_nothing(
    admin, reader, finding, target, fields
):
    method, template, who = target
    slide = finding.slide
    url = template.format(finding=finding.pk, slide=slide.pk, case=slide.case_id)
    client = admin if who == "admin" else reader
    before = snapshot(slide.case)
    response = getattr(client, method)(url, fields)
    body = body_of(response)
    assert response.status_code < 500, (url, fields, body[:300])
    if response.status_code == 400:
        assert snapshot(slide.case) == before, (url, fields)
        assert body.strip(), "a refusal says why"
