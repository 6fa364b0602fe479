"""Collectors evaluated at scrape time by the web process's /metrics.

`TelemetryStorageCollector`: per tenant schema and telemetry table (points, 1-minute and 1-hour
rollups) the number of partitions, their total size on disk (heap, indexes, TOAST) and the
planner's row estimate, read from the PostgreSQL catalogue (pg_inherits, pg_total_relation_size,
reltuples) in one query, cached for settings.METRICS_STORAGE_CACHE_SECONDS so that frequent scrapes
(several Prometheus servers, a dashboard) cost one catalogue read per period.

`MergedCollector`: what /metrics serves. In multiprocess mode, the files of every process; in a
single process (no PROMETHEUS_MULTIPROC_DIR at start, e.g. `runserver`), this process's registry,
plus the files of a directory named at scrape time if there is one. Families of the same name are
merged and samples with the same labels summed (never two HELP lines for one name).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator

from django.conf import settings
from django.db import connection
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

from iiot.observability import multiprocess

logger = logging.getLogger(__name__)

TELEMETRY_TABLES = ("telemetry_point", "telemetry_rollup_1m", "telemetry_rollup_1h_sealed")  # not the view

STORAGE_SQL = """
SELECT n.nspname, p.relname, count(c.oid), coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint,
       coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint
FROM pg_class p
JOIN pg_namespace n ON n.oid = p.relnamespace
LEFT JOIN pg_inherits i ON i.inhparent = p.oid
LEFT JOIN pg_class c ON c.oid = i.inhrelid
WHERE p.relkind = 'p' AND p.relname = ANY(%s) AND n.nspname <> 'public'
GROUP BY n.nspname, p.relname
ORDER BY n.nspname, p.relname
"""


class TelemetryStorageCollector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[tuple] = []
        self._read_at = float("-inf")

    def rows(self) -> list[tuple]:
        ttl = getattr(settings, "METRICS_STORAGE_CACHE_SECONDS", 30.0)
        with self._lock:
            if time.monotonic() - self._read_at >= ttl:
                with connection.cursor() as cursor:
                    cursor.execute(STORAGE_SQL, [list(TELEMETRY_TABLES)])
                    self._rows = cursor.fetchall()
                self._read_at = time.monotonic()
            return self._rows

    def collect(self) -> Iterator[Metric]:
        partitions = GaugeMetricFamily("iiot_telemetry_partitions", "Partitions of each telemetry table, per tenant.", labels=["tenant", "table"])
        size = GaugeMetricFamily(
            "iiot_telemetry_table_bytes", "Size on disk of each telemetry table (all partitions, indexes included), per tenant.",
            labels=["tenant", "table"],
        )
        rows_estimate = GaugeMetricFamily(
            "iiot_telemetry_rows_estimate", "Planner's row estimate of each telemetry table (reltuples), per tenant.", labels=["tenant", "table"]
        )
        try:
            rows = self.rows()
        except Exception:
            logger.warning("telemetry storage metrics unavailable", exc_info=True)
            rows = []
        for schema, table, count, total_bytes, estimate in rows:
            partitions.add_metric([schema, table], count)
            size.add_metric([schema, table], total_bytes)
            rows_estimate.add_metric([schema, table], estimate)
        yield partitions
        yield size
        yield rows_estimate


STORAGE = TelemetryStorageCollector()


class MergedCollector:
    def __init__(self, sources: Iterable) -> None:
        self.sources = list(sources)

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        index: dict[str, dict[tuple, int]] = {}
        for source in self.sources:
            for family in source.collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                    index[family.name] = {}
                positions = index[family.name]
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue  # per-process creation times cannot be merged
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    at = positions.get(key)
                    if at is None:
                        positions[key] = len(merged.samples)
                        merged.samples.append(sample)
                    else:
                        old = merged.samples[at]
                        merged.samples[at] = Sample(old.name, old.labels, old.value + sample.value, old.timestamp, old.exemplar)
        yield from families.values()


def scrape_sources() -> list:
    """The collectors a scrape reads (see the module docstring)."""
    sources: list = []
    path = multiprocess.directory()
    if multiprocess.enabled():
        sources.append(MultiProcessCollector(None, path=path))
    else:
        sources.append(REGISTRY)
        if path:
            import os

            if os.path.isdir(path):
                sources.append(MultiProcessCollector(None, path=path))
    sources.append(STORAGE)
    return sources
