import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def move_content_type(apps, schema_editor, source="cases", target="review"):
    """Keep the content type row (and so permissions and group grants) of Decision."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label=source, model="decision").update(app_label=target)


def move_content_type_back(apps, schema_editor):
    move_content_type(apps, schema_editor, source="review", target="cases")


class Migration(migrations.Migration):
    """Decision, moved from cases with its table (cases_decision) and every row."""

    initial = True

    dependencies = [
        ("cases", "0006_move_decision_to_review"),
        ("inference", "0006_hpf_map_inputs_digest"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Decision",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("verdict", models.CharField(choices=[("agree", "Agree"), ("disagree", "Disagree"), ("uncertain", "Uncertain")], max_length=10)),
                        ("corrected_phase", models.CharField(blank=True, max_length=12)),
                        ("reason", models.CharField(blank=True, choices=[("", "—"), ("lookalike", "Look-alike (apoptosis, pyknosis, lymphocyte)"), ("artefact", "Artefact / out of focus"), ("outside_tumour", "Outside the tumour"), ("duplicate", "Duplicate of another finding"), ("poor_quality", "Image quality too poor to call"), ("other", "Other (see comment)")], max_length=16)),
                        ("comment", models.TextField(blank=True, max_length=2000)),
                        ("blinded", models.BooleanField(default=False, help_text="AI output was hidden when decided")),
                        ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        ("finding", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="decisions", to="inference.finding")),
                        ("reviewer", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="decisions", to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        "db_table": "cases_decision",
                        "ordering": ["created_at", "id"],
                        "indexes": [models.Index(fields=["finding", "reviewer", "-id"], name="cases_decis_finding_78167b_idx")],
                    },
                )
            ],
            database_operations=[migrations.RunPython(move_content_type, move_content_type_back)],
        )
    ]
