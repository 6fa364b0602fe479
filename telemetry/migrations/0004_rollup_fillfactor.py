"""Rollup partitions leave half of each page free, so the per-batch upserts are HOT updates.

Every ingest batch touches the current 1-minute and 1-hour rollup row of each series it holds: at
tens of thousands of messages a second a row is rewritten several times a second. With full pages
(fillfactor 100) each new row version goes to another page and every index entry is rewritten;
with room on the page PostgreSQL updates in place (heap-only tuples, pruned on the page), which
costs less CPU and WAL and leaves autovacuum far less to do. Raw point partitions keep fillfactor
100 (their rows are never updated).
"""

from importlib import import_module

from django.db import migrations

FORWARD = r"""
CREATE OR REPLACE FUNCTION telemetry_ensure_partitions(p_schema text, p_from date, p_to date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    d date;
    m date;
    part text;
    created integer := 0;
BEGIN
    d := p_from;
    WHILE d <= p_to LOOP
        part := 'telemetry_point_p' || to_char(d, 'YYYYMMDD');
        IF to_regclass(format('%I.%I', p_schema, part)) IS NULL THEN
            EXECUTE format('CREATE TABLE %I.%I (LIKE %I.telemetry_point INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           p_schema, part, p_schema);
            EXECUTE format('CREATE UNIQUE INDEX %I ON %I.%I (device_id, metric_id, ts) WITH (fillfactor = 100)',
                           part || '_key', p_schema, part);
            EXECUTE format('ALTER TABLE %I.telemetry_point ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                           p_schema, p_schema, part,
                           d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
        part := 'telemetry_rollup_1m_p' || to_char(d, 'YYYYMMDD');
        IF to_regclass(format('%I.%I', p_schema, part)) IS NULL THEN
            EXECUTE format('CREATE TABLE %I.%I (LIKE %I.telemetry_rollup_1m INCLUDING DEFAULTS INCLUDING CONSTRAINTS) WITH (fillfactor = 50)',
                           p_schema, part, p_schema);
            EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I PRIMARY KEY (device_id, metric_id, bucket) WITH (fillfactor = 100)',
                           p_schema, part, part || '_pkey');
            EXECUTE format('ALTER TABLE %I.telemetry_rollup_1m ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                           p_schema, p_schema, part,
                           d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
        END IF;
        m := date_trunc('month', d)::date;
        part := 'telemetry_rollup_1h_p' || to_char(m, 'YYYYMM');
        IF to_regclass(format('%I.%I', p_schema, part)) IS NULL THEN
            EXECUTE format('CREATE TABLE %I.%I (LIKE %I.telemetry_rollup_1h INCLUDING DEFAULTS INCLUDING CONSTRAINTS) WITH (fillfactor = 50)',
                           p_schema, part, p_schema);
            EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I PRIMARY KEY (device_id, metric_id, bucket) WITH (fillfactor = 100)',
                           p_schema, part, part || '_pkey');
            EXECUTE format('ALTER TABLE %I.telemetry_rollup_1h ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                           p_schema, p_schema, part,
                           m::timestamp AT TIME ZONE 'UTC', (m + interval '1 month')::timestamp AT TIME ZONE 'UTC');
        END IF;
        d := d + 1;
    END LOOP;
    RETURN created;
END;
$$;

-- Partitions that exist already: new pages get the room (existing ones keep theirs).
DO $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.oid::regclass AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent IN (to_regclass('telemetry_rollup_1m'), to_regclass('telemetry_rollup_1h'))
    LOOP
        EXECUTE format('ALTER TABLE %s SET (fillfactor = 50)', part.name);
    END LOOP;
END;
$$;
"""

# Back to 0003's function (partition tables created with the default fillfactor).
BACKWARD = import_module("telemetry.migrations.0003_partition_attach").FORWARD


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0003_partition_attach")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
