"""`python manage.py simulate --tenant demo --devices 12 --rate 12`: a plant that keeps the demo alive.

Creates (or reuses) the profile "Plant sensor" (temperature °C, humidity %, pressure bar,
vibration mm/s, motor_current A, with ranges) and devices `sim-0001` ... in the tenant, each with
its own broker credential, then publishes realistic signals over MQTT at QoS 1 as those devices:
a daily temperature cycle, noise, a load that drives motor current and vibration together,
occasional faults (vibration and current spikes, overheating), and dropouts (a device falls
silent for a while). Each device announces `online` on its status topic, leaves an MQTT will
`offline`, and answers commands from `.../commands` on `.../commands/response`.

A credential's secret is shown only once, at issue time, so the simulator keeps its devices'
secrets in `var/simulator/{tenant}.json` (mode 0600) and rotates the credential of a device whose
secret it does not have or that the broker refuses.

One gmqtt connection per device: fine for dozens of devices. `make bench` does not use this; it
drives load with the pre-encoded generator in bench/loadgen.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

logger = logging.getLogger("telemetry.simulator")

PROFILE_NAME = "Plant sensor"
METRICS = [
    {"name": "temperature", "unit": "°C", "min": -40.0, "max": 150.0},
    {"name": "humidity", "unit": "%", "min": 0.0, "max": 100.0},
    {"name": "pressure", "unit": "bar", "min": 0.0, "max": 16.0},
    {"name": "vibration", "unit": "mm/s", "min": 0.0, "max": 50.0},
    {"name": "motor_current", "unit": "A", "min": 0.0, "max": 60.0},
]
RANGES = {m["name"]: (m["min"], m["max"]) for m in METRICS}


# --- Registry side (synchronous, Django ORM) ----------------------------------------------------------


def secrets_path(state_dir: Path, tenant: str) -> Path:
    return state_dir / f"{tenant}.json"


def load_secrets(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def save_secrets(path: Path, secrets_by_uid: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(secrets_by_uid, handle, indent=1, sort_keys=True)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def ensure_plant(tenant: str, count: int, prefix: str, path: Path) -> dict[str, str]:
    """Profile, devices and credentials; returns uid -> secret for the simulated devices."""
    from django_tenants.utils import schema_context

    from devices import services
    from devices.models import Device, DeviceProfile
    from tenants.models import Tenant

    if not Tenant.objects.filter(schema_name=tenant).exists():
        raise CommandError(f'No tenant "{tenant}" (create it first, e.g. `make bootstrap` makes "demo").')
    known = load_secrets(path)
    with schema_context(tenant):
        profile = DeviceProfile.objects.filter(name=PROFILE_NAME).first()
        if profile is None:
            profile = services.create_profile(
                actor=None, client=None, name=PROFILE_NAME, description="Simulated plant sensor (manage.py simulate).", metrics=METRICS
            )
        uids = [f"{prefix}-{n:04d}" for n in range(1, count + 1)]
        existing = {device.uid: device for device in Device.objects.filter(uid__in=uids)}
        changed = False
        for n, uid in enumerate(uids, start=1):
            device = existing.get(uid)
            if device is None:
                device = services.create_device(
                    actor=None, client=None, uid=uid, name=f"Simulated sensor {n}", profile=profile, location=f"Line {1 + (n - 1) // 4}",
                    labels={"simulated": "true", "line": str(1 + (n - 1) // 4)},
                )
            if uid not in known or not device.credentials.filter(status="active").exists():
                known[uid] = services.issue_credential(actor=None, client=None, device=device).secret
                changed = True
    if changed:
        save_secrets(path, known)
    return {uid: known[uid] for uid in uids}


# A few rules that fire now and then on the simulated plant (faults, dropouts): the demo's alerts.
DEMO_RULES = [
    {"name": "Vibration high", "type": "threshold", "severity": "major",
     "description": "Vibration above 7 mm/s for 5 s; clears below 5 mm/s.",
     "condition": {"metric": "vibration", "op": "gt", "value": 7, "clear_value": 5, "for_s": 5}},
    {"name": "Overheating", "type": "threshold", "severity": "critical",
     "description": "Temperature above 46 °C; clears below 42 °C.",
     "condition": {"metric": "temperature", "op": "gt", "value": 46, "clear_value": 42}},
    {"name": "Motor current unusual", "type": "zscore", "severity": "minor",
     "description": "Motor current more than 4 standard deviations from its last 10 minutes.",
     "condition": {"metric": "motor_current", "window_s": 600, "k": 4, "direction": "both", "min_points": 30}},
    {"name": "Sensor silent", "type": "no_data", "severity": "warning",
     "description": "No data from a sensor for 20 s (a dropout).",
     "condition": {"metric": None, "seconds": 20}},
]  # fmt: skip


def ensure_demo_rules(tenant: str) -> list[str]:
    """Create the DEMO_RULES on the simulator's profile where a rule of that name is missing
    (idempotent; rules a user edited are left alone). Returns the names created."""
    from django_tenants.utils import schema_context

    from devices.models import DeviceProfile
    from rules import services as rule_services
    from rules.models import Rule

    created = []
    with schema_context(tenant):
        profile = DeviceProfile.objects.get(name=PROFILE_NAME)
        existing = set(Rule.objects.filter(name__in=[rule["name"] for rule in DEMO_RULES]).values_list("name", flat=True))
        for spec in DEMO_RULES:
            if spec["name"] not in existing:
                rule_services.create_rule(actor=None, client=None, target_kind="profile", target_profile=profile, **spec)
                created.append(spec["name"])
    return created


def rotate_credential(tenant: str, uid: str, path: Path) -> str:
    from django_tenants.utils import schema_context

    from devices import services
    from devices.models import Device

    with schema_context(tenant):
        device = Device.objects.get(uid=uid)
        secret = services.issue_credential(actor=None, client=None, device=device).secret
    known = load_secrets(path)
    known[uid] = secret
    save_secrets(path, known)
    return secret


# --- Signals ------------------------------------------------------------------------------------------


@dataclass
class PlantSignal:
    """One machine: a slow load random walk drives current and vibration; faults come and go."""

    rng: random.Random
    phase: float = 0.0
    load: float = 0.6
    pressure_setpoint: float = 6.0
    fault_until: float = 0.0
    silent_until: float = 0.0

    def sample(self, now: float) -> dict[str, float] | None:
        rng = self.rng
        if now < self.silent_until:
            return None
        if rng.random() < 0.0015:  # dropout: the device goes quiet for a while
            self.silent_until = now + rng.uniform(5, 30)
            return None
        if now >= self.fault_until and rng.random() < 0.002:
            self.fault_until = now + rng.uniform(10, 60)
        fault = now < self.fault_until
        self.load = min(1.0, max(0.2, self.load + rng.gauss(0, 0.02)))
        day = 2 * math.pi * ((now % 86_400) / 86_400) + self.phase
        ambient = 22 + 6 * math.sin(day - math.pi / 2)
        temperature = ambient + 15 * self.load + rng.gauss(0, 0.3) + (12 if fault else 0)
        humidity = 55 - 0.8 * (ambient - 22) + rng.gauss(0, 1.0)
        pressure = self.pressure_setpoint * (0.9 + 0.15 * self.load) + rng.gauss(0, 0.05)
        current = 4 + 14 * self.load + rng.gauss(0, 0.3)
        vibration = 0.8 + 3.5 * self.load**2 + rng.gauss(0, 0.15)
        if fault:
            current *= 1.4
            vibration *= rng.uniform(2.5, 4.0)
        if rng.random() < 0.001:  # a single spike
            vibration *= 5
        values = {"temperature": temperature, "humidity": humidity, "pressure": pressure, "vibration": vibration, "motor_current": current}
        return {name: round(min(max(value, RANGES[name][0]), RANGES[name][1]), 3) for name, value in values.items()}


# --- Devices on MQTT ------------------------------------------------------------------------------------


@dataclass
class SimulatedDevice:
    tenant: str
    uid: str
    secret: str
    interval: float
    signal: PlantSignal
    answered: set[str] = field(default_factory=set)
    sent: int = 0
    started: float = field(default_factory=time.monotonic)

    def topic(self, kind: str) -> str:
        return f"iiot/{self.tenant}/{self.uid}/{kind}"


class Simulator:
    def __init__(self, tenant: str, devices: list[SimulatedDevice], *, url: str, state_path: Path) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.tls = parts.scheme in ("mqtts", "ssl")
        self.tenant = tenant
        self.devices = devices
        self.state_path = state_path
        self.stop_event = asyncio.Event()
        self.commands_answered = 0

    async def run(self, duration: float | None) -> None:
        tasks = [asyncio.create_task(self._device(device)) for device in self.devices]
        try:
            if duration:
                try:
                    await asyncio.wait_for(self.stop_event.wait(), duration)
                except TimeoutError:
                    pass
            else:
                await self.stop_event.wait()
        finally:
            self.stop_event.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _connect(self, device: SimulatedDevice):
        from gmqtt import Client, Message, Subscription
        from gmqtt.mqtt.constants import MQTTv311

        client = Client(f"sim-{self.tenant}-{device.uid}", clean_session=True, will_message=Message(device.topic("status"), b'{"status": "offline"}', qos=1))
        client.set_auth_credentials(f"{self.tenant}/{device.uid}", device.secret)

        def on_message(_client, topic, payload, qos, properties):
            self._answer(_client, device, payload)
            return 0

        client.on_message = on_message
        client.on_connect = lambda c, flags, rc, props: c.subscribe(Subscription(device.topic("commands"), qos=1))
        await client.connect(self.host, self.port, ssl=self.tls, keepalive=30, version=MQTTv311)
        return client

    def _answer(self, client, device: SimulatedDevice, payload: bytes) -> None:
        try:
            command = orjson.loads(payload)
            command_id = str(command["command_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if command_id in device.answered:  # redelivered: already answered
            return
        device.answered.add(command_id)
        name = command.get("name")
        params = command.get("params") or {}
        if name == "set_interval" and isinstance(params, dict) and isinstance(params.get("seconds"), int | float) and params["seconds"] > 0:
            device.interval = float(params["seconds"])
        result = {"command": name, "params": params, "uptime_s": round(time.monotonic() - device.started, 1), "messages_sent": device.sent}
        client.publish(device.topic("commands/response"), orjson.dumps({"command_id": command_id, "status": "ok", "result": result}), qos=1)
        self.commands_answered += 1
        logger.info("simulator answered a command", extra={"device": device.uid, "command": name})

    async def _device(self, device: SimulatedDevice) -> None:
        from gmqtt.mqtt.handler import MQTTConnectError

        backoff = 1.0
        rotated = False
        await asyncio.sleep(random.uniform(0, min(device.interval, 2.0)))  # spread the devices
        while not self.stop_event.is_set():
            try:
                client = await self._connect(device)
            except MQTTConnectError as exc:
                if rotated:
                    logger.warning("simulated device refused by the broker", extra={"device": device.uid, "error": str(exc)})
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, 30)
                    continue
                logger.info("broker refused the stored secret; rotating the credential", extra={"device": device.uid})
                device.secret = await asyncio.to_thread(rotate_credential, self.tenant, device.uid, self.state_path)
                rotated = True
                continue
            except OSError as exc:
                logger.warning("broker unreachable", extra={"device": device.uid, "error": str(exc)})
                await self._sleep(backoff)
                backoff = min(backoff * 2, 30)
                continue
            backoff = 1.0
            client.publish(device.topic("status"), b'{"status": "online"}', qos=1)
            next_at = time.monotonic()
            try:
                while not self.stop_event.is_set() and client.is_connected:
                    values = device.signal.sample(time.time())
                    if values is not None:
                        client.publish(device.topic("telemetry"), orjson.dumps({"ts": int(time.time() * 1000), "values": values}), qos=1)
                        device.sent += 1
                    next_at += device.interval
                    await self._sleep(max(0.0, next_at - time.monotonic()))
            finally:
                if client.is_connected:
                    if self.stop_event.is_set():
                        client.publish(device.topic("status"), b'{"status": "offline"}', qos=1)
                        await asyncio.sleep(0.2)
                    await client.disconnect()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stop_event.wait(), seconds)
        except TimeoutError:
            pass


class Command(BaseCommand):
    help = "Simulate plant sensors publishing telemetry over MQTT with their own credentials (and answering commands)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", default="demo")
        parser.add_argument("--devices", type=int, default=12)
        parser.add_argument("--rate", type=float, default=12.0, help="Messages per second, all devices together.")
        parser.add_argument("--prefix", default="sim", help="Device uid prefix (uids are <prefix>-0001 ...).")
        parser.add_argument("--duration", type=float, default=None, help="Stop after this many seconds (default: run until stopped).")
        parser.add_argument("--url", default=None, help="Broker URL (default settings.MQTT_DEVICE_URL).")
        parser.add_argument("--state-dir", default=None, help="Where device secrets are kept (default var/simulator).")
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--rules", action="store_true", help="Also create the demo rules on the profile (idempotent, by name).")

    def handle(self, *args, **options) -> None:
        tenant, count, rate = options["tenant"], options["devices"], options["rate"]
        if count < 1 or rate <= 0:
            raise CommandError("--devices must be at least 1 and --rate positive.")
        state_dir = Path(options["state_dir"] or Path(settings.BASE_DIR) / "var" / "simulator")
        path = secrets_path(state_dir, tenant)
        secrets_by_uid = ensure_plant(tenant, count, options["prefix"], path)
        if options["rules"]:
            created = ensure_demo_rules(tenant)
            self.stdout.write(f"Demo rules: {', '.join(created) if created else 'already there'}.")
        rng = random.Random(options["seed"])
        interval = count / rate
        devices = [
            SimulatedDevice(
                tenant=tenant,
                uid=uid,
                secret=secret,
                interval=interval,
                signal=PlantSignal(rng=random.Random(rng.random()), phase=rng.uniform(-0.5, 0.5), load=rng.uniform(0.3, 0.9),
                                   pressure_setpoint=rng.choice([4.0, 6.0, 8.0])),
            )
            for uid, secret in secrets_by_uid.items()
        ]
        simulator = Simulator(tenant, devices, url=options["url"] or settings.MQTT_DEVICE_URL, state_path=path)
        self.stdout.write(f"Simulating {count} devices in {tenant} at {rate:g} msg/s ({interval:.2f} s per device); Ctrl-C stops.")

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, simulator.stop_event.set)
            await simulator.run(options["duration"])

        asyncio.run(main())
        sent = sum(device.sent for device in devices)
        self.stdout.write(f"Sent {sent} messages; answered {simulator.commands_answered} commands.")
