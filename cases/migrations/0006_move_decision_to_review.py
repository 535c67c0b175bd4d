from django.db import migrations


class Migration(migrations.Migration):
    """Decision moves to the review app: its table and rows stay (review 0001 takes it)."""

    dependencies = [("cases", "0005_slide_damaged_tiles")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="Decision")],
            database_operations=[],
        )
    ]
