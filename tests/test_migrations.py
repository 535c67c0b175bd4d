"""Decision moved from cases to review: a database populated before the move migrates
with every row, its permissions, and an audit chain that still verifies."""

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from cases import audit
from review.models import Decision

BEFORE_MOVE = [
    ("cases", "0005_slide_damaged_tiles"),
    ("inference", "0006_hpf_map_inputs_digest"),
    ("review", None),
]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets or executor.loader.graph.leaf_nodes())
    applied = [(app, name) for app, name in targets or [] if name]
    return executor.loader.project_state(applied).apps if targets else None


def populate(old) -> list[tuple]:
    """Two decisions on one finding, written through the models as they were."""
    User = old.get_model("auth", "User")
    reviewer = User.objects.create(username="old-reader")
    patient = old.get_model("cases", "Patient").objects.create(external_ref="MRN-OLD")
    case = old.get_model("cases", "Case").objects.create(accession="OLD-1", patient=patient)
    slide = old.get_model("cases", "Slide").objects.create(
        case=case, file="aa/x.tiff", original_name="x.tiff", sha256="a" * 64, size_bytes=1,
        vendor="generic-tiff", width=100, height=100, level_count=1,
    )  # fmt: skip
    finding = old.get_model("inference", "Finding").objects.create(
        slide=slide, source="pathologist", x=5, y=5, box_x0=0, box_y0=0, box_x1=10, box_y1=10,
        phase="metaphase",
    )  # fmt: skip
    OldDecision = old.get_model("cases", "Decision")
    for verdict in ("agree", "disagree"):
        OldDecision.objects.create(finding=finding, reviewer=reviewer, verdict=verdict)
    audit.record("decide", details={"finding": finding.pk, "verdict": "disagree"})
    return list(OldDecision.objects.order_by("id").values_list("id", "verdict", "finding_id"))


@pytest.mark.django_db(transaction=True)
def test_decisions_move_to_review_with_every_row_and_the_chain_verifies():
    content_type = ContentType.objects.get(app_label="review", model="decision")
    old = migrate(BEFORE_MOVE)
    try:
        assert ContentType.objects.get(pk=content_type.pk).app_label == "cases"
        rows = populate(old)
    finally:
        migrate(None)  # forward to the latest state, whatever happened
    moved = list(Decision.objects.order_by("id").values_list("id", "verdict", "finding_id"))
    assert moved == rows and len(rows) == 2
    assert ContentType.objects.get(pk=content_type.pk).app_label == "review"
    assert audit.verify_chain().ok
    Decision.objects.create(finding_id=rows[0][2], reviewer=Decision.objects.first().reviewer,
                            verdict="uncertain")  # fmt: skip
    assert Decision.objects.count() == 3  # the id sequence carries on
