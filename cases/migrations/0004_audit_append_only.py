from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION mitolens_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % refused', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON cases_auditevent
    FOR EACH ROW EXECUTE FUNCTION mitolens_audit_append_only();
"""
DROP = """
DROP TRIGGER IF EXISTS audit_append_only ON cases_auditevent;
DROP FUNCTION IF EXISTS mitolens_audit_append_only();
"""


def run_on_postgresql(sql):
    def operation(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql, params=None)

    return operation


class Migration(migrations.Migration):
    dependencies = [("cases", "0003_review_and_audit")]

    operations = [migrations.RunPython(run_on_postgresql(CREATE), run_on_postgresql(DROP))]
