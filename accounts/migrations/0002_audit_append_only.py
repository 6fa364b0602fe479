"""The audit log is append-only in the database too: UPDATE and DELETE raise.

Runs in the public schema and in every tenant schema (the table lives in both), so the trigger
function is created unqualified, in whichever schema the migration runs.
"""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION accounts_auditlog_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'accounts_auditlog is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER accounts_auditlog_append_only
    BEFORE UPDATE OR DELETE ON accounts_auditlog
    FOR EACH ROW EXECUTE FUNCTION accounts_auditlog_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS accounts_auditlog_append_only ON accounts_auditlog;
DROP FUNCTION IF EXISTS accounts_auditlog_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
