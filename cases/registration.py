"""Registering slide files: copy into the store, check (slides.validate), hash and record;
store nothing otherwise."""

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.db import transaction

from slides import SlideRejected, inspect_slide

from . import audit
from .models import Case, Slide


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_import_path(path: Path) -> Path:
    """Resolve a path given to import_slides; refuse anything outside SLIDE_IMPORT_DIRS."""
    resolved = path.resolve()
    allowed = [directory.resolve() for directory in settings.SLIDE_IMPORT_DIRS]
    if not any(resolved.is_relative_to(directory) for directory in allowed):
        names = ", ".join(str(d) for d in allowed)
        raise SlideRejected(f"{path}: outside the import directories ({names})")
    if not resolved.is_file():
        raise SlideRejected(f"{path}: no such file")
    return resolved


def register_slide(
    source: Path,
    case: Case,
    original_name: str,
    uploaded_by=None,
    label: str = "",
    request=None,
) -> Slide:
    """Copy a slide file into the store and record it, or raise SlideRejected having stored nothing.

    The file is copied to a temporary name inside the store, checked with
    OpenSlide there, and only then renamed into place and recorded, with its
    ``slide_registered`` audit event, in one transaction; any failure removes the copy.
    """
    size = source.stat().st_size
    if size > settings.SLIDE_UPLOAD_MAX_BYTES:
        limit_gib = settings.SLIDE_UPLOAD_MAX_BYTES / 1024**3
        raise SlideRejected(f"{original_name}: larger than the {limit_gib:.1f} GiB limit")
    store = Path(settings.SLIDE_STORE)
    store.mkdir(parents=True, exist_ok=True)
    suffix = Path(original_name).suffix.lower() or ".tiff"
    handle, temp_name = tempfile.mkstemp(dir=store, prefix=".incoming-", suffix=suffix)
    os.close(handle)
    temp_path = Path(temp_name)
    moved_to = None
    try:
        shutil.copyfile(source, temp_path)
        info = inspect_slide(temp_path, original_name)
        sha256 = file_sha256(temp_path)
        if Slide.objects.filter(case=case, sha256=sha256).exists():
            raise SlideRejected(f"{original_name}: this slide is already registered on {case}")
        relative = Path(sha256[:2]) / f"{sha256}{suffix}"
        final_path = store / relative
        final_path.parent.mkdir(parents=True, exist_ok=True)
        with transaction.atomic():
            slide = Slide.objects.create(
                case=case,
                file=str(relative),
                original_name=original_name[:255],
                sha256=sha256,
                size_bytes=size,
                uploaded_by=uploaded_by,
                label=label,
                **info.__dict__,
            )
            audit.record(
                "slide_registered",
                actor=uploaded_by,
                obj=slide,
                case=case,
                request=request,
                details={
                    "name": slide.original_name,
                    "label": label,
                    "sha256": sha256,
                    "size_bytes": size,
                    "vendor": slide.vendor,
                    "width": slide.width,
                    "height": slide.height,
                    "mpp_x": slide.mpp_x,
                    "mpp_y": slide.mpp_y,
                    "uploaded_by": uploaded_by.get_username() if uploaded_by else "",
                },
            )
            if not final_path.exists():  # else the same bytes are stored for another case
                temp_path.replace(final_path)
                moved_to = final_path
        return slide
    except BaseException:
        if moved_to is not None:
            moved_to.unlink(missing_ok=True)
        raise
    finally:
        temp_path.unlink(missing_ok=True)
