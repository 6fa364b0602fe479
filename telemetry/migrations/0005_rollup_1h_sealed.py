"""Hourly rollups of open hours are computed from the minute rollups when read, not upserted per batch.

Every ingest batch used to upsert the current 1-hour row of each series it held, right after the
1-minute row: at the batch sizes the ingest writes (20-25k points over 4,000 series) that second
upsert was about a fifth of the batch statement, and the rows every batch of every ingest process
touches (and locks until commit) are the same few thousand.

Now:
- `telemetry_rollup_1h_sealed` (the former table, partitions unchanged) holds the hours before
  the tenant's watermark `telemetry_rollup_watermark.sealed_through` (hour-aligned);
- `telemetry_rollup_1h` is a view: the sealed rows, plus the hours from the watermark on
  aggregated from `telemetry_rollup_1m` (at most one or two hours of minute rows per series), so
  every reader sees exact hourly rollups whenever it reads;
- writers merge into the sealed table only the hours before the watermark (late points), under a
  shared transaction-level advisory lock per tenant; `telemetry.services.seal_rollup_hours`
  (Celery beat) takes the same lock exclusively, writes the closed hours from their minutes and
  moves the watermark. A writer's minute rows are therefore either folded in by a seal or merged
  by the writer itself, never both and never neither (tests: test_rollup_sealing.py).

The watermark starts at the current hour for an empty tenant; for one with rollups it starts two
hours after its newest hourly row, so that writers of the previous release still running during
a deploy only write hours that stay sealed.
"""

from importlib import import_module

from django.db import migrations

_0004 = import_module("telemetry.migrations.0004_rollup_fillfactor")

# 0004's function with the hourly partitions attached to the sealed table.
ENSURE_PARTITIONS = _0004.FORWARD.split("-- Partitions that exist already")[0].replace(
    "%I.telemetry_rollup_1h ", "%I.telemetry_rollup_1h_sealed "
)
assert ENSURE_PARTITIONS.count("telemetry_rollup_1h_sealed") == 2

VIEW = r"""
CREATE VIEW telemetry_rollup_1h AS
SELECT device_id, metric_id, bucket, count, min, max, sum, sum_sq, first, first_ts, last, last_ts
FROM telemetry_rollup_1h_sealed
UNION ALL
SELECT device_id, metric_id, date_bin('1 hour', bucket, '2000-01-01 00:00:00+00') AS bucket, sum(count)::bigint AS count,
       min(min) AS min, max(max) AS max, sum(sum) AS sum, sum(sum_sq) AS sum_sq,
       (array_agg(first ORDER BY first_ts))[1] AS first, min(first_ts) AS first_ts,
       (array_agg(last ORDER BY last_ts DESC))[1] AS last, max(last_ts) AS last_ts
FROM telemetry_rollup_1m
WHERE bucket >= (SELECT sealed_through FROM telemetry_rollup_watermark)
GROUP BY 1, 2, 3;
"""

FORWARD = (
    r"""
ALTER TABLE telemetry_rollup_1h RENAME TO telemetry_rollup_1h_sealed;

CREATE TABLE telemetry_rollup_watermark (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    sealed_through timestamptz NOT NULL CHECK (sealed_through = date_bin('1 hour', sealed_through, '2000-01-01 00:00:00+00'))
);
-- The seal reads one hour of minute rows of all series: a BRIN index on bucket (minute rows are
-- appended in time order) finds them without scanning the day's partition; it costs the upserts
-- nothing (bucket never changes, so updates stay HOT). New partitions get it when attached.
CREATE INDEX telemetry_rollup_1m_bucket ON telemetry_rollup_1m USING brin (bucket) WITH (autosummarize = on);

INSERT INTO telemetry_rollup_watermark (sealed_through)
SELECT coalesce(
    (SELECT date_trunc('hour', max(bucket)) + interval '2 hours' FROM telemetry_rollup_1h_sealed),
    date_trunc('hour', now())
);
"""
    + VIEW
    + ENSURE_PARTITIONS
)

# Open hours folded back into the table (exactly what the view shows), then 0004's state.
BACKWARD = (
    r"""
INSERT INTO telemetry_rollup_1h_sealed (device_id, metric_id, bucket, count, min, max, sum, sum_sq, first, first_ts, last, last_ts)
SELECT * FROM telemetry_rollup_1h v WHERE v.bucket >= (SELECT sealed_through FROM telemetry_rollup_watermark);
DROP VIEW telemetry_rollup_1h;
DROP TABLE telemetry_rollup_watermark;
DROP INDEX telemetry_rollup_1m_bucket;
ALTER TABLE telemetry_rollup_1h_sealed RENAME TO telemetry_rollup_1h;
"""
    + _0004.FORWARD.split("-- Partitions that exist already")[0]
)


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0004_rollup_fillfactor")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
