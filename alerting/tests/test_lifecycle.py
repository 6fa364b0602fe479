"""Alert lifecycle through the services: dedupe, transitions (allowed, idempotent, forbidden),
auto-resolve, notes, timeline, TTA/TTR, races between concurrent transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import IntegrityError, transaction
from django_tenants.utils import schema_context

from alerting import services
from alerting.models import ALERT_TRANSITIONS, Alert, AlertEvent, AlertState, alert_can_move
from alerting.tests.conftest import fire, make_alert
from conftest import audit_entries
from devices.tests.conftest import make_device
from iiot.errors import ServiceConflict

pytestmark = pytest.mark.django_db


def _kinds(alert) -> list[str]:
    with schema_context("alpha"):
        return list(AlertEvent.objects.filter(alert=alert).order_by("at", "id").values_list("kind", flat=True))


def test_repeats_fold_into_the_open_alert(alpha, device):
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    first, created = fire("alpha", rule_id=1, device=device, value=80.0, observed_at=t0)
    assert created and first.count == 1 and first.state == "triggered"
    assert first.device_uid == device.uid and first.fingerprint == f"rule:1|device:{device.pk}"
    second, created = fire("alpha", rule_id=1, device=device, value=85.0, observed_at=t0 + timedelta(seconds=30))
    assert not created and second.pk == first.pk
    third, _ = fire("alpha", rule_id=1, device=device, value=90.0, observed_at=t0 + timedelta(seconds=10))  # late point
    with schema_context("alpha"):
        alert = Alert.objects.get(pk=first.pk)
        assert Alert.objects.for_fingerprint(1, device.pk).open().count() == 1
    assert (alert.count, alert.value) == (3, 90.0)
    assert alert.first_seen_at == t0 and alert.last_seen_at == t0 + timedelta(seconds=30)
    # another rule or another device is another alert
    assert fire("alpha", rule_id=2, device=device)[1]
    assert fire("alpha", rule_id=1, device=make_device("alpha"))[1]
    assert fire("alpha", rule_id=1, device=None)[1]


def test_repeats_log_one_timeline_event_per_interval(alpha, device, settings):
    settings.ALERT_REPEAT_EVENT_INTERVAL_S = 3600
    alert = make_alert("alpha", rule_id=3, device=device)
    for _ in range(5):
        fire("alpha", rule_id=3, device=device)
    assert _kinds(alert) == ["triggered", "repeated"]
    settings.ALERT_REPEAT_EVENT_INTERVAL_S = 0
    fire("alpha", rule_id=3, device=device)
    assert _kinds(alert) == ["triggered", "repeated", "repeated"]


def test_severity_escalates_but_never_drops(alpha, device):
    alert = make_alert("alpha", rule_id=4, device=device, severity="minor")
    fire("alpha", rule_id=4, device=device, severity="critical")
    fire("alpha", rule_id=4, device=device, severity="warning")
    with schema_context("alpha"):
        assert Alert.objects.get(pk=alert.pk).severity == "critical"
        escalation = AlertEvent.objects.get(alert=alert, kind="escalated")
    assert escalation.data["from"] == "minor" and escalation.data["to"] == "critical"


def test_resolved_fingerprint_opens_a_new_alert(alpha, device):
    alert = make_alert("alpha", rule_id=5, device=device)
    with schema_context("alpha"):
        services.resolve_alert(actor=alpha.users["operator"], client=None, alert_id=alert.pk)
    again, created = fire("alpha", rule_id=5, device=device)
    assert created and again.pk != alert.pk


def test_partial_unique_constraint_allows_one_open_alert_per_fingerprint(alpha, device):
    alert = make_alert("alpha", rule_id=6, device=device)
    with schema_context("alpha"), pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.create(
            fingerprint=alert.fingerprint, severity="minor", first_seen_at=alert.first_seen_at, last_seen_at=alert.last_seen_at
        )


def test_state_timestamps_are_tied_to_the_state_in_the_database(alpha, device):
    alert = make_alert("alpha", rule_id=7, device=device)
    with schema_context("alpha"):
        with pytest.raises(IntegrityError), transaction.atomic():
            Alert.objects.filter(pk=alert.pk).update(state="acknowledged")  # no acknowledged_at
        with pytest.raises(IntegrityError), transaction.atomic():
            Alert.objects.filter(pk=alert.pk).update(auto_resolved=True)  # not resolved


def test_transition_table():
    assert alert_can_move("triggered", "acknowledged") and alert_can_move("triggered", "resolved")
    assert alert_can_move("acknowledged", "resolved")
    assert not alert_can_move("acknowledged", "triggered") and not alert_can_move("resolved", "acknowledged")
    assert ALERT_TRANSITIONS["resolved"] == frozenset()


def test_acknowledge_then_resolve_with_timeline_tta_ttr_and_audit(alpha, device):
    operator = alpha.users["operator"]
    alert = make_alert("alpha", rule_id=8, device=device, observed_at=datetime.now(UTC) - timedelta(seconds=90))
    with schema_context("alpha"):
        acked, changed = services.acknowledge_alert(actor=operator, client=None, alert_id=alert.pk, note="on it")
        assert changed and acked.state == AlertState.ACKNOWLEDGED and acked.acknowledged_by == operator
        again, changed = services.acknowledge_alert(actor=operator, client=None, alert_id=alert.pk)
        assert not changed and again.acknowledged_at == acked.acknowledged_at  # idempotent
        services.add_note(actor=operator, client=None, alert_id=alert.pk, text="valve 3 replaced")
        resolved, changed = services.resolve_alert(actor=operator, client=None, alert_id=alert.pk)
        assert changed and resolved.resolved_by == operator and not resolved.auto_resolved
        assert services.resolve_alert(actor=operator, client=None, alert_id=alert.pk)[1] is False
        events = list(AlertEvent.objects.filter(alert=alert).order_by("at", "id"))
    assert [e.kind for e in events] == ["triggered", "acknowledged", "note", "resolved"]
    assert events[1].actor_email == operator.email and events[1].text == "on it"
    assert events[0].actor_email == ""  # raised by the system
    assert 89 <= resolved.time_to_acknowledge_s <= 120
    assert resolved.time_to_resolve_s >= resolved.time_to_acknowledge_s
    assert [e.action for e in audit_entries("alpha", target_type="alerting.alert", target_id=str(alert.pk))] == [
        "alert.acknowledge",
        "alert.note",
        "alert.resolve",
    ]


def test_resolve_straight_from_triggered(alpha, device):
    alert = make_alert("alpha", rule_id=9, device=device)
    with schema_context("alpha"):
        resolved, changed = services.resolve_alert(actor=alpha.users["operator"], client=None, alert_id=alert.pk)
    assert changed and resolved.acknowledged_at is None and resolved.time_to_acknowledge_s is None
    assert resolved.time_to_resolve_s is not None


@pytest.mark.parametrize("auto", [False, True])
def test_acknowledging_a_resolved_alert_is_refused_with_its_state(alpha, device, auto):
    alert = make_alert("alpha", rule_id=10, device=device)
    with schema_context("alpha"):
        if auto:
            services.clear_alert(rule_id=10, device_id=device.pk, observed_at=datetime.now(UTC))
        else:
            services.resolve_alert(actor=alpha.users["operator"], client=None, alert_id=alert.pk)
        with pytest.raises(ServiceConflict) as refused:
            services.acknowledge_alert(actor=alpha.users["operator"], client=None, alert_id=alert.pk)
    assert refused.value.code == "alert_state_conflict" and refused.value.context["state"] == "resolved"
    assert ("auto-resolved" in refused.value.message) is auto


def test_clear_auto_resolves_and_records_it(alpha, device):
    alert = make_alert("alpha", rule_id=11, device=device)
    with schema_context("alpha"):
        services.acknowledge_alert(actor=alpha.users["operator"], client=None, alert_id=alert.pk)
        cleared_at = datetime.now(UTC)
        cleared = services.clear_alert(rule_id=11, device_id=device.pk, observed_at=cleared_at, value=70.0)
        assert cleared.pk == alert.pk and cleared.state == "resolved" and cleared.auto_resolved
        assert cleared.resolved_at == cleared_at and cleared.resolved_by is None
        assert services.clear_alert(rule_id=11, device_id=device.pk, observed_at=cleared_at) is None  # nothing open
        event = AlertEvent.objects.get(alert=alert, kind="auto_resolved")
    assert event.data == {"value": 70.0, "from": "acknowledged"} and event.actor_email == ""
    assert _kinds(alert) == ["triggered", "acknowledged", "auto_resolved"]


def test_notes_need_text_and_work_in_every_state(alpha, device):
    from django.core.exceptions import ValidationError

    alert = make_alert("alpha", rule_id=12, device=device)
    with schema_context("alpha"):
        with pytest.raises(ValidationError):
            services.add_note(actor=alpha.users["operator"], client=None, alert_id=alert.pk, text="   ")
        services.resolve_alert(actor=alpha.users["operator"], client=None, alert_id=alert.pk)
        note = services.add_note(actor=alpha.users["operator"], client=None, alert_id=alert.pk, text="post-mortem: sensor drift")
    assert note.kind == "note"


def test_raise_alert_validates_its_input(alpha):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        fire("alpha", severity="apocalyptic")
    with pytest.raises(ValidationError):
        fire("alpha", observed_at=datetime.now())  # naive


def test_queryset_vocabulary(alpha, device):
    open_alert = make_alert("alpha", rule_id=13, device=device)
    done = make_alert("alpha", rule_id=14, device=device)
    with schema_context("alpha"):
        services.resolve_alert(actor=None, client=None, alert_id=done.pk)
        assert set(Alert.objects.filter(rule_id__in=[13, 14]).open().values_list("pk", flat=True)) == {open_alert.pk}
        assert set(Alert.objects.filter(rule_id__in=[13, 14]).resolved().values_list("pk", flat=True)) == {done.pk}
        assert Alert.objects.filter(pk=open_alert.pk).unacknowledged().exists()
        future = datetime.now(UTC) + timedelta(hours=1)
        assert not Alert.objects.filter(pk=open_alert.pk).seen_between(future, None).exists()
        assert Alert.objects.filter(pk=open_alert.pk).seen_between(None, future).exists()
