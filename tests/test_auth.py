"""Every page but the login page needs a signed-in user."""

import pytest
from django.contrib.auth.models import Group

from tests.conftest import PASSWORD

PROTECTED = [
    "/",
    "/agreement/",
    "/audit/export/",
    "/slides/1/findings.json",
    "/slides/1/hpf.json",
    "/findings/1.json",
    "/findings/1/explanations.json",
    "/cases/1/runs.json",
    "/cases/1/",
    "/slides/1/",
    "/slides/1.dzi",
    "/slides/1_files/0/0_0.jpeg",
    "/slides/1/thumbnail.jpeg",
    "/slides/1/associated/label.jpeg",
]


@pytest.mark.django_db
@pytest.mark.parametrize("url", PROTECTED)
def test_anonymous_is_sent_to_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


@pytest.mark.django_db
def test_admin_site_needs_login(client):
    response = client.get("/admin/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


@pytest.mark.django_db
def test_login_page_is_public_and_login_works(client, pathologist):
    assert client.get("/accounts/login/").status_code == 200
    response = client.post(
        "/accounts/login/", {"username": "path_assigned", "password": "correct-horse-battery"}
    )
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200


@pytest.mark.django_db
def test_failed_login_stays_on_login_page(client, pathologist):
    response = client.post("/accounts/login/", {"username": "path_assigned", "password": "nope"})
    assert response.status_code == 200
    assert b"enter a correct username and password" in response.content


@pytest.mark.django_db
def test_logout_ends_the_session(client_for, pathologist):
    client = client_for(pathologist)
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert client.get("/").status_code == 302


@pytest.mark.django_db
def test_roles_exist_and_lab_admin_can_manage_cases():
    names = set(Group.objects.values_list("name", flat=True))
    assert {"pathologist", "lab_admin"} <= names
    codenames = set(
        Group.objects.get(name="lab_admin").permissions.values_list("codename", flat=True)
    )
    assert {"add_case", "change_case", "view_slide", "change_slide"} <= codenames


@pytest.mark.django_db
def test_sign_in_is_refused_after_repeated_failures(client, pathologist, settings):
    settings.LOGIN_MAX_FAILURES = 3
    for _ in range(3):
        failed = client.post(
            "/accounts/login/", {"username": pathologist.username, "password": "x"}
        )
        assert b"enter a correct username and password" in failed.content
    locked = client.post(
        "/accounts/login/", {"username": pathologist.username, "password": PASSWORD}
    )
    assert locked.status_code == 200 and b"Too many failed sign-ins" in locked.content
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_pages_carry_a_content_security_policy(client_for, pathologist):
    response = client_for(pathologist).get("/")
    policy = response["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
