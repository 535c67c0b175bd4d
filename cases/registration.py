"""Registering slide files: accept only what OpenSlide reads, store nothing otherwise."""

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import openslide
from django.conf import settings
from django.db import transaction

from inference.engine.slide_io import read_bounds_problem

from .models import Case, Slide


class SlideRejected(Exception):
    """A file that cannot become a slide; the message says why, for the user."""


@dataclass(frozen=True)
class SlideInfo:
    vendor: str
    width: int
    height: int
    level_count: int
    mpp_x: float | None
    mpp_y: float | None
    objective_power: float | None


def _float_property(properties, name: str) -> float | None:
    try:
        value = float(properties[name])
    except (KeyError, ValueError):
        return None
    return value if value > 0 else None


# TIFF and BigTIFF, both byte orders: the container of SVS, NDPI, SCN, BIF and generic TIFF.
TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def inspect_slide(path: Path, name: str | None = None) -> SlideInfo:
    """Open a file with OpenSlide and read its geometry; refuse it if its reads cannot be
    bounded in memory (slide_io.read_bounds_problem); decode its corners to catch truncation.

    ``name`` is how the file is called in messages (an upload's original name); they never
    show the path it has on the server.
    """
    name = name or path.name
    if openslide.OpenSlide.detect_format(path) is None:
        with open(path, "rb") as handle:
            if handle.read(4) in TIFF_SIGNATURES:
                raise SlideRejected(f"{name}: the slide is damaged or incomplete (unreadable TIFF)")
        raise SlideRejected(f"{name}: not a whole-slide image format OpenSlide can read")
    try:
        with openslide.OpenSlide(path) as slide:
            problem = read_bounds_problem(
                slide.level_dimensions, slide.level_downsamples, path.stat().st_size
            )
            if problem:
                raise SlideRejected(f"{name}: refused because {problem}")
            _decode_samples(slide)
            props = slide.properties
            width, height = slide.dimensions
            return SlideInfo(
                vendor=props.get(openslide.PROPERTY_NAME_VENDOR, "unknown"),
                width=width,
                height=height,
                level_count=slide.level_count,
                mpp_x=_float_property(props, openslide.PROPERTY_NAME_MPP_X),
                mpp_y=_float_property(props, openslide.PROPERTY_NAME_MPP_Y),
                objective_power=_float_property(props, openslide.PROPERTY_NAME_OBJECTIVE_POWER),
            )
    except openslide.OpenSlideError as error:
        reason = _without_path(str(error), path, name)
        raise SlideRejected(f"{name}: the slide is damaged or incomplete ({reason})") from None


def _without_path(message: str, path: Path, name: str) -> str:
    """The library's message with the file's server path (which OpenSlide's messages may
    include) replaced by the name the user knows it by."""
    for server_name in (str(path.resolve()), str(path), path.name):
        message = message.replace(server_name, name)
    return message


def _decode_samples(slide: openslide.OpenSlide) -> None:
    """Read the last tile of every level: a truncated file fails here, not in the viewer."""
    for level, (width, height) in enumerate(slide.level_dimensions):
        size = (min(256, width), min(256, height))
        scale = slide.level_downsamples[level]
        corner = (int((width - size[0]) * scale), int((height - size[1]) * scale))
        slide.read_region(corner, level, size)
        slide.read_region((0, 0), level, size)


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
    source: Path, case: Case, original_name: str, uploaded_by=None, label: str = ""
) -> Slide:
    """Copy a slide file into the store and record it, or raise SlideRejected having stored nothing.

    The file is copied to a temporary name inside the store, checked with
    OpenSlide there, and only then renamed into place and recorded in one
    transaction; any failure removes the copy.
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
