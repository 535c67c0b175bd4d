# The out-of-domain guard (issue 15 §1): a model version's description of its training
# data, and each run's domain status with its distance and threshold. Runs and versions
# from before have no description: 'unknown'.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("inference", "0007_finding_kept"),
    ]

    operations = [
        migrations.AddField(
            model_name="modelversion",
            name="domain",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="Description of the data it was trained on, for the out-of-domain "
                "guard (empty: runs with it are 'unknown'); see inference/engine/domain.py",
            ),
        ),
        migrations.AddField(
            model_name="inferencerun",
            name="domain_status",
            field=models.CharField(
                choices=[
                    ("in_domain", "In domain"),
                    ("out_of_domain", "Out of domain"),
                    ("unknown", "Unknown"),
                ],
                default="unknown",
                help_text="Whether the slide's tissue lies within the detector's training data",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="inferencerun",
            name="domain_distance",
            field=models.FloatField(
                blank=True, null=True, help_text="The slide's distance from the training data"
            ),
        ),
        migrations.AddField(
            model_name="inferencerun",
            name="domain_threshold",
            field=models.FloatField(
                blank=True, null=True, help_text="Beyond this distance the slide is out of domain"
            ),
        ),
    ]
