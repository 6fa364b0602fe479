"""TelemetryWriter: exact round trip, dedup, rollups against raw data, partitions, latest values."""

from __future__ import annotations

import itertools
import math
import struct
import tracemalloc
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry.storage import Point, PointBuffer, TelemetryWriter, WriteResult, latest_key, read_latest, redis_client
from telemetry.tests import storage_support
from telemetry.tests.storage_support import fetch, utc

# fixtures shared with the query tests
clean_telemetry = storage_support.clean_telemetry
writer = storage_support.writer

pytestmark = pytest.mark.django_db(transaction=False)


def test_round_trip_exact_microseconds_into_the_right_schema(writer):
    ts = utc(2026, 3, 1, 12, 0, 0, 123457)
    points = [Point(101, 7, ts, 21.5), Point(101, 7, ts + timedelta(microseconds=1), -0.1), Point(101, 8, ts, 1e300)]
    assert writer.write("alpha", points) == WriteResult(inserted=3, duplicates=0)
    rows = fetch("SELECT device_id, metric_id, ts, value FROM alpha.telemetry_point ORDER BY metric_id, ts")
    assert rows == [(p.device_id, p.metric_id, p.ts, p.value) for p in points]
    assert fetch("SELECT count(*) FROM beta.telemetry_point") == [(0,)]


def test_minute_first_and_last_tell_points_a_microsecond_apart(writer):
    # first/last of a minute are the points with the smallest and largest ts, in whatever order
    # the points arrive, however close together.
    ts = utc(2026, 3, 1, 12, 0, 30, 500000)
    points = [Point(102, 7, ts + timedelta(microseconds=offset), value) for offset, value in ((1, 50.0), (2, 1.0), (0, 99.0), (-1, 7.0))]
    assert writer.write("alpha", points).inserted == 4
    assert fetch("SELECT count, first, first_ts, last, last_ts FROM alpha.telemetry_rollup_1m WHERE device_id = 102") == [
        (4, 7.0, ts - timedelta(microseconds=1), 1.0, ts + timedelta(microseconds=2))
    ]


def test_redelivered_batch_inserts_nothing_and_leaves_rollups_unchanged(writer):
    base = utc(2026, 3, 1, 10, 59, 30)
    batch = [Point(5, 1, base + timedelta(seconds=i), float(i)) for i in range(60)]
    assert writer.write("alpha", batch) == WriteResult(inserted=60, duplicates=0)
    before = fetch("SELECT * FROM alpha.telemetry_rollup_1m ORDER BY bucket"), fetch("SELECT * FROM alpha.telemetry_rollup_1h ORDER BY bucket")
    assert writer.write("alpha", batch) == WriteResult(inserted=0, duplicates=60)
    # a batch overlapping the first: only the new half counts
    overlap = batch[30:] + [Point(5, 1, base + timedelta(seconds=60 + i), 100.0 + i) for i in range(30)]
    assert writer.write("alpha", overlap[:30]) == WriteResult(inserted=0, duplicates=30)
    after = fetch("SELECT * FROM alpha.telemetry_rollup_1m ORDER BY bucket"), fetch("SELECT * FROM alpha.telemetry_rollup_1h ORDER BY bucket")
    assert before == after
    assert writer.write("alpha", overlap) == WriteResult(inserted=30, duplicates=30)
    assert fetch("SELECT sum(count) FROM alpha.telemetry_rollup_1h") == [(90,)]


def test_a_batch_is_stored_in_key_order_whatever_order_it_arrived_in(writer):
    # Devices interleave in a batch; rows go into the heap (and the index) sorted by series and
    # time, which keeps each series' points together and makes the insert ~20 % faster.
    base = utc(2026, 3, 2, 8, 0, 0)
    arrived = [Point(device, metric, base + timedelta(seconds=second), float(second)) for second in range(5) for device in (30, 10, 20) for metric in (2, 1)]
    assert writer.write("alpha", arrived).inserted == len(arrived)
    in_heap_order = fetch("SELECT device_id, metric_id, ts FROM alpha.telemetry_point ORDER BY ctid")
    assert in_heap_order == sorted((p.device_id, p.metric_id, p.ts) for p in arrived)


def test_duplicates_inside_one_batch_are_stored_once(writer):
    ts = utc(2026, 3, 2, 0, 0, 1)
    result = writer.write("alpha", [Point(9, 1, ts, 1.0), Point(9, 1, ts, 1.0), Point(9, 1, ts + timedelta(seconds=1), 2.0)])
    assert result == WriteResult(inserted=2, duplicates=1)
    assert fetch("SELECT count, sum FROM alpha.telemetry_rollup_1m") == [(2, 3.0)]


def test_of_two_points_with_the_same_timestamp_in_one_batch_the_first_received_is_stored(writer):
    # Large enough that PostgreSQL's sort is not an insertion sort (stable by accident).
    ts = utc(2026, 3, 2, 1, 0, 0)
    batch = [Point(200 + device, metric, ts + timedelta(seconds=second), value)
             for value in (1.0, 2.0) for device in range(20) for metric in (1, 2) for second in range(5)]  # fmt: skip
    assert writer.write("alpha", batch) == WriteResult(inserted=200, duplicates=200)
    assert fetch("SELECT DISTINCT value FROM alpha.telemetry_point WHERE device_id >= 200") == [(1.0,)]
    assert fetch("SELECT sum(count), sum(sum) FROM alpha.telemetry_rollup_1m WHERE device_id >= 200") == [(200, 200.0)]


def _expected_rollups(points: list[Point], width: timedelta) -> dict[tuple, tuple]:
    groups: dict[tuple, list[Point]] = defaultdict(list)
    origin = datetime(2000, 1, 1, tzinfo=UTC)
    for p in points:
        bucket = origin + ((p.ts - origin) // width) * width
        groups[(p.device_id, p.metric_id, bucket)].append(p)
    expected = {}
    for key, group in groups.items():
        group.sort(key=lambda p: p.ts)
        values = [p.value for p in group]
        expected[key] = (len(values), min(values), max(values), sum(values), sum(v * v for v in values),
                         group[0].value, group[0].ts, group[-1].value, group[-1].ts)  # fmt: skip
    return expected


def _stored_rollups(table: str, device_ids: set[int]) -> dict[tuple, tuple]:
    rows = fetch(
        f"SELECT device_id, metric_id, bucket, count, min, max, sum, sum_sq, first, first_ts, last, last_ts FROM alpha.{table} "
        "WHERE device_id = ANY(%s)",
        list(device_ids),
    )
    return {tuple(row[:3]): tuple(row[3:]) for row in rows}


def _assert_rollups_match(points: list[Point]) -> None:
    for table, width in (("telemetry_rollup_1m", timedelta(minutes=1)), ("telemetry_rollup_1h", timedelta(hours=1))):
        expected, stored = _expected_rollups(points, width), _stored_rollups(table, {p.device_id for p in points})
        assert set(stored) == set(expected), table
        for key, (count, vmin, vmax, vsum, vsq, first, first_ts, last, last_ts) in expected.items():
            got = stored[key]
            assert got[0] == count and got[1] == vmin and got[2] == vmax, (table, key)
            assert math.isclose(got[3], vsum, rel_tol=1e-9, abs_tol=1e-6) and math.isclose(got[4], vsq, rel_tol=1e-9, abs_tol=1e-6)
            assert got[5:] == (first, first_ts, last, last_ts), (table, key)
            # the mean the API derives from a rollup equals the raw mean
            assert math.isclose(got[3] / got[0], vsum / count, rel_tol=1e-9, abs_tol=1e-6)


_series_offsets = st.lists(st.integers(min_value=0, max_value=3 * 3600 * 1000), min_size=1, max_size=120)
_values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
_device_ids = itertools.count(10_000)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_rollups_agree_with_raw_data_over_many_batches(writer, data):
    device = next(_device_ids)  # each example has its own device: examples share the committed tables
    base = utc(2026, 3, 3, 22, 30)
    offsets = data.draw(_series_offsets)
    points = [Point(device, 1 + i % 2, base + timedelta(milliseconds=off), data.draw(_values)) for i, off in enumerate(offsets)]
    # split into batches delivered out of order, with one batch delivered twice
    cuts = sorted(data.draw(st.lists(st.integers(0, len(points)), max_size=4)))
    batches = [points[a:b] for a, b in itertools.pairwise([0, *cuts, len(points)]) if b > a]
    order = data.draw(st.permutations(range(len(batches))))
    for index in [*order, order[0]]:
        writer.write("alpha", batches[index])
    unique = {(p.device_id, p.metric_id, p.ts): p for p in reversed(points)}  # first occurrence wins, like the table
    stored = fetch("SELECT device_id, metric_id, ts, value FROM alpha.telemetry_point WHERE device_id = %s", device)
    assert sorted(stored) == sorted((p.device_id, p.metric_id, p.ts, p.value) for p in _first_delivered(batches, order))
    assert len(stored) == len(unique)
    _assert_rollups_match([Point(*row) for row in stored])


def _first_delivered(batches: list[list[Point]], order: list[int]) -> list[Point]:
    seen: dict[tuple, Point] = {}
    for index in order:
        for p in batches[index]:
            seen.setdefault((p.device_id, p.metric_id, p.ts), p)
    return list(seen.values())


def test_partition_created_on_demand_for_a_day_without_one(writer):
    day = utc(2031, 6, 15, 8)
    assert fetch("SELECT to_regclass('alpha.telemetry_point_p20310615')") == [(None,)]
    result = writer.write("alpha", [Point(3, 1, day, 1.0), Point(3, 1, day + timedelta(days=1), 2.0)])
    assert result == WriteResult(inserted=2, duplicates=0)
    partitions = fetch(
        "SELECT to_regclass('alpha.telemetry_point_p20310615')::text, to_regclass('alpha.telemetry_point_p20310616')::text, "
        "to_regclass('alpha.telemetry_rollup_1m_p20310615')::text, to_regclass('alpha.telemetry_rollup_1h_p203106')::text"
    )[0]
    assert None not in partitions
    assert fetch("SELECT count(*) FROM alpha.telemetry_point_p20310616") == [(1,)]


def test_points_two_days_old_and_tomorrow_are_stored(writer):
    now = datetime.now(UTC)
    points = [Point(4, 1, now - timedelta(days=2), 1.0), Point(4, 1, now + timedelta(days=1), 2.0)]
    assert writer.write("alpha", points).inserted == 2


def test_database_failure_rolls_back_everything_and_raises(writer):
    ts = utc(2026, 3, 4, 1)
    with pytest.raises(psycopg.Error):
        writer.write("no_such_schema", [Point(1, 1, ts, 1.0)])
    # the writer is usable again and nothing was half-written
    assert writer.write("alpha", [Point(1, 1, ts, 1.0)]).inserted == 1
    assert fetch("SELECT count(*) FROM alpha.telemetry_rollup_1m") == [(1,)]


def test_writer_reconnects_after_the_connection_drops(writer):
    ts = utc(2026, 3, 4, 2)
    writer.write("alpha", [Point(1, 1, ts, 1.0)])
    pid = writer._conn.info.backend_pid
    fetch("SELECT pg_terminate_backend(%s)", pid)
    with pytest.raises(psycopg.OperationalError):
        writer.write("alpha", [Point(1, 1, ts + timedelta(seconds=1), 2.0)])
    assert writer.write("alpha", [Point(1, 1, ts + timedelta(seconds=1), 2.0)]).inserted == 1


def test_latest_values_never_regress_with_out_of_order_batches(writer):
    base = utc(2026, 3, 5, 12)
    writer.write("alpha", [Point(77, 1, base + timedelta(seconds=10), 10.0), Point(77, 2, base, 5.0)])
    writer.write("alpha", [Point(77, 1, base + timedelta(seconds=5), 5.0), Point(77, 2, base + timedelta(seconds=1), 6.0)])
    writer.write("alpha", [Point(77, 1, base, 0.0)])
    latest = read_latest("alpha", [77])
    assert latest == {77: {1: (base + timedelta(seconds=10), 10.0), 2: (base + timedelta(seconds=1), 6.0)}}
    raw = redis_client().hgetall(latest_key("alpha", 77))
    assert raw[b"1"] == f"{int((base + timedelta(seconds=10)).timestamp() * 1000)}:10.0".encode()
    assert read_latest("beta", [77]) == {}


def test_read_latest_falls_back_to_postgresql_when_redis_has_nothing(writer):
    base = utc(2026, 3, 5, 13, 0, 0, 250)
    writer.write("alpha", [Point(78, 1, base, 1.0), Point(78, 1, base + timedelta(hours=2), 3.5), Point(79, 2, base, 7.0)])
    redis_client().delete(latest_key("alpha", 78), latest_key("alpha", 79))
    assert read_latest("alpha", [78, 79, 80]) == {78: {1: (base + timedelta(hours=2), 3.5)}, 79: {2: (base, 7.0)}}


def test_write_survives_redis_being_down(clean_telemetry):
    with TelemetryWriter(redis_url="redis://127.0.0.1:1/0") as broken_redis:
        assert broken_redis.write("alpha", [Point(1, 1, utc(2026, 3, 6), 1.0)]).inserted == 1


def _copy_rows_by_hand(points: list[Point]) -> bytes:
    """The binary COPY stream as the PostgreSQL docs describe it, one struct per row."""
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    rows = [
        struct.pack("!hiiiiiqid", 4, 4, p.device_id, 4, p.metric_id, 8, (p.ts - epoch) // timedelta(microseconds=1), 8, p.value)
        for p in points
    ]
    return b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0) + b"".join(rows) + struct.pack("!h", -1)


def test_point_buffer_filled_message_by_message_is_the_batch_the_writer_stores(writer):
    """The ingest fills a PointBuffer one message at a time; its rows, newest points and days are
    those of the whole batch, and the writer stores it exactly as the same list of points."""
    shared = utc(2026, 3, 7, 23, 59, 59, 999999)  # one message's points share their ts object
    messages = [
        [Point(5, 1, shared, 1.0), Point(5, 2, shared, 2.0)],
        [Point(5, 1, shared + timedelta(microseconds=1), 3.0)],  # next day (UTC)
        [Point(5, 1, utc(1999, 12, 31, 23), -4.0)],  # older: not the newest; a day before 2000
        [Point(6, 1, shared - timedelta(days=3), 5.5), Point(5, 2, shared, 2.0)],  # redelivered: stored once
    ]
    buffer = PointBuffer()
    for message in messages:
        buffer.extend(message)
    flat = [point for message in messages for point in message]
    assert len(buffer) == 6
    assert b"".join(buffer.copy_chunks()) == _copy_rows_by_hand(flat)
    assert buffer.newest == {(5, 1): messages[1][0], (5, 2): messages[3][1], (6, 1): messages[3][0]}
    assert [str(day) for day in buffer.days()] == ["1999-12-31", "2026-03-04", "2026-03-07", "2026-03-08"]

    assert writer.write("alpha", buffer) == WriteResult(inserted=5, duplicates=1)
    assert fetch("SELECT count(*) FROM alpha.telemetry_point_p19991231") == [(1,)]  # partition made for it
    assert fetch("SELECT count(*), sum(count) FROM alpha.telemetry_rollup_1m") == [(5, 5)]

    def ms(ts: datetime) -> datetime:  # Redis keeps latest values to the millisecond
        return ts.replace(microsecond=ts.microsecond // 1000 * 1000)

    assert read_latest("alpha", [5, 6]) == {
        5: {1: (ms(shared + timedelta(microseconds=1)), 3.0), 2: (ms(shared), 2.0)},
        6: {1: (ms(shared - timedelta(days=3)), 5.5)},
    }


def test_point_buffer_across_blocks_is_one_copy_stream(writer):
    """30,000 points in messages of 3 fill blocks of 64 KiB, 128, 256, 512 KiB and 1 MiB: no row
    is cut or lost at a block's end, and the stream stores every point."""
    base = utc(2026, 3, 9, 6)
    messages = [
        [Point(device, metric, base + timedelta(milliseconds=step), step + metric / 10) for metric in (1, 2, 3)]
        for step in range(100) for device in range(200, 300)
    ]  # fmt: skip
    buffer = PointBuffer()
    for message in messages:
        buffer.extend(message)
    flat = [point for message in messages for point in message]
    assert len(buffer.copy_chunks()) > 5  # header, several blocks, trailer
    assert b"".join(buffer.copy_chunks()) == _copy_rows_by_hand(flat)
    assert writer.write("alpha", buffer) == WriteResult(inserted=30_000, duplicates=0)
    assert fetch("SELECT count(*), sum(value) FROM alpha.telemetry_point WHERE device_id BETWEEN 200 AND 299") == [
        (30_000, pytest.approx(sum(point.value for point in flat)))
    ]


def test_a_pending_point_costs_its_copy_row_not_a_python_object():
    """400,000 pending points as Point objects were about 80 MB of an ingest process; buffered as
    COPY rows they are 42 bytes each (plus the unused end of the last block)."""
    ts = [utc(2026, 3, 8, 0, 0, second) for second in range(60)]
    messages = [
        [Point(device, metric, ts[step], float(step * device + metric)) for metric in range(1, 5)]
        for step in range(60) for device in range(1, 501)
    ]  # fmt: skip
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        buffer = PointBuffer()
        for message in messages:
            buffer.extend(message)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(buffer) == 120_000
    assert held / len(buffer) < 60, f"{held / len(buffer):.0f} bytes per pending point"  # as Point objects: over 120
