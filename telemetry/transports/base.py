"""What every transport shares: the asyncio ingest service behind the pipeline.

A transport (MQTT today; HTTP, CoAP, AMQP, OPC UA later) turns bytes on the wire into
`(topic, payload)` and calls `IngestService.submit()`. The service runs the pipeline, records
rejections, batches points per tenant and has them written by a dedicated writer thread (the
storage is synchronous psycopg), so the event loop keeps receiving while a batch is committed.

    waiter = service.submit(topic, payload, received_at)
    if waiter is not None:
        await waiter          # resolves once what the message carried is durably stored

Delivery is at-least-once: a transport acknowledges a message (MQTT PUBACK) only after its waiter
resolved, i.e. after the batch containing it committed. If the process dies first, the broker
redelivers and the store's unique key makes the second copy harmless.

Flushing: a tenant's batch is written when it holds settings.INGEST_BATCH_MAX_POINTS points or its
first point waited settings.INGEST_FLUSH_MS. Streaming hooks (rules, live updates) see each
message's validated points as they arrive, before their batch commits, so alert latency does not
wait for a flush (`hooks`: callables `(schema, points)`, built by the factories named in
settings.INGEST_STREAMING_HOOKS; they run on the event loop, so they must be fast, never block on
I/O, and must not raise: a failing hook is logged and skipped). A redelivered message reaches the
hooks again; what they do with it must be idempotent (alert fingerprints dedupe). A failing write is retried with backoff and
jitter, never acknowledged meanwhile; the same batch is written again on the new connection.
After each commit, device last-seen times are moved (`devices.services.mark_devices_seen`, one
statement per batch) for the devices this process has not marked within
settings.INGEST_SEEN_INTERVAL_S (5 s: a busy device's row is not rewritten by every batch of every
process, which cost as much as the points themselves), and the rejection counters flushed to Redis
(one pipelined round trip).

Status, attributes and command responses are applied through the devices services in a small
thread pool (Django ORM, synchronous) and acknowledged once applied.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import close_old_connections

from iiot.observability.ingest import IngestMetrics
from telemetry.pipeline import Kind, Outcome, Pipeline, Reason, Rejection, StreamingHook
from telemetry.registry import RegistryMiss
from telemetry.rejections import RejectionRecorder
from telemetry.storage import PointBuffer, TelemetryWriter

logger = logging.getLogger(__name__)

# A write failing with something other than a lost connection this many times in a row is given
# up (its points are counted as rejected `store_failed`) so that one poisoned batch cannot stop
# the service; connection errors are retried for as long as it takes.
MAX_PERMANENT_FAILURES = 5
STORE_FAILED = "store_failed"


@dataclass
class Stats:
    messages: int = 0
    points_accepted: int = 0
    points_written: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0
    write_errors: int = 0
    write_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Batch:
    schema: str
    started: float  # time.monotonic() of its first point
    points: PointBuffer = field(default_factory=PointBuffer)  # COPY rows, 42 bytes a point
    seen: dict[int, datetime] = field(default_factory=dict)  # device id -> last receive time
    waiter: asyncio.Future | None = None
    write_seconds: float = 0.0  # time its write took, retries included (metrics, flush log)


def backoff_delays(first: float = 0.2, cap: float = 10.0):
    """Exponential backoff with full jitter: 0.2, 0.4, 0.8 ... capped, each randomised."""
    delay = first
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(delay * 2, cap)


class IngestService:
    def __init__(
        self,
        pipeline: Pipeline,
        *,
        hooks: Sequence[StreamingHook] = (),
        writer_factory: Callable[[], TelemetryWriter] | None = None,
        recorder: RejectionRecorder | None = None,
        flush_ms: int | None = None,
        batch_max_points: int | None = None,
        max_pending_points: int | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.hooks: list[StreamingHook] = list(hooks)
        self.writer_factory = writer_factory or TelemetryWriter
        self.recorder = recorder or RejectionRecorder()
        self.flush_s = (flush_ms if flush_ms is not None else settings.INGEST_FLUSH_MS) / 1000
        self.batch_max_points = batch_max_points or settings.INGEST_BATCH_MAX_POINTS
        self.max_pending_points = max_pending_points or settings.INGEST_MAX_PENDING_POINTS
        self.seen_interval_s = settings.INGEST_SEEN_INTERVAL_S
        self._marked: dict[str, dict[int, float]] = {}  # schema -> device id -> monotonic time of its last mark
        self.stats = Stats()
        self.metrics = IngestMetrics()  # Prometheus (iiot.metrics) and the per-flush log line
        self.batches: dict[str, Batch] = {}
        self.pending_points = 0
        # The transport's flow control: called when memory holds too many unwritten points.
        self.pause_reading: Callable[[], None] | None = None
        self.resume_reading: Callable[[], None] | None = None
        self._paused = False
        self._writer: TelemetryWriter | None = None
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="ingest-writer")
        self._side_pool = ThreadPoolExecutor(4, thread_name_prefix="ingest-orm")
        self._side_jobs: set[asyncio.Future] = set()
        self._misses: dict[tuple, asyncio.Future] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = asyncio.Event()
        self._flusher: asyncio.Task | None = None
        self._stopping = threading.Event()

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._flusher = asyncio.create_task(self._flush_loop(), name="ingest-flush")

    async def stop(self, timeout: float = 20.0) -> None:
        """Flush what is pending (its waiters resolve: acknowledgements go out), then stop."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._due.set()
        if self._flusher is not None:
            try:
                await asyncio.wait_for(self._flusher, timeout)
            except (TimeoutError, asyncio.CancelledError):
                logger.warning("ingest stop: pending batches not written in time; they will be redelivered")
        if self._side_jobs:
            await asyncio.wait(self._side_jobs, timeout=max(0.1, deadline - time.monotonic()))
        await asyncio.get_running_loop().run_in_executor(self._writer_pool, self._close_writer)
        self.recorder.flush()
        self._writer_pool.shutdown(wait=False, cancel_futures=True)
        self._side_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def paused(self) -> bool:
        """Reading is paused until the unwritten points fall to half of max_pending_points."""
        return self._paused

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # --- intake ------------------------------------------------------------------------------------
    def submit(self, topic: str, payload: bytes, received_at: datetime) -> asyncio.Future | None:
        """Run one message through the pipeline. Returns a future to await before acknowledging,
        or None when there is nothing to wait for (rejected, nothing to store).

        Raises `RegistryMiss` when the registry index needs the database first: `await
        resolve(miss)` and submit again."""
        outcome = self.pipeline.try_process(topic, payload, received_at)
        self.stats.messages += 1
        self.metrics.message(outcome)
        if outcome.rejections:
            self.stats.rejected += sum(r.count for r in outcome.rejections)
            self.recorder.record(topic, payload, outcome, at=received_at)
        kind = outcome.kind
        if kind is Kind.TELEMETRY:
            if not outcome.points:
                return None
            return self._add_points(outcome, received_at)
        if outcome.accepted:
            return self._apply(outcome, received_at)
        return None

    async def resolve(self, miss: RegistryMiss) -> None:
        """Do a registry miss's database work in a thread, once however many messages wait for it.
        Raises RegistryUnavailable when the database cannot answer (back off and retry)."""
        pending = self._misses.get(miss.key)
        if pending is None:
            pending = self._misses[miss.key] = asyncio.ensure_future(self._loop.run_in_executor(self._side_pool, miss.resolve))
            pending.add_done_callback(lambda _f, key=miss.key: self._misses.pop(key, None))
        await asyncio.shield(pending)

    def _add_points(self, outcome: Outcome, received_at: datetime) -> asyncio.Future:
        schema = outcome.schema
        batch = self.batches.get(schema)
        if batch is None:
            batch = self.batches[schema] = Batch(schema=schema, started=time.monotonic())
        points = outcome.points
        for hook in self.hooks:
            try:
                hook(schema, points)
            except Exception:
                logger.exception("streaming hook failed", extra={"schema": schema, "hook": repr(hook)})
        batch.points.extend(points)
        batch.seen[outcome.device.device_id] = received_at
        count = len(points)
        self.pending_points += count
        self.stats.points_accepted += count
        if len(batch.points) >= self.batch_max_points:
            self._due.set()
        if self.pending_points >= self.max_pending_points and not self._paused and self.pause_reading is not None:
            self._paused = True
            self.pause_reading()
        waiter = batch.waiter
        if waiter is None:
            waiter = batch.waiter = self._loop.create_future()
        return waiter

    # --- flushing ----------------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        tick = max(self.flush_s / 4, 0.005)
        while True:
            try:
                await asyncio.wait_for(self._due.wait(), tick)
            except TimeoutError:
                pass
            self._due.clear()
            stopping = self._stopping.is_set()
            now = time.monotonic()
            due = [
                batch
                for batch in self.batches.values()
                if stopping or len(batch.points) >= self.batch_max_points or now - batch.started >= self.flush_s
            ]
            if due:
                for batch in due:
                    del self.batches[batch.schema]
                await self._write(due)
            elif stopping and not self.batches:
                self.metrics.stopped(self)
                return
            self.metrics.publish(self)
            if self.recorder.counts or self.recorder.dead_letters:
                self._run_side(self.recorder.write, *self.recorder.take(), retry=False)

    async def _write(self, batches: list[Batch]) -> None:
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._writer_pool, self._write_blocking, batches)
        for batch, outcome in zip(batches, results, strict=True):
            count = len(batch.points)
            self.pending_points -= count
            self.metrics.batch_done(batch, outcome)
            if outcome is None:  # not written (stopping while the database is away): no acknowledgement
                continue
            if outcome == STORE_FAILED:
                self.stats.rejected += count
                self.recorder.counts[(batch.schema, "", STORE_FAILED)] += count
            else:
                self.stats.points_written += outcome.inserted
                self.stats.duplicates += outcome.duplicates
                seen = self._due_seen(batch.schema, batch.seen)
                if seen:
                    self._run_side(self._mark_seen, batch.schema, seen, retry=False)
            self.stats.batches += 1
            if batch.waiter is not None and not batch.waiter.done():
                batch.waiter.set_result(0)
        if self._paused and self.pending_points < self.max_pending_points // 2 and self.resume_reading is not None:
            self._paused = False
            self.resume_reading()

    def _write_blocking(self, batches: list[Batch]) -> list[Any]:
        """In the writer thread: each tenant's batch in its own transaction, retried until stored."""
        results: list[Any] = []
        for batch in batches:
            began = time.perf_counter()
            delays = backoff_delays()
            permanent_failures = 0
            while True:
                started = time.perf_counter()
                try:
                    if self._writer is None:
                        self._writer = self.writer_factory()
                    result = self._writer.write(batch.schema, batch.points)
                    self.stats.write_seconds += time.perf_counter() - started
                    results.append(result)
                    break
                except Exception as exc:
                    self.stats.write_errors += 1
                    connection_error = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError)
                    if not connection_error:
                        permanent_failures += 1
                        if permanent_failures >= MAX_PERMANENT_FAILURES:
                            logger.error(
                                "batch refused by the database; its points are dropped",
                                extra={"schema": batch.schema, "points": len(batch.points)},
                                exc_info=True,
                            )
                            results.append(STORE_FAILED)
                            break
                    if self._stopping.is_set() and connection_error:
                        logger.warning("stopping with the database away: batch left for redelivery", extra={"schema": batch.schema})
                        results.append(None)
                        break
                    delay = next(delays)
                    logger.warning(
                        "batch write failed; retrying",
                        extra={"schema": batch.schema, "points": len(batch.points), "error": str(exc)[:300], "retry_in_s": round(delay, 2)},
                    )
                    time.sleep(delay)
            batch.write_seconds = time.perf_counter() - began
        return results

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # --- side effects (Django ORM, thread pool) ---------------------------------------------------
    def _run_side(self, func: Callable[..., Any], *args: Any, retry: bool) -> asyncio.Future:
        job = asyncio.ensure_future(self._loop.run_in_executor(self._side_pool, self._call_side, func, args, retry))
        self._side_jobs.add(job)
        job.add_done_callback(self._side_jobs.discard)
        return job

    def _call_side(self, func: Callable[..., Any], args: tuple, retry: bool) -> Any:
        delays = backoff_delays(first=0.5)
        while True:
            close_old_connections()
            try:
                return func(*args)
            except ValidationError as exc:
                logger.info("device message refused by the registry", extra={"error": str(exc)[:300]})
                return None
            except Exception as exc:
                if not retry or self._stopping.is_set():
                    logger.warning("ingest side effect failed", extra={"call": getattr(func, "__name__", repr(func)), "error": str(exc)[:300]})
                    return None
                time.sleep(next(delays))

    def _due_seen(self, schema: str, seen: dict[int, datetime]) -> dict[int, datetime]:
        """The devices of `seen` not marked by this process within seen_interval_s (now marked)."""
        if self.seen_interval_s <= 0:
            return seen
        now = time.monotonic()
        horizon = now - self.seen_interval_s
        marked = self._marked.setdefault(schema, {})
        due = {pk: at for pk, at in seen.items() if marked.get(pk, -1e18) <= horizon}
        for pk in due:
            marked[pk] = now
        return due

    @staticmethod
    def _mark_seen(schema: str, seen: dict[int, datetime]) -> None:
        from devices.services import mark_devices_seen

        mark_devices_seen(schema=schema, seen=seen)

    def _apply(self, outcome: Outcome, received_at: datetime) -> asyncio.Future:
        from devices import services

        schema, uid = outcome.schema, outcome.device_uid
        if outcome.kind is Kind.STATUS:
            return self._run_side(
                lambda: services.set_device_connection(schema=schema, device_uid=uid, online=outcome.data, at=received_at), retry=True
            )
        if outcome.kind is Kind.ATTRIBUTES:
            return self._run_side(lambda: services.update_client_attributes(schema=schema, device_uid=uid, attributes=outcome.data), retry=True)
        return self._run_side(lambda: services.record_command_response(schema=schema, device_uid=uid, payload=outcome.data), retry=True)


__all__ = ["IngestService", "Stats", "backoff_delays", "Rejection", "Reason"]
