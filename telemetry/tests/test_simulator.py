"""The simulator: its devices, credentials kept locally (0600, rotated when lost), telemetry
through the real broker and ingest, and a command answered end to end."""

from __future__ import annotations

import random
import subprocess
import sys
import time
import uuid

import pytest
from django_tenants.utils import schema_context

from telemetry.management.commands.simulate import RANGES, PlantSignal, ensure_plant, load_secrets, secrets_path
from telemetry.tests.test_ingest_support import ROOT, IngestProcess, count_points, ingest_env, wait_for

pytestmark = pytest.mark.timeout(180)


def _cleanup(prefix: str) -> None:
    from devices.models import Device, DeviceProfile

    with schema_context("alpha"):
        Device.objects.filter(uid__startswith=f"{prefix}-").delete()
        DeviceProfile.objects.filter(name="Plant sensor", devices__isnull=True).delete()


def test_signals_stay_in_range_and_move_together():
    signal = PlantSignal(rng=random.Random(1), load=0.5)
    samples = [s for s in (signal.sample(1_767_225_600 + i) for i in range(5000)) if s is not None]
    assert len(samples) > 3000
    for sample in samples:
        for name, value in sample.items():
            low, high = RANGES[name]
            assert low <= value <= high
    currents = [s["motor_current"] for s in samples]
    vibrations = [s["vibration"] for s in samples]
    mean_c, mean_v = sum(currents) / len(currents), sum(vibrations) / len(vibrations)
    covariance = sum((c - mean_c) * (v - mean_v) for c, v in zip(currents, vibrations, strict=True))
    assert covariance > 0  # current and vibration rise together


@pytest.mark.django_db
def test_plant_devices_and_secrets_file_rotation(alpha, tmp_path):
    from devices.models import Device, DeviceCredential

    prefix = f"simu{uuid.uuid4().hex[:4]}"
    path = secrets_path(tmp_path, "alpha")
    first = ensure_plant("alpha", 3, prefix, path)
    assert sorted(first) == [f"{prefix}-0001", f"{prefix}-0002", f"{prefix}-0003"]
    assert path.stat().st_mode & 0o777 == 0o600 and load_secrets(path) == first
    again = ensure_plant("alpha", 3, prefix, path)
    assert again == first  # reused, nothing rotated
    lost = dict(first)
    del lost[f"{prefix}-0002"]
    path.write_text(__import__("json").dumps(lost))
    third = ensure_plant("alpha", 3, prefix, path)
    assert third[f"{prefix}-0002"] != first[f"{prefix}-0002"] and third[f"{prefix}-0001"] == first[f"{prefix}-0001"]
    with schema_context("alpha"):
        device = Device.objects.get(uid=f"{prefix}-0002")
        assert DeviceCredential.objects.filter(device=device).count() == 2
        assert device.profile.name == "Plant sensor"
        assert set(device.profile.metrics.values_list("metric__name", flat=True)) == set(RANGES)


def test_simulator_publishes_and_answers_a_command(mqtt_broker, platform, django_db_blocker, tmp_path):
    # No test transaction: the simulator and ingest subprocesses must see what the test writes.
    with django_db_blocker.unblock():
        _simulator_answers_a_command(mqtt_broker, tmp_path)


def _simulator_answers_a_command(mqtt_broker, tmp_path):
    from devices import services
    from devices.models import Device, DeviceCommand

    prefix = f"simt{uuid.uuid4().hex[:4]}"
    ingest = IngestProcess(mqtt_broker, tmp_path)
    ingest.start()
    simulator = subprocess.Popen(
        [sys.executable, "manage.py", "simulate", "--tenant", "alpha", "--devices", "2", "--rate", "4", "--prefix", prefix,
         "--duration", "40", "--state-dir", str(tmp_path), "--seed", "7"],
        cwd=ROOT, env=ingest_env(mqtt_broker), stdout=open(tmp_path / "sim.log", "wb"), stderr=subprocess.STDOUT,
    )
    try:
        def devices():
            with schema_context("alpha"):
                return list(Device.objects.filter(uid__startswith=f"{prefix}-").order_by("uid"))

        assert wait_for(lambda: len(devices()) == 2 and secrets_path(tmp_path, "alpha").exists(), 30), (tmp_path / "sim.log").read_text()
        ids = [d.pk for d in devices()]
        assert wait_for(lambda: count_points("alpha", ids) >= 20, 30), ((tmp_path / "sim.log").read_text(), ingest.log()[-2000:])
        assert wait_for(lambda: all(d.status == "online" for d in devices()), 15)

        with schema_context("alpha"):
            command = DeviceCommand.objects.create(device=devices()[0], name="set_interval", params={"seconds": 1})
            assert services.deliver_command(command_pk=command.pk) == "delivered"

        def answered():
            with schema_context("alpha"):
                return DeviceCommand.objects.filter(pk=command.pk, status="succeeded").first()

        done = wait_for(answered, 20)
        assert done is not None, (tmp_path / "sim.log").read_text()
        assert done.response["command"] == "set_interval" and done.response["params"] == {"seconds": 1}
    finally:
        simulator.terminate()
        simulator.wait(30)
        ingest.terminate()
        time.sleep(0.5)
        _cleanup(prefix)


def test_demo_signals_cross_the_demo_thresholds_now_and_then():
    """The demo rules fire on faults, not all the time: over a simulated day of 12 devices the
    vibration and temperature thresholds are crossed, by a small share of the samples."""
    from telemetry.management.commands.simulate import DEMO_RULES

    rules = {rule["name"]: rule["condition"] for rule in DEMO_RULES}
    rng = random.Random(3)
    crossed = {"Vibration high": 0, "Overheating": 0}
    total = 0
    for device in range(12):
        signal = PlantSignal(rng=random.Random(rng.random()), phase=rng.uniform(-0.5, 0.5), load=rng.uniform(0.3, 0.9))
        for second in range(0, 86_400, 6):
            sample = signal.sample(1_767_225_600 + second + device)
            if sample is None:
                continue
            total += 1
            crossed["Vibration high"] += sample["vibration"] > rules["Vibration high"]["value"]
            crossed["Overheating"] += sample["temperature"] > rules["Overheating"]["value"]
    for name, count in crossed.items():
        assert 0 < count < 0.05 * total, (name, count, total)


@pytest.mark.django_db
def test_demo_rules_are_created_once_on_the_simulator_profile(alpha, tmp_path):
    from rules.models import Rule
    from telemetry.management.commands.simulate import DEMO_RULES, PROFILE_NAME, ensure_demo_rules

    prefix = f"simr{uuid.uuid4().hex[:4]}"
    ensure_plant("alpha", 2, prefix, secrets_path(tmp_path, "alpha"))
    names = [rule["name"] for rule in DEMO_RULES]
    with schema_context("alpha"):
        Rule.objects.filter(name__in=names).delete()
    assert ensure_demo_rules("alpha") == names
    assert ensure_demo_rules("alpha") == []  # idempotent
    with schema_context("alpha"):
        rules = list(Rule.objects.filter(name__in=names).select_related("target_profile"))
        assert {rule.type for rule in rules} == {"threshold", "zscore", "no_data"}
        assert all(rule.enabled and rule.target_profile.name == PROFILE_NAME for rule in rules)
