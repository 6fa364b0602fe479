"""Factories and MQTT helpers for the device tests (real PostgreSQL, Redis and Mosquitto)."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
import pytest
from django_tenants.utils import schema_context

_counter = itertools.count(1)


def make_profile(schema: str, name: str | None = None, **fields):
    from devices import services

    with schema_context(schema):
        return services.create_profile(actor=None, client=None, name=name or f"profile-{next(_counter)}", **fields)


def make_device(schema: str, uid: str | None = None, profile=None, **fields):
    from devices import services

    with schema_context(schema):
        profile = profile or make_profile(schema)
        return services.create_device(actor=None, client=None, uid=uid or f"dev-{next(_counter)}", name="Device", profile=profile, **fields)


@pytest.fixture
def profile_factory():
    return make_profile


@pytest.fixture
def device_factory():
    return make_device


@dataclass
class MqttPeer:
    """A paho client connected as some user; records CONNACK, disconnects and received messages."""

    client: mqtt.Client
    connack: str | None = None
    connected: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    suback: list = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.connack == "Success"

    def wait_for_message(self, topic: str, timeout: float = 5.0) -> bytes | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for got_topic, payload in list(self.messages):
                if got_topic == topic:
                    return payload
            time.sleep(0.02)
        return None

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list:
        self.suback.clear()
        self.client.subscribe(topic, qos)
        deadline = time.monotonic() + timeout
        while not self.suback and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.suback[0] if self.suback else []

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect_peer(broker, username: str, password: str, *, timeout: float = 5.0) -> MqttPeer:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    peer = MqttPeer(client=client)

    def on_connect(c, userdata, flags, reason_code, properties):
        peer.connack = str(reason_code)
        peer.connected.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *args: peer.disconnected.set()
    client.on_message = lambda c, u, message: peer.messages.append((message.topic, message.payload))
    client.on_subscribe = lambda c, u, mid, reason_codes, properties: peer.suback.append([str(rc) for rc in reason_codes])
    client.connect(broker.host, broker.port)
    client.loop_start()
    peer.connected.wait(timeout)
    if not peer.accepted:
        client.loop_stop()
    return peer


@pytest.fixture
def mqtt_peers(mqtt_broker):
    """connect(username, password) -> MqttPeer; every peer is closed after the test."""
    peers: list[MqttPeer] = []

    def connect(username: str, password: str) -> MqttPeer:
        peer = connect_peer(mqtt_broker, username, password)
        peers.append(peer)
        return peer

    yield connect
    for peer in peers:
        try:
            peer.close()
        except Exception:
            pass
