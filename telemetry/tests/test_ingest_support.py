"""Helpers (no tests) for the end-to-end ingest tests: committed devices with broker credentials, an ingest
subprocess (`manage.py ingest`) with the test environment, device publishers, committed reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import psycopg
from django.conf import settings
from django.db import connection

from telemetry.storage import database_conninfo

ROOT = Path(settings.BASE_DIR)
METRICS = (("temperature", "°C", -40.0, 200.0), ("humidity", "%", 0.0, 100.0), ("pressure", "bar", 0.0, 50.0), ("vibration", "mm/s", 0.0, 100.0))


@dataclass
class SimDevice:
    uid: str
    pk: int
    secret: str
    schema: str

    @property
    def username(self) -> str:
        return f"{self.schema}/{self.uid}"

    def topic(self, kind: str = "telemetry") -> str:
        return f"iiot/{self.schema}/{self.uid}/{kind}"


@dataclass
class Plant:
    schema: str
    profile_id: int
    devices: list[SimDevice]
    metric_ids: dict[str, int]
    created_metrics: list[int] = field(default_factory=list)


def create_plant(schema: str, count: int, prefix: str | None = None) -> Plant:
    """Committed profile, devices and credentials (the ingest subprocess must see them)."""
    from django_tenants.utils import schema_context

    from devices import services
    from telemetry.models import Metric

    prefix = prefix or f"ing{uuid.uuid4().hex[:6]}"
    with schema_context(schema):
        existing = set(Metric.objects.filter(name__in=[m[0] for m in METRICS]).values_list("name", flat=True))
        profile = services.create_profile(
            actor=None,
            client=None,
            name=f"{prefix} profile",
            metrics=[{"name": n, "unit": u, "min": lo, "max": hi} for n, u, lo, hi in METRICS],
        )
        metric_ids = dict(Metric.objects.filter(name__in=[m[0] for m in METRICS]).values_list("name", "id"))
        created = [metric_ids[n] for n in metric_ids if n not in existing]
        devices = []
        for n in range(count):
            device = services.create_device(actor=None, client=None, uid=f"{prefix}-{n:04d}", name=f"{prefix} {n}", profile=profile)
            issued = services.issue_credential(actor=None, client=None, device=device)
            devices.append(SimDevice(uid=device.uid, pk=device.pk, secret=issued.secret, schema=schema))
    return Plant(schema=schema, profile_id=profile.pk, devices=devices, metric_ids=metric_ids, created_metrics=created)


def delete_plant(plant: Plant) -> None:
    from django_tenants.utils import schema_context

    from devices.models import Device, DeviceProfile
    from telemetry.models import Metric

    with schema_context(plant.schema):
        Device.objects.filter(pk__in=[d.pk for d in plant.devices]).delete()
        DeviceProfile.objects.filter(pk=plant.profile_id).delete()
        Metric.objects.filter(pk__in=plant.created_metrics, profiles__isnull=True).delete()


def ingest_env(broker, **extra: str) -> dict[str, str]:
    params = connection.settings_dict
    user = params.get("USER") or "postgres"
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    url = f"postgres://{user}{password}@{params.get('HOST') or '127.0.0.1'}:{params.get('PORT') or 5432}/{params['NAME']}"
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": url,
            "TEST_DATABASE_NAME": params["NAME"],
            "REDIS_URL": settings.REDIS_URL,
            "MQTT_URL": broker.url,
            "MQTT_SERVICE_USERNAME": broker.service_username,
            "MQTT_SERVICE_PASSWORD": broker.service_password,
            "MQTT_ADMIN_USERNAME": broker.admin_username,
            "MQTT_ADMIN_PASSWORD": broker.admin_password,
            "MQTT_DEVICE_URL": broker.url,
            "IIOT_ENV_FILE": "/nonexistent",
            "SECRET_KEY": "test-secret-key-not-for-production",
            "LOG_LEVEL": "INFO",
            "INGEST_FLUSH_MS": "100",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class IngestProcess:
    """`manage.py ingest` as a subprocess (the real command, killed for real)."""

    def __init__(self, broker, log_dir: Path, *, group: str | None = None, instance: int = 0, processes: int = 1, **env: str) -> None:
        self.broker = broker
        self.processes = processes
        # The broker lets the service account subscribe in group `ingest` only.
        self.group = group or "ingest"
        self.instance = instance
        self.env = ingest_env(broker, **env)
        self.log_path = log_dir / f"ingest-{self.group}-{instance}.log"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 30.0, *, wait: bool = True) -> None:
        """Start the command; with `wait`, return once every process has subscribed."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "ingest", "--group", self.group, "--instance", str(self.instance), "--stats-interval", "2",
             "--processes", str(self.processes)],  # fmt: skip
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.starts += 1
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ingest exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            if self.log_path.exists() and self.log_path.read_text(errors="replace")[offset:].count("ingest subscribed") >= self.processes:
                return
            time.sleep(0.1)
        raise RuntimeError(f"ingest did not subscribe within {timeout} s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_ingest_command(broker, *args: str, **env: str) -> subprocess.Popen:
    """`manage.py ingest ARGS` (e.g. `--retire 1`) with the test's settings; output in pipes."""
    return subprocess.Popen(
        [sys.executable, "manage.py", "ingest", *args], cwd=ROOT, env=ingest_env(broker, **env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def run_ingest_command(broker, *args: str, timeout: float = 90.0, **env: str) -> subprocess.CompletedProcess:
    """`manage.py ingest ARGS` to its end, with the test's settings."""
    process = start_ingest_command(broker, *args, **env)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


class Publisher:
    """A device's MQTT connection (paho, MQTT 3.1.1) publishing with its own credential."""

    def __init__(self, broker, device: SimDevice, *, will: bytes | None = None) -> None:
        self.device = device
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{device.uid}-{uuid.uuid4().hex[:4]}", protocol=mqtt.MQTTv311)
        self.client.username_pw_set(device.username, device.secret)
        self.client.max_inflight_messages_set(2000)
        self.client.max_queued_messages_set(0)
        if will is not None:
            self.client.will_set(device.topic("status"), will, qos=1)
        self._connected = threading.Event()
        self.refused: str | None = None
        self.client.on_connect = self._on_connect
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("device could not connect")
        if self.refused:
            raise RuntimeError(f"device refused: {self.refused}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.refused = str(reason_code) if reason_code.is_failure else None
        self._connected.set()

    def publish(self, body, *, kind: str = "telemetry", qos: int = 1):
        payload = body if isinstance(body, bytes) else orjson.dumps(body)
        return self.client.publish(self.device.topic(kind), payload, qos=qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def fetch(query: str, *params) -> list[tuple]:
    with psycopg.connect(database_conninfo(), autocommit=True, options="-c timezone=UTC") as conn:
        return conn.execute(query, params).fetchall()


def count_points(schema: str, device_ids: list[int]) -> int:
    return fetch(f'SELECT count(*) FROM "{schema}".telemetry_point WHERE device_id = ANY(%s)', device_ids)[0][0]


def rollup_count(schema: str, device_ids: list[int]) -> int:
    return fetch(f'SELECT coalesce(sum(count), 0) FROM "{schema}".telemetry_rollup_1m WHERE device_id = ANY(%s)', device_ids)[0][0]


def wait_for(predicate, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def terminate_writers() -> int:
    """pg_terminate_backend on the ingest writers' connections to the test database."""
    rows = fetch(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'iiot-telemetry-writer' AND datname = current_database()"
    )
    return sum(1 for (ok,) in rows if ok)
