"""The REST API: every endpoint for every kind of user, the schema, tokens, and malformed
input that must never give a 500."""

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token

from inference.models import InferenceRun
from review.models import Decision

ROLES = ("anonymous", "other", "assigned", "admin")


@pytest.fixture
def clients(client, pathologist, other_pathologist, lab_admin):
    def logged_in(user):
        c = Client()
        c.force_login(user)
        return c

    return {
        "anonymous": client,
        "other": logged_in(other_pathologist),
        "assigned": logged_in(pathologist),
        "admin": logged_in(lab_admin),
    }


@pytest.fixture
def objects(reviewed_slide, redis_server):  # starting a run needs the queue
    finding = reviewed_slide.findings.order_by("-score").first()
    return {
        "case": reviewed_slide.case_id,
        "slide": reviewed_slide.pk,
        "finding": finding.pk,
        "run": reviewed_slide.runs.get().pk,
    }


# (method, url template, body, expected status for anonymous, other, assigned, admin)
ENDPOINTS = [
    ("get", "/api/cases/", None, (403, 200, 200, 200)),
    ("get", "/api/cases/{case}/", None, (403, 404, 200, 200)),
    ("get", "/api/slides/{slide}/", None, (403, 404, 200, 200)),
    ("get", "/api/runs/?slide={slide}", None, (403, 200, 200, 200)),
    ("get", "/api/runs/{run}/", None, (403, 404, 200, 200)),
    ("get", "/api/findings/?slide={slide}", None, (403, 404, 200, 200)),
    ("get", "/api/findings/{finding}/", None, (403, 404, 200, 200)),
    ("get", "/api/findings/{finding}/decisions/", None, (403, 404, 200, 200)),
    ("get", "/api/slides/{slide}/hpf/", None, (403, 404, 200, 200)),
    ("get", "/api/findings/{finding}/explanations/", None, (403, 404, 200, 200)),
    ("post", "/api/findings/{finding}/decisions/", {"verdict": "agree"}, (403, 404, 201, 403)),
    (
        "post",
        "/api/slides/{slide}/added-findings/",
        {"x": 900, "y": 900, "phase": "prophase"},
        (403, 404, 201, 403),
    ),
    ("post", "/api/runs/{run}/cancel/", {}, (403, 404, 403, 200)),
    ("post", "/api/runs/{run}/retry/", {}, (403, 404, 403, 400)),  # it succeeded
    ("post", "/api/runs/", {"slide": "{slide}"}, (403, 403, 403, 201)),
    ("get", "/api/audit/export/", None, (403, 403, 403, 200)),
    ("get", "/api/audit/events/", None, (403, 403, 403, 200)),
    ("get", "/api/schema/", None, (403, 200, 200, 200)),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "template", "body", "expected"), ENDPOINTS)
def test_every_endpoint_for_every_role(clients, objects, method, template, body, expected):
    url = template.format(**objects)
    if body:
        body = {k: v.format(**objects) if isinstance(v, str) else v for k, v in body.items()}
    for role, status in zip(ROLES, expected, strict=True):
        response = getattr(clients[role], method)(url, body or {}, content_type="application/json")
        assert response.status_code == status, (role, url, response.content[:300])
        if status in (403, 404) and not url.startswith("/api/schema"):
            assert response["Content-Type"].startswith("application/json")
            assert b"metaphase" not in response.content  # no finding data leaks


@pytest.mark.django_db
def test_lists_hold_only_what_the_user_may_see(clients, objects):
    assert clients["other"].get("/api/cases/").json()["results"] == []
    assert clients["other"].get(f"/api/runs/?slide={objects['slide']}").json()["results"] == []
    mine = clients["assigned"].get("/api/cases/").json()["results"]
    assert [c["id"] for c in mine] == [objects["case"]]
    findings = clients["assigned"].get(f"/api/findings/?slide={objects['slide']}").json()
    assert findings["count"] == 5 and findings["results"][0]["score"] == pytest.approx(0.9)


@pytest.mark.django_db
def test_token_authentication(objects, pathologist):
    token = Token.objects.create(user=pathologist)
    client = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    response = client.post(
        f"/api/findings/{objects['finding']}/decisions/",
        {"verdict": "disagree", "reason": "lookalike"},
        content_type="application/json",
    )
    assert response.status_code == 201 and response.json()["reviewer"] == pathologist.username
    assert Decision.objects.get().verdict == "disagree"
    bad = Client(HTTP_AUTHORIZATION="Token nope").get("/api/cases/")
    assert bad.status_code == 403 and bad.json()["detail"] == "Invalid token."


@pytest.mark.django_db
def test_sign_out_through_the_api(clients, objects):
    url = f"/api/cases/{objects['case']}/sign-out/"
    bad = clients["assigned"].post(
        url, {"final_mitotic_count": -3}, content_type="application/json"
    )
    assert bad.status_code == 400
    done = clients["assigned"].post(
        url, {"final_mitotic_count": 3, "final_grade": "Low grade"}, content_type="application/json"
    )
    assert done.status_code == 200 and done.json()["status"] == "signed_out"
    late = clients["assigned"].post(
        f"/api/findings/{objects['finding']}/decisions/",
        {"verdict": "agree"},
        content_type="application/json",
    )
    assert late.status_code == 409


@pytest.mark.django_db
def test_admin_upload_through_the_api(clients, objects, synthetic_slide):
    url = f"/api/cases/{objects['case']}/slides/"
    with open(synthetic_slide, "rb") as handle:
        refused = clients["assigned"].post(url, {"file": handle})
    assert refused.status_code == 403
    junk = clients["admin"].post(url, {"file": SimpleUploadedFile("x.svs", b"not a slide")})
    assert junk.status_code == 400 and "not a whole-slide image" in junk.json()["file"]
    with open(synthetic_slide, "rb") as handle:
        stored = clients["admin"].post(url, {"file": handle, "label": "B2"})
    assert stored.status_code == 400 and "already registered" in stored.json()["file"]


@pytest.mark.django_db
def test_the_schema_is_valid_openapi_3_and_the_docs_page_loads(clients):
    from drf_spectacular.validation import validate_schema

    response = clients["assigned"].get("/api/schema/")
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    validate_schema(schema)
    paths = set(schema["paths"])
    assert {
        "/api/cases/",
        "/api/findings/{id}/explanations/",
        "/api/runs/{id}/cancel/",
        "/api/slides/{slide_id}/hpf/",
        "/api/audit/export/",
        "/api/audit/events/",
    } <= paths
    docs = clients["assigned"].get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


junk = st.one_of(
    st.text(max_size=40),
    st.integers(-(10**12), 10**12),
    st.integers(-(10**40), 10**40),  # beyond 64 bits, as numbers and as text
    st.integers(-(10**40), 10**40).map(str),
    st.sampled_from(["²", "٣", "𝟠", "Ⅻ", "1e400", "nan", "-inf", "0x10", "\x00", "last"]),
    st.floats(allow_nan=True),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
)

# (method, url, who) for every API list filter and every body the API reads
FUZZED = [
    ("post", "/api/findings/{finding}/decisions/", "assigned"),
    ("post", "/api/slides/{slide}/added-findings/", "assigned"),
    ("post", "/api/cases/{case}/sign-out/", "assigned"),
    ("post", "/api/runs/", "admin"),
    ("post", "/api/findings/{finding}/explanations/", "assigned"),
    ("get", "/api/findings/", "assigned"),
    ("get", "/api/findings/?slide={slide}", "assigned"),
    ("get", "/api/findings/{finding}/explanations/", "assigned"),
    ("get", "/api/findings/{finding}/decisions/", "assigned"),
    ("get", "/api/runs/", "admin"),
    ("get", "/api/slides/", "assigned"),
    ("get", "/api/audit/export/", "admin"),
    ("get", "/api/cases/", "assigned"),
]
FIELDS = [
    "verdict", "corrected_phase", "reason", "comment", "x", "y", "phase",
    "final_mitotic_count", "final_grade", "slide", "min_score", "source", "status",
    "accession", "date_from", "date_to", "case", "pathologist", "model_version", "target",
    "page",
]  # fmt: skip


def database_rows():
    from cases.models import AuditEvent
    from inference.models import Finding

    return (
        Decision.objects.count(),
        Finding.objects.count(),
        AuditEvent.objects.count(),
        InferenceRun.objects.count(),
    )


@pytest.mark.django_db
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    target=st.sampled_from(FUZZED),
    fields=st.dictionaries(st.sampled_from(FIELDS), junk, max_size=5),
)
def test_malformed_input_never_gives_a_500(clients, objects, rq_queues, target, fields):
    """Random text, numbers, huge numbers and unicode digits in every parameter and body
    field (Redis is up: a valid request may queue work)."""
    method, template, who = target
    url = template.format(**objects)
    if "?" in url:  # the query string's own parameters, then the fuzzed ones
        path, query = url.split("?")
        url, fields = path, {**dict([query.split("=")]), **fields}
    before = database_rows()
    if method == "get":
        response = clients[who].get(url, {k: str(v) for k, v in fields.items()})
    else:
        response = clients[who].post(url, fields, content_type="application/json")
    assert response.status_code < 500, (url, fields, response.content[:300])
    if 400 <= response.status_code < 500:
        assert response["Content-Type"] == "application/json"
        assert response.json(), "a refusal says why"
        assert database_rows() == before, (url, fields)
    assert not InferenceRun.objects.filter(status="running").exists()
