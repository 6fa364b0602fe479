"""Time-series storage in each tenant schema (DESIGN.md, Telemetry storage).

- `telemetry_point`: one narrow row per point, range-partitioned by day on `ts`. The unique
  index (device_id, metric_id, ts) makes a redelivered point a no-op (ON CONFLICT DO NOTHING).
- `telemetry_rollup_1m` (daily partitions) and `telemetry_rollup_1h` (monthly partitions):
  count, min, max, sum, sum of squares, first and last per (device, metric, bucket).
- `telemetry_ensure_partitions(schema, from, to)`: creates the missing partitions of all three
  tables for the days in [from, to]; Celery beat calls it ahead of time, the writer when a point
  falls on a day that has none yet.

Runs once per tenant schema (django-tenants sets search_path), so every name is unqualified here.
"""

from django.db import migrations

FORWARD = r"""
CREATE TABLE telemetry_point (
    device_id integer NOT NULL,
    metric_id integer NOT NULL,
    ts timestamptz NOT NULL,
    value double precision NOT NULL
) PARTITION BY RANGE (ts);
CREATE UNIQUE INDEX telemetry_point_key ON telemetry_point (device_id, metric_id, ts);

CREATE TABLE telemetry_rollup_1m (
    device_id integer NOT NULL,
    metric_id integer NOT NULL,
    bucket timestamptz NOT NULL,
    count bigint NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    sum double precision NOT NULL,
    sum_sq double precision NOT NULL,
    first double precision NOT NULL,
    first_ts timestamptz NOT NULL,
    last double precision NOT NULL,
    last_ts timestamptz NOT NULL,
    PRIMARY KEY (device_id, metric_id, bucket)
) PARTITION BY RANGE (bucket);

CREATE TABLE telemetry_rollup_1h (LIKE telemetry_rollup_1m INCLUDING DEFAULTS) PARTITION BY RANGE (bucket);
ALTER TABLE telemetry_rollup_1h ADD PRIMARY KEY (device_id, metric_id, bucket);

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

SELECT telemetry_ensure_partitions(current_schema(), (now() AT TIME ZONE 'UTC')::date - 7, (now() AT TIME ZONE 'UTC')::date + 7);
"""

BACKWARD = r"""
DROP FUNCTION IF EXISTS telemetry_ensure_partitions(text, date, date);
DROP TABLE IF EXISTS telemetry_rollup_1h;
DROP TABLE IF EXISTS telemetry_rollup_1m;
DROP TABLE IF EXISTS telemetry_point;
"""


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0001_initial")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
