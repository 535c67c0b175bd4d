from django.db import migrations

from cases.groups import grant_lab_admin


def grant(apps, schema_editor):
    grant_lab_admin(apps, "inference")


class Migration(migrations.Migration):
    dependencies = [("inference", "0001_initial"), ("cases", "0002_roles")]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
