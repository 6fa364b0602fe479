"""Races between transitions on committed rows: each thread has its own connection (no test
transaction here, so the threads see the rows; the fixture removes them afterwards)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

import pytest
from django.db import connection
from django_tenants.utils import schema_context

from alerting import services
from alerting.models import Alert, AlertEvent
from alerting.tests.conftest import make_alert
from devices.tests.conftest import make_device, make_profile
from iiot.errors import ServiceConflict


@pytest.fixture
def committed(platform, django_db_blocker):
    """Rows committed for real (threads use their own connections); removed afterwards."""
    made: list[Alert] = []
    devices: list = []

    def alert(**kwargs) -> Alert:
        with django_db_blocker.unblock():
            if not devices:
                tag = uuid.uuid4().hex[:8]
                devices.append(make_device("alpha", uid=f"race-{tag}", profile=make_profile("alpha", name=f"race-{tag}")))
            created = make_alert("alpha", device=devices[0], **kwargs)
        made.append(created)
        return created

    yield alert
    with django_db_blocker.unblock(), schema_context("alpha"):
        Alert.objects.filter(pk__in=[a.pk for a in made]).delete()  # (audit entries are append-only: they stay)
        for device in devices:
            device.delete()
            device.profile.delete()


def _race(django_db_blocker, *calls) -> list:
    """Run the calls at once, each in its own thread and connection; their results or exceptions."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(index, call) -> None:
        with django_db_blocker.unblock():
            try:
                with schema_context("alpha"):
                    barrier.wait(timeout=10)
                    results[index] = call()
            except Exception as exc:  # noqa: BLE001 (the test inspects it)
                results[index] = exc
            finally:
                connection.close()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_two_concurrent_acknowledges_record_one_event(platform, committed, django_db_blocker):
    alpha = platform["alpha"]
    alert = committed(rule_id=101)
    users = [alpha.users["operator"], alpha.users["admin"]]
    results = _race(
        django_db_blocker,
        *[lambda user=user: services.acknowledge_alert(actor=user, client=None, alert_id=alert.pk) for user in users],
    )
    assert all(isinstance(result, tuple) for result in results), results
    assert sorted(changed for _, changed in results) == [False, True]
    with django_db_blocker.unblock(), schema_context("alpha"):
        assert AlertEvent.objects.filter(alert_id=alert.pk, kind="acknowledged").count() == 1
        assert Alert.objects.get(pk=alert.pk).state == "acknowledged"


def test_acknowledge_racing_auto_resolve_ends_resolved_or_refused(platform, committed, django_db_blocker):
    alert = committed(rule_id=102)
    user = platform["alpha"].users["operator"]
    results = _race(
        django_db_blocker,
        lambda: services.acknowledge_alert(actor=user, client=None, alert_id=alert.pk),
        lambda: services.clear_alert(rule_id=102, device_id=alert.device_id, observed_at=datetime.now(UTC)),
    )
    ack, cleared = results
    assert isinstance(cleared, Alert) and cleared.state == "resolved"
    assert isinstance(ack, tuple) or (isinstance(ack, ServiceConflict) and ack.context["state"] == "resolved")
    with django_db_blocker.unblock(), schema_context("alpha"):
        assert Alert.objects.get(pk=alert.pk).state == "resolved"
        assert AlertEvent.objects.filter(alert_id=alert.pk, kind="auto_resolved").count() == 1


def test_concurrent_first_firings_open_one_alert(platform, committed, django_db_blocker):
    first = committed(rule_id=103)  # gives us a committed device
    with django_db_blocker.unblock(), schema_context("alpha"):
        services.resolve_alert(actor=None, client=None, alert_id=first.pk)
    device_id = first.device_id
    calls = [
        lambda: services.raise_alert(
            rule_id=104,
            rule_name="race",
            device_id=device_id,
            severity="minor",
            message="m",
            value=1.0,
            observed_at=datetime.now(UTC),
        )
        for _ in range(4)
    ]
    results = _race(django_db_blocker, *calls)
    assert all(isinstance(result, tuple) for result in results), results
    pks = {alert.pk for alert, _ in results}
    try:
        assert len(pks) == 1 and sorted(created for _, created in results) == [False, False, False, True]
        with django_db_blocker.unblock(), schema_context("alpha"):
            assert Alert.objects.get(pk=pks.pop()).count == 4
    finally:
        with django_db_blocker.unblock(), schema_context("alpha"):
            Alert.objects.filter(rule_id=104, device_id=device_id).delete()
