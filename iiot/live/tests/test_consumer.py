"""`/ws/v1/live` through the real ASGI stack (WebsocketCommunicator), real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis
from channels.layers import get_channel_layer

from iiot.live import protocol
from iiot.live.consumers import LiveConsumer
from iiot.live.events import alerts_group, devices_group
from iiot.live.streaming import LivePublisher, live_redis_url, watch_key
from iiot.live.tests.conftest import communicator
from telemetry.storage import Point

pytestmark = [pytest.mark.django_db, pytest.mark.asyncio]


async def connect(comm):
    connected, subprotocol = await comm.connect(timeout=5)
    assert connected
    return subprotocol


async def frame(comm, timeout: float = 3.0) -> dict:
    message = await comm.receive_output(timeout)
    assert message["type"] == "websocket.send", message
    return orjson.loads(message["text"])


async def frame_of_type(comm, kind: str, timeout: float = 3.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got = await frame(comm, max(0.05, deadline - time.monotonic()))
        if got["type"] == kind:
            return got


async def closed_with(comm, code: int, timeout: float = 3.0) -> str:
    while True:
        message = await comm.receive_output(timeout)
        if message["type"] == "websocket.close":
            assert message.get("code") == code, message
            return message.get("reason", "")


async def welcome(comm) -> dict:
    got = await frame(comm)
    assert got["type"] == "welcome", got
    return got


async def send(comm, body) -> None:
    await comm.send_to(text_data=body if isinstance(body, str) else orjson.dumps(body).decode())


# --- Authentication -------------------------------------------------------------------------------


async def test_session_cookie_authenticates(alpha, live_plant, hub):
    comm = communicator("alpha.localhost", session=live_plant.sessions[("alpha", "operator")], origin="http://alpha.localhost")
    await connect(comm)
    hello = await welcome(comm)
    assert hello["auth"] == "session" and hello["user"] == alpha.email("operator") and hello["tenant"] == "alpha"
    await comm.disconnect()


async def test_jwt_in_subprotocol_and_in_query(alpha, live_plant, hub):
    token = live_plant.tokens[("alpha", "viewer")]
    comm = communicator("alpha.localhost:8000", token=token)
    assert await connect(comm) == "bearer"  # the subprotocol is echoed, as browsers require
    assert (await welcome(comm))["auth"] == "jwt"
    await comm.disconnect()
    comm = communicator("alpha.localhost", query_token=token)
    await connect(comm)
    assert (await welcome(comm))["user"] == alpha.email("viewer")
    await comm.disconnect()


async def test_refused_without_credentials_or_with_bad_ones(alpha, live_plant, hub):
    comm = communicator("alpha.localhost")
    await connect(comm)
    assert "Authentication required" in await closed_with(comm, protocol.CLOSE_UNAUTHENTICATED)
    comm = communicator("alpha.localhost", token="not-a-jwt")
    await connect(comm)
    assert "Invalid" in await closed_with(comm, protocol.CLOSE_UNAUTHENTICATED)
    comm = communicator("alpha.localhost", session="no-such-session")
    await connect(comm)
    await closed_with(comm, protocol.CLOSE_UNAUTHENTICATED)


async def test_refused_with_another_tenants_token_or_session(alpha, beta, live_plant, hub):
    comm = communicator("alpha.localhost", token=live_plant.tokens[("beta", "admin")])
    await connect(comm)
    assert "another tenant" in await closed_with(comm, protocol.CLOSE_FORBIDDEN)
    # beta's session key means nothing in alpha's schema
    comm = communicator("alpha.localhost", session=live_plant.sessions[("beta", "admin")])
    await connect(comm)
    await closed_with(comm, protocol.CLOSE_UNAUTHENTICATED)


async def test_refused_cross_origin_session_unknown_host_and_public_host(alpha, live_plant, hub):
    comm = communicator("alpha.localhost", session=live_plant.sessions[("alpha", "admin")], origin="http://evil.example.com")
    await connect(comm)
    assert "Cross-origin" in await closed_with(comm, protocol.CLOSE_FORBIDDEN)
    for host in ("nowhere.localhost", "localhost"):
        comm = communicator(host, token=live_plant.tokens[("alpha", "admin")])
        await connect(comm)
        await closed_with(comm, protocol.CLOSE_UNKNOWN_TENANT)


async def test_refused_for_a_suspended_tenant(alpha, live_plant, hub, monkeypatch):
    from tenants.models import Tenant, TenantStatus

    token = live_plant.tokens[("alpha", "admin")]
    original = Tenant.is_active

    monkeypatch.setattr(Tenant, "is_active", property(lambda self: self.schema_name != "alpha" and original.fget(self)))
    assert TenantStatus.SUSPENDED  # the real status check is Tenant.is_active (tenants/models.py)
    comm = communicator("alpha.localhost", token=token)
    await connect(comm)
    assert "suspended" in await closed_with(comm, protocol.CLOSE_FORBIDDEN)


# --- Subscriptions and messages -----------------------------------------------------------------------


async def test_subscribe_to_another_tenants_device_is_refused(alpha, live_plant, hub):
    beta_device = live_plant.devices["beta"][0]
    comm = communicator("alpha.localhost", token=live_plant.tokens[("alpha", "viewer")])
    await connect(comm)
    await welcome(comm)
    await send(comm, {"type": "subscribe", "id": 7, "devices": [beta_device.uid]})
    got = await frame(comm)
    assert got == {"type": "error", "code": "unknown_devices", "message": got["message"], "id": 7, "devices": [beta_device.uid]}
    # a mix of own and foreign devices subscribes nothing
    own = live_plant.devices["alpha"][0]
    await send(comm, {"type": "subscribe", "devices": [own.pk, beta_device.uid]})
    assert (await frame(comm))["code"] == "unknown_devices"
    await comm.disconnect()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_message"),
        ({"type": "dance"}, "unknown_type"),
        ({"type": "subscribe"}, "invalid"),
        ({"type": "subscribe", "devices": []}, "invalid"),
        ({"type": "subscribe", "devices": [{"id": 1}]}, "invalid"),
        ({"type": "subscribe", "devices": [1], "stream": "weather"}, "invalid"),
        ({"type": "subscribe", "devices": [1], "rate": -1}, "invalid"),
        ({"type": "subscribe", "devices": [1], "metrics": "temperature"}, "invalid"),
        ("x" * (protocol.MAX_MESSAGE_BYTES + 1), "too_large"),
    ],
)
async def test_malformed_messages_get_an_error_frame_and_the_connection_stays(alpha, live_plant, hub, body, code):
    comm = communicator("alpha.localhost", token=live_plant.tokens[("alpha", "viewer")])
    await connect(comm)
    await welcome(comm)
    await send(comm, body)
    got = await frame(comm)
    assert got["type"] == "error" and got["code"] == code and got["message"]
    await send(comm, {"type": "ping"})
    assert (await frame(comm))["type"] == "pong"
    await comm.disconnect()


async def test_too_many_errors_close_the_connection(alpha, live_plant, hub):
    comm = communicator("alpha.localhost", token=live_plant.tokens[("alpha", "viewer")])
    await connect(comm)
    await welcome(comm)
    for _ in range(60):
        await send(comm, "{")
    await closed_with(comm, protocol.CLOSE_TOO_MANY_ERRORS)


async def test_each_stream_needs_its_permission(alpha, live_plant, hub):
    comm = communicator("alpha.localhost", session=live_plant.sessions[("alpha", "nobody")])
    await connect(comm)
    assert (await welcome(comm))["permissions"] == []
    for stream in ("telemetry", "status", "alerts"):
        await send(comm, {"type": "subscribe", "stream": stream, "devices": [live_plant.devices["alpha"][0].pk]})
        got = await frame(comm)
        assert got["code"] == "forbidden" and protocol.STREAM_PERMISSIONS[stream] in got["message"]
    await comm.disconnect()


async def publish(schema: str, points: list[Point], interval: float = 0.05) -> LivePublisher:
    publisher = LivePublisher(interval_s=interval)
    publisher(schema, points)
    return publisher


def point(device, metric_id: int, value: float, at: datetime | None = None) -> Point:
    return Point(device_id=device.pk, metric_id=metric_id, ts=at or datetime.now(UTC), value=value)


async def test_telemetry_is_pushed_for_subscribed_devices_and_metrics_only(alpha, live_plant, hub):
    devices, metrics = live_plant.devices["alpha"], live_plant.metric_ids["alpha"]
    comm = communicator("alpha.localhost", token=live_plant.tokens[("alpha", "viewer")])
    await connect(comm)
    await welcome(comm)
    await send(comm, {"type": "subscribe", "id": "a", "devices": [devices[0].pk, devices[1].uid], "metrics": ["temperature"]})
    subscribed = await frame(comm)
    assert subscribed["type"] == "subscribed" and [d["id"] for d in subscribed["devices"]] == sorted([devices[0].pk, devices[1].pk])
    # before confirming, the server told the ingest processes these devices are watched (for a TTL)
    watched = dict(redis.Redis.from_url(live_redis_url()).zrangebyscore(watch_key("alpha"), time.time(), "+inf", withscores=True))
    for device in devices[:2]:
        assert time.time() + 20 < watched[str(device.pk).encode()] <= time.time() + 30
    await asyncio.wait_for(hub.ready.wait(), 5)
    now = datetime.now(UTC)
    publisher = await publish("alpha", [point(devices[0], metrics["temperature"], 21.5, now), point(devices[0], metrics["pressure"], 1.2, now),
                                        point(devices[2], metrics["temperature"], 99.0, now)])  # fmt: skip
    # beta's traffic for the same ids never reaches alpha's connections
    publisher("beta", [Point(device_id=devices[0].pk, metric_id=metrics["temperature"], ts=now, value=-1.0)])
    got = await frame_of_type(comm, "telemetry")
    assert got["updates"] == [{"device": devices[0].pk, "values": {"temperature": [int(now.timestamp() * 1000), 21.5]}}]
    await send(comm, {"type": "unsubscribe", "devices": [devices[0].pk]})
    assert (await frame_of_type(comm, "unsubscribed"))["devices"] == [devices[0].pk]
    publisher("alpha", [point(devices[0], metrics["temperature"], 22.0)])
    assert await comm.receive_nothing(0.4)
    publisher.stop()
    await comm.disconnect()


async def test_burst_is_coalesced_to_the_rate_with_the_latest_values(alpha, live_plant, hub):
    device, metric = live_plant.devices["alpha"][0], live_plant.metric_ids["alpha"]["temperature"]
    comm = communicator("alpha.localhost", token=live_plant.tokens[("alpha", "viewer")])
    await connect(comm)
    await welcome(comm)
    await send(comm, {"type": "subscribe", "devices": [device.pk], "rate": 2})
    assert (await frame(comm))["rate"] == 2
    await asyncio.wait_for(hub.ready.wait(), 5)
    publisher = LivePublisher(interval_s=0.02)
    start = datetime.now(UTC)
    began = time.monotonic()
    for n in range(1000):  # 1,000 points over ~1 s
        publisher("alpha", [point(device, metric, float(n), start + timedelta(milliseconds=n))])
        if n % 50 == 49:
            await asyncio.sleep(0.05)
    elapsed = time.monotonic() - began
    await asyncio.sleep(0.8)
    frames = []
    while not await comm.receive_nothing(0.1):
        got = await frame(comm)
        if got["type"] == "telemetry":
            frames.append(got)
    # at most 2 frames a second (+1 for the first, sent at once), each a single update per device
    assert 1 <= len(frames) <= 2 * (elapsed + 0.8) + 1
    assert all(len(f["updates"]) == 1 for f in frames)
    assert frames[-1]["updates"][0]["values"]["temperature"][1] == 999.0
    publisher.stop()
    await comm.disconnect()


async def test_slow_client_is_disconnected_with_a_reason(alpha, live_plant, hub, settings, monkeypatch):
    settings.LIVE_SEND_TIMEOUT_S = 0.3
    device, metric = live_plant.devices["alpha"][0], live_plant.metric_ids["alpha"]["temperature"]
    original = LiveConsumer.send_frame

    async def stalled(self, frame):  # a client that stopped reading: the server's send never completes
        if frame["type"] == "telemetry":
            await asyncio.sleep(5)
        await original(self, frame)

    monkeypatch.setattr(LiveConsumer, "send_frame", stalled)
    comm = communicator("alpha.localhost", token=live_plant.tokens[("alpha", "viewer")])
    await connect(comm)
    await welcome(comm)
    await send(comm, {"type": "subscribe", "devices": [device.pk]})
    await frame(comm)
    await asyncio.wait_for(hub.ready.wait(), 5)
    publisher = LivePublisher(interval_s=0.02)
    for n in range(50):
        publisher("alpha", [point(device, metric, float(n))])
        await asyncio.sleep(0.01)
    reason = await closed_with(comm, protocol.CLOSE_SLOW_CLIENT, timeout=3)
    assert "Slow client" in reason
    publisher.stop()


async def test_status_and_alert_streams(alpha, live_plant, hub):
    devices = live_plant.devices["alpha"]
    comm = communicator("alpha.localhost", token=live_plant.tokens[("alpha", "viewer")])
    await connect(comm)
    await welcome(comm)
    await send(comm, {"type": "subscribe", "stream": "status", "devices": [devices[1].pk]})
    assert (await frame(comm))["devices"] == [devices[1].pk]
    await send(comm, {"type": "subscribe", "stream": "alerts"})
    assert (await frame(comm))["stream"] == "alerts"
    layer = get_channel_layer()
    await layer.group_send(devices_group("alpha"), {"type": "device.status", "device": devices[0].pk, "uid": devices[0].uid, "status": "online", "at": None})
    await layer.group_send(devices_group("alpha"), {"type": "device.status", "device": devices[1].pk, "uid": devices[1].uid, "status": "offline", "at": None})
    got = await frame_of_type(comm, "status")
    assert got["devices"] == [{"device": devices[1].pk, "uid": devices[1].uid, "status": "offline", "at": None}]
    await layer.group_send(alerts_group("alpha"), {"type": "alert.event", "event": {"id": 1, "kind": "triggered", "alert": {"id": 5, "device_id": devices[0].pk, "state": "triggered"}}})
    assert (await frame_of_type(comm, "alert"))["event"]["alert"]["state"] == "triggered"
    # another tenant's group never reaches this connection
    await layer.group_send(alerts_group("beta"), {"type": "alert.event", "event": {"id": 2}})
    assert await comm.receive_nothing(0.3)
    await comm.disconnect()


async def test_set_device_connection_pushes_status_after_commit(alpha, live_plant, hub, django_db_blocker):
    from channels.db import database_sync_to_async

    from devices.services import set_device_connection

    device = live_plant.devices["alpha"][2]
    comm = communicator("alpha.localhost", token=live_plant.tokens[("alpha", "viewer")])
    await connect(comm)
    await welcome(comm)
    await send(comm, {"type": "subscribe", "stream": "status"})
    await frame(comm)

    def go_online():
        with django_db_blocker.unblock():
            return set_device_connection(schema="alpha", device_uid=device.uid, online=True, at=datetime.now(UTC))

    assert await database_sync_to_async(go_online)()
    got = await frame_of_type(comm, "status", timeout=5)
    assert got["devices"][0]["device"] == device.pk and got["devices"][0]["status"] == "online"
    await comm.disconnect()


async def test_heartbeat_ping_and_timeout(alpha, live_plant, hub, settings):
    settings.LIVE_HEARTBEAT_S = 0.2
    comm = communicator("alpha.localhost", token=live_plant.tokens[("alpha", "viewer")])
    await connect(comm)
    assert (await welcome(comm))["heartbeat_s"] == 0.2
    assert (await frame(comm))["type"] == "ping"
    await closed_with(comm, protocol.CLOSE_HEARTBEAT_TIMEOUT, timeout=3)
