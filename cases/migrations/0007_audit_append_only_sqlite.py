"""The audit log's append-only triggers on SQLite (PostgreSQL has had them since 0004).

UPDATE is always refused. A row-level DELETE trigger cannot see the whole statement, so
it refuses deleting a row while the row it links to (its predecessor) still exists: that
forbids deleting from the middle or the end of the log, yet lets ``DELETE FROM`` empty the
whole table in id order (Django's flush between transactional tests does exactly that).
Deleting the oldest rows stays possible here, and ``verify_audit`` names the first row left,
whose link no longer matches.
"""

from django.db import migrations

CREATE = [
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON cases_auditevent
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE refused'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON cases_auditevent
    WHEN EXISTS (SELECT 1 FROM cases_auditevent WHERE hash = OLD.prev_hash)
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: DELETE refused'); END""",
]
DROP = [
    "DROP TRIGGER IF EXISTS audit_no_update",
    "DROP TRIGGER IF EXISTS audit_no_delete",
]


def run_on_sqlite(statements):
    def operation(apps, schema_editor):
        if schema_editor.connection.vendor == "sqlite":
            for statement in statements:
                schema_editor.execute(statement, params=None)

    return operation


class Migration(migrations.Migration):
    dependencies = [("cases", "0006_move_decision_to_review")]

    operations = [migrations.RunPython(run_on_sqlite(CREATE), run_on_sqlite(DROP))]
