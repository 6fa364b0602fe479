"""Ingest metrics and flush log lines, recorded by `telemetry.transports.base.IngestService`.

The hot path (one call per message) only adds to plain dictionaries; the Prometheus values (in
multiprocess mode, memory-mapped files behind a lock) are moved once per flush-loop tick by
`publish()`, so instrumentation costs nothing measurable at 100k+ points/s. A scrape therefore sees
a message at most one tick (INGEST_FLUSH_MS / 4) after it arrived.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from django_tenants.utils import get_public_schema_name

from iiot import metrics
from telemetry.pipeline import Kind, Reason

flush_log = logging.getLogger("telemetry.ingest.flush")

STORE_FAILED = "store_failed"

def message_tenant(outcome: Any) -> str:
    """The tenant label of a message: its schema, or the public schema's when it could not be routed
    (unknown tenant, bad topic), as in the rejection counters of telemetry/rejections.py."""
    if outcome.schema and not any(r.reason in (Reason.UNKNOWN_TENANT, Reason.INVALID_TOPIC) for r in outcome.rejections):
        return outcome.schema
    return get_public_schema_name()


class IngestMetrics:
    def __init__(self) -> None:
        # Plain dicts, not Counter: this is the per-message path.
        self.messages: dict[str, int] = {}
        self.points: dict[str, int] = {}
        self.rejected: dict[tuple[str, str], int] = {}
        self.public_schema = get_public_schema_name()
        self.transport: Any = None
        self._write_errors = 0
        metrics.INGEST_PROCESSES.set(1)

    # --- hot path ------------------------------------------------------------------------------------
    def message(self, outcome: Any) -> None:
        """One message through the pipeline: counted per tenant, its rejections per reason."""
        if outcome.rejections:
            tenant = message_tenant(outcome)
            for rejection in outcome.rejections:
                key = (tenant, rejection.reason.value)
                self.rejected[key] = self.rejected.get(key, 0) + rejection.count
        else:
            tenant = outcome.schema or self.public_schema
        messages = self.messages
        messages[tenant] = messages.get(tenant, 0) + 1
        points = outcome.points
        if points and outcome.kind is Kind.TELEMETRY:
            self.points[tenant] = self.points.get(tenant, 0) + len(points)

    # --- per batch (after its write) -----------------------------------------------------------------
    def batch_done(self, batch: Any, outcome: Any) -> None:
        """Histograms and the flush log line for one tenant's batch; `outcome` as `_write_blocking` returns it."""
        schema, count = batch.schema, len(batch.points)
        seconds = getattr(batch, "write_seconds", 0.0)
        age = max(0.0, time.monotonic() - batch.started)  # first point received -> written
        if outcome is None:
            result = "left_for_redelivery"
        elif outcome == STORE_FAILED:
            result = STORE_FAILED
            self.rejected[(schema, STORE_FAILED)] = self.rejected.get((schema, STORE_FAILED), 0) + count
        else:
            result = "stored"
            metrics.INGEST_POINTS_STORED.labels(tenant=schema).inc(outcome.inserted)
            if outcome.duplicates:
                metrics.INGEST_POINTS_DUPLICATE.labels(tenant=schema).inc(outcome.duplicates)
            metrics.INGEST_BATCH_POINTS.labels(tenant=schema).observe(count)
            metrics.INGEST_FLUSH_SECONDS.labels(tenant=schema).observe(seconds)
            metrics.INGEST_BATCH_AGE_SECONDS.labels(tenant=schema).observe(age)
        flush_log.info(
            "ingest flush",
            extra={
                "tenant": schema,
                "schema": schema,
                "points": count,
                "inserted": getattr(outcome, "inserted", 0),
                "duplicates": getattr(outcome, "duplicates", 0),
                "result": result,
                "duration_ms": round(seconds * 1000, 2),
                "age_ms": round(age * 1000, 1),
            },
        )

    # --- once per flush-loop tick ------------------------------------------------------------------
    def publish(self, service: Any) -> None:
        for tenant, count in self.messages.items():
            metrics.INGEST_MESSAGES_RECEIVED.labels(tenant=tenant).inc(count)
        for tenant, count in self.points.items():
            metrics.INGEST_POINTS_RECEIVED.labels(tenant=tenant).inc(count)
        for (tenant, reason), count in self.rejected.items():
            metrics.INGEST_REJECTED.labels(tenant=tenant, reason=reason).inc(count)
        self.messages.clear()
        self.points.clear()
        self.rejected.clear()
        errors = service.stats.write_errors
        if errors > self._write_errors:
            metrics.INGEST_WRITE_ERRORS.inc(errors - self._write_errors)
            self._write_errors = errors
        metrics.INGEST_PENDING_POINTS.set(service.pending_points)
        connected = broker_connected(self.transport)
        if connected is not None:
            metrics.INGEST_BROKER_CONNECTED.set(1 if connected else 0)

    def watch(self, transport: Any) -> None:
        """The transport whose broker connection `iiot_ingest_broker_connected` reports."""
        self.transport = transport
        metrics.INGEST_BROKER_CONNECTED.set(0)

    def stopped(self, service: Any) -> None:
        self.publish(service)
        metrics.INGEST_PROCESSES.set(0)
        metrics.INGEST_BROKER_CONNECTED.set(0)
        metrics.INGEST_PENDING_POINTS.set(0)


def broker_connected(transport: Any) -> bool | None:
    """Whether `transport` is connected: its `connected` attribute (an asyncio.Event, a bool or a
    callable); None when it has none (the gauge is then left alone)."""
    if transport is None:
        return None
    state = getattr(transport, "connected", None)
    if isinstance(state, asyncio.Event | threading.Event):
        return state.is_set()
    if callable(state):
        return bool(state())
    if isinstance(state, bool):
        return state
    return None
