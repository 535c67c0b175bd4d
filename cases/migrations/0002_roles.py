from django.db import migrations

from cases.groups import grant_lab_admin


def create_roles(apps, schema_editor):
    grant_lab_admin(apps, "cases")


class Migration(migrations.Migration):
    dependencies = [
        ("cases", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
