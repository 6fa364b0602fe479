"""End to end through the real broker (shipped dynsec config), a real `manage.py ingest`
subprocess, PostgreSQL and Redis: storage, presence, attributes, rejections; no loss and no
duplicates across an ingest SIGKILL, database connection kills and a broker restart."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django_tenants.utils import schema_context

from iiot.testing.mosquitto import mosquitto_fixture
from telemetry.tests.test_ingest_support import (
    IngestProcess,
    Publisher,
    count_points,
    create_plant,
    delete_plant,
    fetch,
    rollup_count,
    run_ingest_command,
    start_ingest_command,
    terminate_writers,
    wait_for,
)

# A broker of this module's own (settings point at it while the module runs), so persistent
# ingest sessions left by these tests never share a subscription group with other tests.
ingest_broker = mosquitto_fixture("module")

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def plant(ingest_broker, platform, django_db_blocker):
    with django_db_blocker.unblock():
        created = create_plant("alpha", 4)
    yield created
    with django_db_blocker.unblock():
        delete_plant(created)


@pytest.fixture
def ingest(ingest_broker, plant, tmp_path):
    processes: list[IngestProcess] = []

    def start(workers: int = 1, **env) -> IngestProcess:
        process = IngestProcess(ingest_broker, tmp_path, processes=workers, **env)
        process.start()
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()


def _base_ms() -> int:
    # Unique, recent timestamps per test run (the store dedupes on device, metric, ts).
    return int((datetime.now(UTC) - timedelta(minutes=30)).timestamp() * 1000) // 1000 * 1000


def _stream(publishers: list[Publisher], count: int, base_ms: int, *, qos: int = 1, pace: float = 0.0, stop=None) -> int:
    """`count` messages per device, 4 metrics each, 1 ms apart per device; waits for every PUBACK."""
    infos = []
    for i in range(count):
        if stop is not None and stop.is_set():
            break
        for publisher in publishers:
            body = {"ts": base_ms + i, "values": {"temperature": 20 + (i % 50) / 10, "humidity": 40.0, "pressure": 1.2, "vibration": i % 7}}
            infos.append(publisher.publish(body, qos=qos))
        if pace and i % 100 == 99:
            time.sleep(pace)
    for info in infos:
        if qos:
            info.wait_for_publish(60)
    return len(infos)


def _publishers(broker, plant, n: int | None = None) -> list[Publisher]:
    return [Publisher(broker, device) for device in plant.devices[: n or len(plant.devices)]]


def _close(publishers):
    for publisher in publishers:
        publisher.close()


@pytest.mark.django_db
def test_end_to_end_points_latest_rollups_presence_attributes_rejections(ingest_broker, plant, ingest):
    from devices.models import AttributeScope, Device, DeviceAttribute
    from telemetry.rejections import read_rejections
    from telemetry.storage import read_latest

    ingest()
    device = plant.devices[0]
    publisher = Publisher(ingest_broker, device, will=b'{"status": "offline"}')
    ids = plant.metric_ids
    base = _base_ms()
    iso = datetime.fromtimestamp(base / 1000 + 2, UTC).replace(microsecond=0)
    before = datetime.now(UTC)
    infos = [
        publisher.publish(b"online", kind="status"),
        publisher.publish({"firmware": "1.4.2", "serial": "X-1"}, kind="attributes"),
        publisher.publish({"ts": base, "values": {"temperature": 21.5, "humidity": 40}}),
        publisher.publish({"ts": iso.isoformat(), "values": {"temperature": 23.0}}),
        publisher.publish([{"ts": base + 1000, "values": {"pressure": 1.5}}, {"ts": base + 1500, "values": {"pressure": 1.7}}]),
        publisher.publish({"vibration": 3.25}),  # flat: server time
        publisher.publish({"ts": base + 3000, "values": {"temperature": 999, "humidity": "wet", "nope": 1, "pressure": 2.0}}),
        publisher.publish(b"not json"),
    ]
    for info in infos:
        info.wait_for_publish(10)
    assert wait_for(lambda: count_points("alpha", [device.pk]) == 7, 20), count_points("alpha", [device.pk])

    rows = fetch('SELECT metric_id, ts, value FROM alpha.telemetry_point WHERE device_id = %s ORDER BY ts, metric_id', device.pk)
    at = lambda ms: datetime.fromtimestamp(ms / 1000, UTC)  # noqa: E731
    expected = sorted(
        [
            (ids["temperature"], at(base), 21.5),
            (ids["humidity"], at(base), 40.0),
            (ids["pressure"], at(base + 1000), 1.5),
            (ids["pressure"], at(base + 1500), 1.7),
            (ids["temperature"], iso, 23.0),
            (ids["pressure"], at(base + 3000), 2.0),
        ],
        key=lambda r: (r[1], r[0]),
    )
    flat = [r for r in rows if r[0] == ids["vibration"]]
    assert [r for r in rows if r[0] != ids["vibration"]] == expected
    assert len(flat) == 1 and flat[0][2] == 3.25 and before <= flat[0][1] <= datetime.now(UTC)

    latest = read_latest("alpha", [device.pk])[device.pk]
    assert latest[ids["pressure"]] == (at(base + 3000), 2.0)
    assert latest[ids["temperature"]] == (iso, 23.0)
    rollups = fetch(
        "SELECT count, min, max FROM alpha.telemetry_rollup_1m WHERE device_id = %s AND metric_id = %s ORDER BY bucket", device.pk, ids["pressure"]
    )
    assert sum(r[0] for r in rollups) == 3 and min(r[1] for r in rollups) == 1.5 and max(r[2] for r in rollups) == 2.0

    def presence():
        with schema_context("alpha"):
            row = Device.objects.filter(pk=device.pk).values("status", "last_seen_at").get()
            attrs = dict(DeviceAttribute.objects.filter(device_id=device.pk, scope=AttributeScope.CLIENT).values_list("key", "value"))
        return row["status"] == "online" and row["last_seen_at"] is not None and attrs == {"firmware": "1.4.2", "serial": "X-1"}

    assert wait_for(presence, 10)

    summary = wait_for(lambda: read_rejections("alpha", device=device.uid).totals or None, 10)
    assert summary == {"out_of_range": 1, "invalid_value": 1, "unknown_metric": 1, "invalid_json": 1}
    letters = read_rejections("alpha", device=device.uid, reason="invalid_json").dead_letters
    assert letters and letters[0]["topic"] == device.topic() and letters[0]["excerpt"] == "not json"

    # The MQTT will: a dropped connection marks the device offline.
    publisher.client._sock.close()  # no DISCONNECT: the broker publishes the will
    publisher.client.loop_stop()

    def offline():
        with schema_context("alpha"):
            return Device.objects.get(pk=device.pk).status == "offline"

    assert wait_for(offline, 15)


@pytest.mark.django_db
def test_ingest_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(ingest_broker, plant, ingest):
    process = ingest()
    publishers = _publishers(ingest_broker, plant)
    ids = [d.pk for d in plant.devices]
    before = count_points("alpha", ids)
    base, per_device = _base_ms() + 100_000, 5000
    sent = []
    thread = threading.Thread(target=lambda: sent.append(_stream(publishers, per_device, base, pace=0.01)))
    thread.start()
    try:
        assert wait_for(lambda: count_points("alpha", ids) - before > 4000, 60)
        process.kill()  # SIGKILL: whatever was received and not committed was never acknowledged
        killed_at = count_points("alpha", ids) - before
        time.sleep(1.0)
        process.start()
        thread.join(120)
    finally:
        _close(publishers)
    expected = sent[0] * 4
    assert expected == 4 * per_device * len(publishers)
    assert killed_at < expected, "the stream was over before the kill: nothing was tested"
    assert wait_for(lambda: count_points("alpha", ids) - before >= expected, 90), (count_points("alpha", ids) - before, expected)
    time.sleep(1.0)
    assert count_points("alpha", ids) - before == expected
    assert wait_for(lambda: rollup_count("alpha", ids) == count_points("alpha", ids), 10)  # rollups count each point once


@pytest.mark.django_db
def test_database_connection_killed_under_load_is_retried_without_loss(ingest_broker, plant, ingest):
    process = ingest()
    publishers = _publishers(ingest_broker, plant, 2)
    ids = [d.pk for d in plant.devices[:2]]
    before = count_points("alpha", ids)
    base, per_device = _base_ms() + 200_000, 6000
    sent = []
    thread = threading.Thread(target=lambda: sent.append(_stream(publishers, per_device, base, pace=0.02)))
    thread.start()
    killed = 0
    try:
        assert wait_for(lambda: count_points("alpha", ids) - before > 2000, 60)
        for _ in range(3):
            killed += terminate_writers()
            time.sleep(0.7)
        thread.join(120)
    finally:
        _close(publishers)
    expected = sent[0] * 4
    assert killed >= 1
    assert wait_for(lambda: count_points("alpha", ids) - before >= expected, 90), (count_points("alpha", ids) - before, expected)
    time.sleep(1.0)
    assert count_points("alpha", ids) - before == expected
    assert wait_for(lambda: rollup_count("alpha", ids) == count_points("alpha", ids), 10)
    assert "batch write failed; retrying" in process.log()


@pytest.mark.django_db
def test_broker_graceful_restart_loses_and_duplicates_nothing(ingest_broker, plant, ingest):
    process = ingest()
    ids = [d.pk for d in plant.devices]
    before = count_points("alpha", ids)
    base, per_device = _base_ms() + 300_000, 2000
    publishers = _publishers(ingest_broker, plant)
    sent = _stream(publishers, per_device, base)
    _close(publishers)
    ingest_broker.restart()  # SIGTERM: persistence keeps the ingest session and its queued messages
    assert wait_for(lambda: "ingest subscribed" in process.log().split("MQTT connection lost")[-1], 60), process.log()[-2000:]
    publishers = _publishers(ingest_broker, plant)
    sent += _stream(publishers, per_device, base + per_device)
    _close(publishers)
    expected = sent * 4
    assert wait_for(lambda: count_points("alpha", ids) - before >= expected, 90), (
        count_points("alpha", ids) - before,
        expected,
        fetch("SELECT device_id, count(*), min(ts), max(ts) FROM alpha.telemetry_point WHERE device_id = ANY(%s) GROUP BY 1", ids),
        base,
    )
    time.sleep(1.0)
    assert count_points("alpha", ids) - before == expected
    assert rollup_count("alpha", ids) == count_points("alpha", ids)


@pytest.mark.django_db
def test_qos0_and_graceful_shutdown_acknowledges_what_committed(ingest_broker, plant, ingest):
    process = ingest()
    ids = [plant.devices[0].pk]
    before = count_points("alpha", ids)
    publishers = _publishers(ingest_broker, plant, 1)
    _stream(publishers, 500, _base_ms() + 400_000, qos=0)
    assert wait_for(lambda: count_points("alpha", ids) - before == 2000, 30)
    sent = _stream(publishers, 1000, _base_ms() + 500_000)
    _close(publishers)
    assert process.terminate() == 0  # SIGTERM: flush, acknowledge, disconnect
    assert "ingest stopped" in process.log()
    process.start()  # anything unacknowledged is redelivered; nothing is counted twice
    assert wait_for(lambda: count_points("alpha", ids) - before >= 2000 + sent * 4, 30)
    time.sleep(0.5)
    assert count_points("alpha", ids) - before == 2000 + sent * 4


@pytest.mark.django_db
def test_stop_takes_no_new_messages_from_a_backlog(ingest_broker, plant, ingest):
    """SIGTERM with a backlog waiting at the broker: the ingest stops reading, writes and
    acknowledges what it took, and exits; it does not drain the backlog first (a stream that never
    lets the last batch be the last one used to hold the stop until its timeout). The rest is
    redelivered to the next session: nothing lost, nothing stored twice."""
    # Few pending points allowed: the ingest reads at the pace it writes, the backlog stays queued.
    process = ingest(INGEST_MAX_PENDING_POINTS="2000")
    assert process.terminate() == 0  # the session (and its subscription) stays at the broker
    ids = [d.pk for d in plant.devices[:2]]
    before = count_points("alpha", ids)
    publishers = _publishers(ingest_broker, plant, 2)
    sent = _stream(publishers, 15_000, _base_ms() + 700_000)  # queued for the ingest's session
    _close(publishers)
    process.start(wait=False)  # the broker hands the session's backlog over before the SUBACK
    assert wait_for(lambda: count_points("alpha", ids) - before > 0, 30, interval=0.05)
    assert process.terminate(timeout=30) == 0
    stopped_with = count_points("alpha", ids) - before
    log = process.log()
    assert "ingest stopped" in log and "not written in time" not in log
    assert stopped_with < sent * 4, "the stop drained the whole backlog"
    process.start()
    assert wait_for(lambda: count_points("alpha", ids) - before >= sent * 4, 60)
    time.sleep(0.5)
    assert count_points("alpha", ids) - before == sent * 4


@pytest.mark.django_db
def test_two_processes_share_the_stream_and_stop_together(ingest_broker, plant, ingest):
    """`ingest --processes 2`: this process is instance 0 and spawns instance 1; the broker splits
    the shared subscription between them; SIGTERM stops both after their last commit."""
    process = ingest(workers=2)
    log = process.log()
    assert log.count("ingest subscribed") == 2
    children = _children(process.process.pid)
    assert len(children) == 1  # instance 1, and no third process (multiprocessing's resource tracker was one: 12 MB)
    ids = [d.pk for d in plant.devices]
    before = count_points("alpha", ids)
    publishers = _publishers(ingest_broker, plant)
    sent = _stream(publishers, 500, _base_ms() + 600_000)
    _close(publishers)
    assert wait_for(lambda: count_points("alpha", ids) - before >= sent * 4, 30)
    assert process.terminate() == 0
    assert process.log().count("ingest stopped") == 2
    # instance 1 was waited for before the parent exited
    assert wait_for(lambda: not [pid for pid in children if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)], 10)
    assert count_points("alpha", ids) - before == sent * 4


@pytest.mark.django_db
def test_a_killed_parent_leaves_no_worker_behind(ingest_broker, plant, ingest):
    """SIGKILL of `ingest --processes 2`: instance 1 gets SIGTERM from the kernel (PR_SET_PDEATHSIG)
    and stops, instead of living on as an orphan that holds instance 1's MQTT session and would
    fight the next start's instance 1 for it."""
    process = ingest(workers=2)
    children = _children(process.process.pid)
    assert children
    process.kill()
    assert wait_for(lambda: not [pid for pid in children if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)], 30)


@pytest.mark.django_db
def test_retiring_a_stopped_instance_stores_its_share_and_ends_its_session(ingest_broker, plant, ingest):
    """Scaling down from two processes to one: Mosquitto keeps queueing a share of the shared
    subscription for instance 1's offline persistent session. `ingest --retire 1` stores what the
    session holds, acknowledges it and deletes the session: later messages all go to instance 0,
    and retiring again finds no session."""
    two = ingest(workers=2)
    assert two.terminate() == 0  # both persistent sessions stay at the broker
    ingest()  # instance 0 alone
    ids = [d.pk for d in plant.devices]
    before = count_points("alpha", ids)
    base = _base_ms() + 800_000
    publishers = _publishers(ingest_broker, plant)
    sent = _stream(publishers, 300, base)
    time.sleep(1.5)
    stranded = sent * 4 - (count_points("alpha", ids) - before)
    assert stranded >= sent, f"instance 1's offline session got no share ({stranded} points missing of {sent * 4})"

    result = run_ingest_command(ingest_broker, "--retire", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ingest-" in result.stdout and "-1: session emptied and deleted" in result.stdout, result.stdout + result.stderr
    assert count_points("alpha", ids) - before == sent * 4  # stored before the command returned

    # The session is gone with its membership of the group: instance 0 now gets every message.
    more = _stream(publishers, 200, base + 10_000)
    _close(publishers)
    assert wait_for(lambda: count_points("alpha", ids) - before >= (sent + more) * 4, 30), (count_points("alpha", ids) - before, (sent + more) * 4)
    time.sleep(0.5)
    assert count_points("alpha", ids) - before == (sent + more) * 4

    again = run_ingest_command(ingest_broker, "--retire", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "-1: no session at the broker, nothing to retire" in again.stdout, again.stdout + again.stderr


@pytest.mark.django_db
def test_a_retire_stopped_halfway_leaves_the_rest_for_the_next_retire(ingest_broker, plant, ingest):
    """SIGTERM during `--retire 1`: it writes and acknowledges what it took, exits 1 and keeps the
    session (unsubscribed) with the rest; a second `--retire 1` stores that rest and ends the
    session. Nothing lost, nothing stored twice."""
    two = ingest(workers=2)
    assert two.terminate() == 0
    ingest()  # instance 0 alone: instance 1's share queues in its session
    ids = [d.pk for d in plant.devices[:2]]
    before = count_points("alpha", ids)
    publishers = _publishers(ingest_broker, plant, 2)
    sent = _stream(publishers, 10_000, _base_ms() + 900_000)
    _close(publishers)
    time.sleep(1.0)
    assert count_points("alpha", ids) - before < sent * 4
    # Slowed down (few unwritten points allowed, long flushes) so that the stop lands halfway.
    retiring = start_ingest_command(ingest_broker, "--retire", "1", INGEST_MAX_PENDING_POINTS="2000", INGEST_FLUSH_MS="300")
    try:
        progressed = count_points("alpha", ids)
        assert wait_for(lambda: count_points("alpha", ids) > progressed, 30, interval=0.05)
        retiring.send_signal(signal.SIGTERM)
        _stdout, stderr = retiring.communicate(timeout=60)
    finally:
        if retiring.poll() is None:
            retiring.kill()
    assert retiring.returncode == 1 and "stopped before its session was emptied" in stderr, stderr[-3000:]
    assert count_points("alpha", ids) - before < sent * 4, "the stop emptied the session anyway: the test proves nothing"
    again = run_ingest_command(ingest_broker, "--retire", "1")
    assert again.returncode == 0 and "-1: session emptied and deleted" in again.stdout, again.stdout + again.stderr[-3000:]
    time.sleep(0.5)
    assert count_points("alpha", ids) - before == sent * 4


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.fixture(scope="module")
def load_plant(ingest_broker, platform, django_db_blocker):
    """Devices of the load generator test's own (committed, outside any test transaction, so the
    ingest subprocess sees them): no late redelivery from another test counts there."""
    with django_db_blocker.unblock():
        created = create_plant("alpha", 4)
    yield created
    with django_db_blocker.unblock():
        delete_plant(created)


@pytest.mark.django_db
def test_bench_load_generator_offers_its_rate_and_counts_every_acknowledgement(ingest_broker, load_plant, ingest):
    """bench/loadgen.py (make bench's publisher) against the shipped broker and a real ingest:
    it offers the asked rate, in bursts per device, and counts each PUBACK exactly once; every
    message it counts as acknowledged is stored."""
    from bench import loadgen

    own = load_plant
    # Two processes: the broker keeps giving a share of the shared subscription to the persistent
    # session of instance 1 (left by the two-process test) even while it is offline.
    process = ingest(workers=2)
    ids = [device.pk for device in own.devices]
    devices = [loadgen.Device(uid=d.uid, username=d.username, password=d.secret, topic=d.topic()) for d in own.devices]
    # 4 devices at 100 msg/s each: bursts of 10 messages per device every 100 ms.
    stats = asyncio.run(loadgen.run_load(devices, ingest_broker.host, ingest_broker.port, qos=1, duration_s=2.0, rate_msgs_per_s=400))
    assert stats.connect_failures == 0, stats.errors
    assert 720 <= stats.sent <= 820, stats.sent
    assert stats.acked == stats.sent
    assert wait_for(lambda: count_points("alpha", ids) == stats.sent * 4, 30), (count_points("alpha", ids), stats.sent * 4, process.log()[-6000:])
    time.sleep(0.3)
    assert count_points("alpha", ids) == stats.sent * 4
