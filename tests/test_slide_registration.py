"""Slide registration: only files OpenSlide reads; refusals leave no record and no file."""

from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError

from cases.models import Slide


@pytest.mark.django_db
def test_import_records_geometry_resolution_and_hash(synthetic_slide, capsys):
    call_command("import_slides", str(synthetic_slide), "--case", "S-9", "--patient", "P-9")
    slide = Slide.objects.get(case__accession="S-9")
    assert (slide.width, slide.height) == (3000, 2400)
    assert slide.level_count >= 3
    assert slide.mpp_x == pytest.approx(0.25) and slide.mpp_y == pytest.approx(0.25)
    assert slide.vendor == "generic-tiff"
    assert len(slide.sha256) == 64
    assert slide.path.exists() and slide.path.stat().st_size == slide.size_bytes
    assert "Registered slide" in capsys.readouterr().out


@pytest.mark.django_db
def test_import_refuses_a_file_that_is_not_a_slide(import_dir, no_slide_stored):
    text = import_dir / "notes.tiff"
    text.write_text("this is not a slide")
    with pytest.raises(CommandError, match="refused"):
        call_command("import_slides", str(text), "--case", "S-10", "--patient", "P-10")


@pytest.mark.django_db
def test_import_refuses_a_truncated_slide(import_dir, synthetic_slide, no_slide_stored, capsys):
    truncated = import_dir / "truncated.tiff"
    data = synthetic_slide.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CommandError):
        call_command("import_slides", str(truncated), "--case", "S-11", "--patient", "P-11")
    assert "damaged or incomplete" in capsys.readouterr().err


@pytest.mark.django_db
def test_import_refuses_paths_outside_the_import_directories(
    tmp_path, synthetic_slide, no_slide_stored, capsys
):
    outside = tmp_path / "elsewhere.tiff"
    outside.write_bytes(synthetic_slide.read_bytes())
    sneaky = Path(settings.SLIDE_IMPORT_DIRS[0]) / ".." / ".." / outside.relative_to("/")
    for path in (outside, sneaky):
        with pytest.raises(CommandError):
            call_command("import_slides", str(path), "--case", "S-12", "--patient", "P-12")
    assert "outside the import directories" in capsys.readouterr().err


@pytest.mark.django_db
def test_admin_upload_registers_a_slide(client_for, lab_admin, case, synthetic_slide):
    upload = SimpleUploadedFile("upload.tiff", synthetic_slide.read_bytes())
    response = client_for(lab_admin).post(
        f"/cases/{case.pk}/slides/upload/", {"file": upload, "label": "A1 H&E"}, follow=True
    )
    assert response.status_code == 200
    slide = case.slides.get()
    assert slide.original_name == "upload.tiff" and slide.label == "A1 H&E"
    assert slide.uploaded_by == lab_admin
    assert b"Registered upload.tiff" in response.content


@pytest.mark.django_db
def test_upload_of_a_non_slide_is_refused(client_for, lab_admin, case, no_slide_stored):
    upload = SimpleUploadedFile("scan.svs", b"GIF89a not really a slide" * 100)
    response = client_for(lab_admin).post(
        f"/cases/{case.pk}/slides/upload/", {"file": upload}, follow=True
    )
    assert response.status_code == 400
    assert b"Slide refused" in response.content


@pytest.mark.django_db
def test_upload_over_the_size_limit_is_refused(
    client_for, lab_admin, case, settings, no_slide_stored
):
    settings.SLIDE_UPLOAD_MAX_BYTES = 1000
    upload = SimpleUploadedFile("big.tiff", b"x" * 2000)
    response = client_for(lab_admin).post(
        f"/cases/{case.pk}/slides/upload/", {"file": upload}, follow=True
    )
    assert b"larger than the" in response.content


@pytest.mark.django_db
def test_pathologist_cannot_upload(client_for, pathologist, case, synthetic_slide, no_slide_stored):
    upload = SimpleUploadedFile("upload.tiff", synthetic_slide.read_bytes())
    response = client_for(pathologist).post(f"/cases/{case.pk}/slides/upload/", {"file": upload})
    assert response.status_code == 403
