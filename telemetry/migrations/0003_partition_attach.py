"""Partitions are created detached and then ATTACHed, with fully packed per-series indexes.

Why (measured, see telemetry/storage.py and scripts/bench_storage.py):
- `CREATE TABLE ... PARTITION OF` takes an ACCESS EXCLUSIVE lock on the parent table, so a
  writer creating tomorrow's partition waits behind every running query on telemetry_point
  (a long CSV export included) and every new query queues behind it. `CREATE TABLE` +
  `ATTACH PARTITION` only needs SHARE UPDATE EXCLUSIVE on the parent, which readers and writers
  do not conflict with.
- Points of one (device, metric) arrive in time order, so index pages are only ever appended
  to (btree "split after new item"): a leaf fillfactor of 100 packs them fully instead of
  leaving the default 10 % free for updates that never come. Same for the rollup keys.

The interface is unchanged: `telemetry_ensure_partitions(schema, from_date, to_date)` returns
the number of point partitions it created.
"""

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
            EXECUTE format('CREATE TABLE %I.%I (LIKE %I.telemetry_rollup_1m INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
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
            EXECUTE format('CREATE TABLE %I.%I (LIKE %I.telemetry_rollup_1h INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
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
"""

# 0002's version of the function (CREATE TABLE ... PARTITION OF).
BACKWARD = r"""
CREATE OR REPLACE FUNCTION telemetry_ensure_partitions(p_schema text, p_from date, p_to date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    d date;
    m date;
    created integer := 0;
BEGIN
    d := p_from;
    WHILE d <= p_to LOOP
        IF to_regclass(format('%I.%I', p_schema, 'telemetry_point_p' || to_char(d, 'YYYYMMDD'))) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %I.telemetry_point FOR VALUES FROM (%L) TO (%L)',
                p_schema, 'telemetry_point_p' || to_char(d, 'YYYYMMDD'), p_schema,
                d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
        IF to_regclass(format('%I.%I', p_schema, 'telemetry_rollup_1m_p' || to_char(d, 'YYYYMMDD'))) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %I.telemetry_rollup_1m FOR VALUES FROM (%L) TO (%L)',
                p_schema, 'telemetry_rollup_1m_p' || to_char(d, 'YYYYMMDD'), p_schema,
                d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
        END IF;
        m := date_trunc('month', d)::date;
        IF to_regclass(format('%I.%I', p_schema, 'telemetry_rollup_1h_p' || to_char(m, 'YYYYMM'))) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %I.telemetry_rollup_1h FOR VALUES FROM (%L) TO (%L)',
                p_schema, 'telemetry_rollup_1h_p' || to_char(m, 'YYYYMM'), p_schema,
                m::timestamp AT TIME ZONE 'UTC', (m + interval '1 month')::timestamp AT TIME ZONE 'UTC');
        END IF;
        d := d + 1;
    END LOOP;
    RETURN created;
END;
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0002_partitioned_storage")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
