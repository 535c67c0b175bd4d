"""One vocabulary: the phases the engine classifies, with their signs, verdicts and reasons,
reach the viewer's page (and its JavaScript) from review/vocabulary.py alone."""

import json
import re

import pytest

from inference.engine.vocabulary import MITOTIC_PHASES, PHASES
from inference.models import Finding
from review.models import Decision
from review.vocabulary import PHASE_SIGNS, for_pages


def test_every_phase_the_engine_classifies_has_its_signs():
    assert tuple(PHASE_SIGNS) == PHASES == tuple(Finding.Phase.values)
    keys = [p["key"] for p in for_pages()["phases"] if p["mitotic"]]
    assert keys == ["1", "2", "3", "4"] and len(keys) == len(MITOTIC_PHASES)


@pytest.mark.django_db
def test_the_viewer_page_carries_the_vocabulary(client_for, pathologist, slide):
    page = client_for(pathologist).get(f"/slides/{slide.pk}/").content.decode()
    script = re.search(
        r'<script id="mitolens-vocabulary" type="application/json">(.*?)</script>', page
    )
    vocabulary = json.loads(script.group(1))
    assert [p["name"] for p in vocabulary["phases"]] == list(PHASES)
    assert [v["value"] for v in vocabulary["verdicts"]] == list(Decision.Verdict.values)
    assert [r["value"] for r in vocabulary["reasons"]] == list(Decision.Reason.values)
    for phase in MITOTIC_PHASES:  # the phase buttons are drawn from it too
        assert f'data-phase="{phase}"' in page
