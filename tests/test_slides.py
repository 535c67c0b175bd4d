"""The slide package stands alone: no Django, nothing of the apps; one µm/px parser."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slides.mpp import MissingMppError, declared_mpp, slide_mpp

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter: this test process has Django and the apps loaded.
SCRIPT = r"""
import importlib, json, pkgutil, sys

import slides

names = [f"slides.{module.name}" for module in pkgutil.iter_modules(slides.__path__)]
for name in names:
    importlib.import_module(name)
print(json.dumps({
    "modules": names,
    "loaded": sorted({n.split(".")[0] for n in sys.modules} & {"django", "cases", "inference"}),
}))
"""


def test_slides_import_no_django_and_no_app() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, check=True
    )
    imports = json.loads(done.stdout)
    assert {"slides.cache", "slides.io", "slides.mpp", "slides.validate"} <= set(imports["modules"])
    assert imports["loaded"] == []


class Declared:
    """Stands in for an open slide: only its properties are read."""

    def __init__(self, **properties: str) -> None:
        self.properties = {
            f"openslide.{name.replace('_', '-')}": v for name, v in properties.items()
        }


@pytest.mark.parametrize("bad", ["", "abc", "0", "-0.25", "nan", "inf"])
def test_mpp_is_a_positive_finite_number_or_none(bad: str) -> None:
    assert declared_mpp(Declared(mpp_x="0.25", mpp_y="0.26").properties) == (0.25, 0.26)
    assert declared_mpp(Declared(mpp_x=bad, mpp_y="0.25").properties) == (None, 0.25)
    with pytest.raises(MissingMppError):
        slide_mpp(Declared(mpp_x=bad, mpp_y="0.25"))
    assert slide_mpp(Declared(mpp_x=bad), override=0.5) == (0.5, 0.5)
    with pytest.raises(MissingMppError):
        slide_mpp(Declared(), override=-1)
