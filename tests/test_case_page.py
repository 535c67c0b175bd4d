"""Case page and viewer page: visible to assigned pathologists and admins only."""

import pytest


@pytest.mark.django_db
def test_assigned_pathologist_sees_case_and_viewer(client_for, pathologist, slide):
    client = client_for(pathologist)
    page = client.get(f"/cases/{slide.case_id}/")
    assert page.status_code == 200
    assert b"S-0001" in page.content and b"synthetic-small.tiff" in page.content
    assert b"Register a slide" not in page.content  # upload is for admins
    viewer = client.get(f"/slides/{slide.pk}/")
    assert viewer.status_code == 200
    assert f'data-dzi="/slides/{slide.pk}.dzi?v='.encode() in viewer.content
    assert b'data-mpp="0.25"' in viewer.content


@pytest.mark.django_db
def test_unassigned_pathologist_cannot_see_case_or_viewer(client_for, other_pathologist, slide):
    client = client_for(other_pathologist)
    for url in (f"/cases/{slide.case_id}/", f"/slides/{slide.pk}/"):
        response = client.get(url)
        assert response.status_code == 404
        assert b"S-0001" not in response.content


@pytest.mark.django_db
def test_admin_sees_any_case_with_upload_form(client_for, lab_admin, slide):
    response = client_for(lab_admin).get(f"/cases/{slide.case_id}/")
    assert response.status_code == 200
    assert b"Register a slide" in response.content
