"""Hourly rollups (migration 0005): open hours come from the minute rollups, closed hours are sealed.

Writers merge hourly rows only for hours before the tenant's watermark; `seal_rollup_hours` folds
closed hours under the tenant's rollup lock. Whatever the interleaving of batches (late,
redelivered, out of order) and seals, the `telemetry_rollup_1h` view must equal the hourly rollup
of the raw points. Seals run in a thread of their own so that their transactions commit (and
release the lock) as in production.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry import services
from telemetry.storage import Point, TelemetryWriter
from telemetry.tests import storage_support
from telemetry.tests.storage_support import fetch, utc
from telemetry.tests.test_storage_writer import _assert_rollups_match

clean_telemetry = storage_support.clean_telemetry
writer = storage_support.writer

pytestmark = pytest.mark.django_db(transaction=False)

START = utc(2034, 3, 3, 22)  # the watermark these tests start from


def _in_thread(func, *args, **kwargs):
    def run():
        try:
            return func(*args, **kwargs)
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result(timeout=60)


def seal(now: datetime) -> services.SealResult:
    return _in_thread(services.seal_rollup_hours, schema="alpha", now=now, grace_s=0)


def set_watermark(moment: datetime) -> None:
    fetch("UPDATE alpha.telemetry_rollup_watermark SET sealed_through = %s RETURNING 1", moment)


def watermark() -> datetime:
    return fetch("SELECT sealed_through FROM alpha.telemetry_rollup_watermark")[0][0]


@pytest.fixture
def sealing(writer):
    before = watermark()
    writer.ensure_partitions("alpha", [START.date() - timedelta(days=1), START.date(), START.date() + timedelta(days=1)])
    set_watermark(START)
    yield writer
    set_watermark(before)


def test_a_new_tenant_starts_sealed_through_the_hour_it_was_created_in(platform):
    # beta is created by the test session: an empty tenant's watermark is the hour of its migration.
    created = fetch("SELECT sealed_through FROM beta.telemetry_rollup_watermark")[0][0]
    assert created.minute == created.second == created.microsecond == 0
    assert timedelta(0) <= utc(*time.gmtime()[:6]) - created < timedelta(days=2)


def test_open_hours_are_read_from_the_minutes_and_never_written_per_batch(sealing):
    points = [Point(1, 1, START + timedelta(minutes=m, seconds=s), float(m * 60 + s)) for m in range(0, 120, 7) for s in (0, 30)]
    for first in range(0, len(points), 5):
        sealing.write("alpha", points[first : first + 5])
    assert fetch("SELECT count(*) FROM alpha.telemetry_rollup_1h_sealed") == [(0,)]
    assert fetch("SELECT count(*), sum(count) FROM alpha.telemetry_rollup_1h") == [(2, len(points))]
    _assert_rollups_match(points)


def test_a_seal_folds_closed_hours_and_late_points_merge_into_them(sealing):
    points = [Point(2, 1, START + timedelta(minutes=m), float(m)) for m in range(0, 180, 3)]
    sealing.write("alpha", points)
    view_before = fetch("SELECT * FROM alpha.telemetry_rollup_1h ORDER BY bucket")

    result = seal(START + timedelta(hours=2, minutes=30))
    assert (result.hours, result.rows, result.sealed_through) == (2, 2, START + timedelta(hours=2))
    assert watermark() == START + timedelta(hours=2)
    assert fetch("SELECT bucket FROM alpha.telemetry_rollup_1h_sealed ORDER BY bucket") == [(START,), (START + timedelta(hours=1),)]
    assert fetch("SELECT * FROM alpha.telemetry_rollup_1h ORDER BY bucket") == view_before
    assert seal(START + timedelta(hours=2, minutes=59)).hours == 0  # nothing more is closed

    late = [Point(2, 1, START + timedelta(minutes=10, seconds=1), -5.0), Point(2, 2, START + timedelta(minutes=70), 9.0)]
    sealing.write("alpha", late)
    assert fetch("SELECT count(*) FROM alpha.telemetry_rollup_1h_sealed") == [(3,)]  # merged by the writer
    _assert_rollups_match(points + late)


def test_a_seal_waits_for_a_writer_in_flight_and_includes_its_points(sealing):
    committing, release = threading.Event(), threading.Event()

    class PausedBeforeCommit:
        def __init__(self, conn):
            self._conn = conn

        def __getattr__(self, name):
            return getattr(self._conn, name)

        def commit(self):
            committing.set()
            assert release.wait(30)
            self._conn.commit()

    class PausingWriter(TelemetryWriter):
        def _connection(self):
            return PausedBeforeCommit(super()._connection())

    points = [Point(3, 1, START + timedelta(minutes=m), float(m)) for m in range(0, 60, 5)]
    with PausingWriter() as paused, ThreadPoolExecutor(2) as pool:
        written = pool.submit(paused.write, "alpha", points)
        assert committing.wait(30)  # minute rows written, not committed, lock held shared
        sealed = pool.submit(seal, START + timedelta(hours=1, minutes=5))
        time.sleep(0.5)
        assert not sealed.done(), "the seal must wait for the writer's transaction"
        release.set()
        assert written.result(timeout=30).inserted == len(points)
        assert sealed.result(timeout=30).hours == 1
    assert fetch("SELECT count FROM alpha.telemetry_rollup_1h_sealed WHERE device_id = 3") == [(len(points),)]
    _assert_rollups_match(points)


_examples = itertools.count(1)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_rollups_agree_with_raw_data_whatever_the_interleaving_of_batches_and_seals(sealing, data):
    # Each example has its own device and its own day: the watermark only ever moves forward.
    example = next(_examples)
    device, start = 20_000 + example, START + timedelta(days=example)
    set_watermark(start)
    offsets = data.draw(st.lists(st.integers(min_value=-3600 * 1000, max_value=3 * 3600 * 1000), min_size=1, max_size=80))
    values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
    points = [Point(device, 1 + i % 2, start + timedelta(milliseconds=off), data.draw(values)) for i, off in enumerate(offsets)]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(points)), max_size=5)))
    batches = [points[a:b] for a, b in itertools.pairwise([0, *cuts, len(points)]) if b > a]
    order = data.draw(st.permutations(range(len(batches))))
    seal_after = data.draw(st.lists(st.tuples(st.integers(0, len(order)), st.integers(0, 4)), max_size=3))
    for step, index in enumerate([*order, order[0]]):  # the first batch is delivered twice
        for when, hours in seal_after:
            if when == step:
                seal(start + timedelta(hours=hours, minutes=1))
        writer_result = sealing.write("alpha", batches[index])
        assert writer_result.inserted + writer_result.duplicates == len(batches[index])
    first = {}
    for index in order:  # the first delivery of a (device, metric, ts) is the one stored
        for p in batches[index]:
            first.setdefault((p.device_id, p.metric_id, p.ts), p)
    _assert_rollups_match(list(first.values()))


def test_the_beat_task_seals_every_active_tenant(clean_telemetry):
    before = {schema: fetch(f"SELECT sealed_through FROM {schema}.telemetry_rollup_watermark")[0][0] for schema in ("alpha", "beta")}
    try:
        for schema in before:
            fetch(f"UPDATE {schema}.telemetry_rollup_watermark SET sealed_through = %s RETURNING 1", START)
        results = {r.schema: r for r in _in_thread(services.seal_rollups_for_tenants, now=START + timedelta(hours=3, minutes=5))}
        assert results["alpha"].sealed_through == results["beta"].sealed_through == START + timedelta(hours=3)
        assert not results["alpha"].error and results["alpha"].hours == 3
    finally:
        for schema, moment in before.items():
            fetch(f"UPDATE {schema}.telemetry_rollup_watermark SET sealed_through = %s RETURNING 1", moment)
