"""End to end: a device publishes over MQTT through the real broker and a real `manage.py ingest`
subprocess (with the rules hook from settings.INGEST_STREAMING_HOOKS); the threshold rule fires
and the alert is stored, then auto-resolved when the value falls back. A rule created while the
ingest runs is picked up through the Redis announcement."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from django_tenants.utils import schema_context

from iiot.testing.mosquitto import mosquitto_fixture
from telemetry.tests.test_ingest_support import IngestProcess, Publisher, create_plant, delete_plant, fetch, wait_for

rules_broker = mosquitto_fixture("module")

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def plant(rules_broker, platform, django_db_blocker):
    with django_db_blocker.unblock():
        created = create_plant("alpha", 2, prefix=f"rul{int(time.time()) % 100000}")
    yield created
    with django_db_blocker.unblock():
        from alerting.models import Alert
        from rules.models import Rule

        with schema_context("alpha"):
            Rule.objects.filter(target_device_id__in=[d.pk for d in created.devices]).delete()
            Alert.objects.filter(device_id__in=[d.pk for d in created.devices]).delete()
        delete_plant(created)


def _committed(func):
    """Run `func` in a thread of its own: its own connection, autocommit (outside the test's transaction)."""
    import threading

    from django.db import connection

    result: list = []
    errors: list = []

    def target() -> None:
        try:
            result.append(func())
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]
    return result[0] if result else None


def _create_rule(**fields):
    from devices.models import Device
    from rules import services

    def create():
        with schema_context("alpha"):
            fields["target_device"] = Device.objects.get(pk=fields["target_device"])
            return services.create_rule(actor=None, client=None, **fields).pk

    return _committed(create)


def _alerts(device_id: int) -> list[tuple]:
    return fetch("SELECT state, value, auto_resolved, count FROM alpha.alerting_alert WHERE device_id = %s ORDER BY id", device_id)


@pytest.mark.django_db
def test_published_point_fires_a_stored_alert_and_clears_it(rules_broker, plant, tmp_path, django_db_blocker):
    device, other = plant.devices
    _create_rule(name=f"hot {device.uid}", type="threshold", severity="critical", target_kind="device", target_device=device.pk,
                 condition={"metric": "temperature", "op": "gt", "value": 100, "clear_value": 90})  # fmt: skip
    ingest = IngestProcess(rules_broker, tmp_path)
    ingest.start()
    publisher = Publisher(rules_broker, device)
    try:
        base = datetime.now(UTC) - timedelta(minutes=5)
        ms = lambda seconds: int((base + timedelta(seconds=seconds)).timestamp() * 1000)  # noqa: E731
        # the index loads at start, in the background: publish until a hot point is judged (bounded)
        sent = iter(range(100))

        def hot() -> bool:
            publisher.publish({"ts": ms(next(sent) / 100), "values": {"temperature": 150.0}}).wait_for_publish(10)
            return bool(_alerts(device.pk))

        assert wait_for(hot, 20, interval=0.3), "\n".join(line for line in ingest.log().splitlines() if "rule" in line)[-3000:]
        state, value, auto, count = _alerts(device.pk)[0]
        assert (state, value, auto) == ("triggered", 150.0, False) and count >= 1
        # in the hysteresis band: nothing changes; below the clear value: auto-resolved
        publisher.publish({"ts": ms(1), "values": {"temperature": 95.0}}).wait_for_publish(10)
        publisher.publish({"ts": ms(2), "values": {"temperature": 80.0}}).wait_for_publish(10)
        assert wait_for(lambda: _alerts(device.pk)[0][0] == "resolved", 20), _alerts(device.pk)
        assert [row[:3] for row in _alerts(device.pk)] == [("resolved", 150.0, True)]

        # a rule created now reaches the running ingest through Redis pub/sub
        _create_rule(name=f"cold {other.uid}", type="threshold", severity="minor", target_kind="device", target_device=other.pk,
                     condition={"metric": "temperature", "op": "lt", "value": 0})  # fmt: skip
        second = Publisher(rules_broker, other)
        try:
            def fired() -> bool:
                second.publish({"values": {"temperature": -5.0}}).wait_for_publish(10)
                return bool(_alerts(other.pk))

            assert wait_for(fired, 20, interval=0.5), ingest.log()[-3000:]
            assert _alerts(other.pk)[0][0] == "triggered"
        finally:
            second.close()
    finally:
        publisher.close()
        ingest.terminate()
