"""A real Mosquitto for tests, configured exactly as shipped (devices.broker_config).

    with running_mosquitto() as broker:          # free port, temporary directory
        broker.host, broker.port, broker.url
        broker.admin_username / admin_password    # dynsec admin
        broker.service_username / service_password
        broker.restart()                          # graceful (SIGTERM), persistence kept
        broker.stop(); broker.start()

The repo-root conftest.py offers it as the session fixture `mqtt_broker` (and points
settings.MQTT_URL and the MQTT_* credentials at it); `mosquitto_fixture()` makes another one,
e.g. a module-scoped broker a test may stop without disturbing the others.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ADMIN_USERNAME = "test-dynsec-admin"
ADMIN_PASSWORD = "test-dynsec-admin-password"
SERVICE_USERNAME = "test-iiot-service"
SERVICE_PASSWORD = "test-iiot-service-password"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class MosquittoBroker:
    directory: Path
    port: int
    host: str = "127.0.0.1"
    admin_username: str = ADMIN_USERNAME
    admin_password: str = ADMIN_PASSWORD
    service_username: str = SERVICE_USERNAME
    service_password: str = SERVICE_PASSWORD
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def log_file(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def write_config(self) -> None:
        from devices.broker_config import write_broker_config

        write_broker_config(
            self.directory,
            port=self.port,
            admin_username=self.admin_username,
            admin_password=self.admin_password,
            service_username=self.service_username,
            service_password=self.service_password,
        )

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        log = open(self.log_file, "ab")  # noqa: SIM115 - the child keeps it open
        self.process = subprocess.Popen([binary, "-c", str(self.config_file)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {self.log_tail()}")
            if _accepts(self.host, self.port):
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"mosquitto did not accept connections on {self.port} within {timeout} s: {self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful: SIGTERM lets Mosquitto write its persistence file before exiting."""
        if not self.running:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        deadline = time.monotonic() + timeout
        while _accepts(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def running_mosquitto(directory: Path | str | None = None, *, port: int | None = None) -> Iterator[MosquittoBroker]:
    """Write the shipped config into `directory` (a new temporary one by default), start the broker
    on a free loopback port, yield it, and kill it at the end whatever happened."""
    owned = directory is None
    path = Path(directory or tempfile.mkdtemp(prefix="iiot-mosquitto-"))
    broker = MosquittoBroker(directory=path, port=port or free_port())
    broker.write_config()
    try:
        broker.start()
        yield broker
    finally:
        broker.kill()
        if owned and not os.environ.get("IIOT_KEEP_MOSQUITTO_DIR"):
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def broker_settings(broker: MosquittoBroker) -> Iterator[None]:
    """Point the Django settings the platform reads at `broker` (restored afterwards)."""
    from django.conf import settings

    values = {
        "MQTT_URL": broker.url,
        "MQTT_DEVICE_URL": broker.url,
        "MQTT_ADMIN_USERNAME": broker.admin_username,
        "MQTT_ADMIN_PASSWORD": broker.admin_password,
        "MQTT_SERVICE_USERNAME": broker.service_username,
        "MQTT_SERVICE_PASSWORD": broker.service_password,
    }
    saved = {name: getattr(settings, name) for name in values}
    for name, value in values.items():
        setattr(settings, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(settings, name, value)


def mosquitto_fixture(scope: str = "session", *, apply_settings: bool = True, autouse: bool = False):
    """A pytest fixture factory: `my_broker = mosquitto_fixture("module")` in a conftest or test module."""

    @pytest.fixture(scope=scope, autouse=autouse)
    def _fixture(tmp_path_factory) -> Iterator[MosquittoBroker]:
        with running_mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
            if apply_settings:
                with broker_settings(broker):
                    yield broker
            else:
                yield broker

    return _fixture
