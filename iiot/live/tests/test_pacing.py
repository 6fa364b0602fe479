"""Timing of live updates without the WebSocket stack: the frame pacer, the ingest publisher's
leading edge, the channel-layer receive that survives Redis timeouts, the hub's GC tuning."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from datetime import UTC, datetime

import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from iiot.live import hub as hub_module
from iiot.live.consumers import FramePacer, LiveConsumer
from iiot.live.streaming import LivePublisher, live_channel, watch_devices, watch_key
from telemetry.storage import Point

# --- FramePacer -----------------------------------------------------------------------------------


def test_pacer_first_frame_after_a_quiet_period_goes_at_once():
    pacer = FramePacer()
    assert pacer.delay(5.0, 100.0) == 0.0
    pacer.sent(5.0, 100.0)
    assert pacer.delay(5.0, 100.05) == pytest.approx(0.05)  # never closer than half an interval
    assert pacer.delay(5.0, 103.0) == 0.0  # quiet again: at once


def test_pacer_absorbs_jitter_of_values_arriving_at_the_rate():
    """Values every 200 ms +- 40 ms at rate 5: no frame waits (a strict 200 ms spacing would hold
    every early one back)."""
    pacer = FramePacer()
    arrival, waits = 0.0, []
    for n in range(200):
        arrival = n * 0.2 + (0.04 if n % 2 else -0.04)
        wait = pacer.delay(5.0, arrival)
        waits.append(wait)
        pacer.sent(5.0, arrival + wait)
    assert max(waits) == 0.0


def test_pacer_keeps_the_rate_under_a_flood():
    pacer = FramePacer()
    now, sent = 0.0, []
    while now < 10.0:  # a value every millisecond for 10 s
        wait = pacer.delay(5.0, now)
        if wait == 0.0:
            sent.append(now)
            pacer.sent(5.0, now)
        now += 0.001
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert min(gaps) >= 0.1 - 1e-6  # half an interval at least
    assert len(sent) <= 1 + (10.0 + 0.1) * 5  # `rate` a second on average
    assert len(sent) >= 10.0 * 5


# --- LivePublisher --------------------------------------------------------------------------------


async def next_message(pubsub, timeout: float = 2.0):
    """get_message returns None for an ignored subscribe confirmation: wait for a real message."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(timeout=left)
        if message is not None:
            return message
    return None


@pytest.mark.asyncio
async def test_publisher_publishes_the_first_points_at_once_then_at_most_every_interval(settings):
    import redis.asyncio as aioredis

    publisher = LivePublisher(interval_s=0.5)
    client = aioredis.Redis.from_url(publisher.url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    schema = "pacing-test"
    watch_devices(schema, [1])
    await pubsub.subscribe(live_channel(schema))
    try:
        began = time.monotonic()
        publisher(schema, [Point(device_id=1, metric_id=7, ts=datetime.now(UTC), value=1.0)])
        first = await next_message(pubsub)
        first_at = time.monotonic() - began
        assert first is not None and orjson.loads(first["data"])["devices"]["1"]["7"][1] == 1.0
        assert first_at < 0.25  # not a whole interval: the first change after a quiet period goes at once
        for value in (2.0, 3.0):  # then coalesced and held back to the interval
            publisher(schema, [Point(device_id=1, metric_id=7, ts=datetime.now(UTC), value=value)])
        second = await next_message(pubsub)
        second_at = time.monotonic() - began
        assert second is not None and orjson.loads(second["data"])["devices"]["1"]["7"][1] == 3.0
        assert second_at >= 0.45
    finally:
        publisher.stop()
        await pubsub.aclose()
        await client.aclose()


@pytest.mark.asyncio
async def test_publisher_publishes_watched_devices_only_and_learns_new_watches_at_once(settings):
    import redis.asyncio as aioredis

    settings.LIVE_WATCH_REFRESH_S = 60.0  # no re-read during the test: the announcement must do it
    schema = f"watch-test-{uuid.uuid4().hex[:6]}"
    publisher = LivePublisher(interval_s=0.01)
    client = aioredis.Redis.from_url(publisher.url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(live_channel(schema))
    try:
        now = datetime.now(UTC)
        publisher(schema, [Point(1, 7, now, 1.0), Point(2, 7, now, 2.0)])  # nobody watches: nothing is published
        assert await next_message(pubsub, timeout=0.3) is None
        assert publisher.task is None and not publisher.pending

        watch_devices(schema, [2])  # a WebSocket client subscribed somewhere
        deadline = time.monotonic() + 2
        while 2 not in publisher.watched.get(schema, set()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        publisher(schema, [Point(1, 7, now, 3.0), Point(2, 7, now, 4.0)])
        message = await next_message(pubsub)
        assert message is not None and orjson.loads(message["data"])["devices"] == {"2": {"7": [int(now.timestamp() * 1000), 4.0]}}

        # an expired watch is dropped at the next re-read
        await client.zadd(watch_key(schema), {"2": time.time() - 1})
        publisher.refresh_s = 0.05
        publisher.watch_task.cancel()
        publisher.watch_task = asyncio.get_running_loop().create_task(publisher.watch())
        deadline = time.monotonic() + 2
        while publisher.watched[schema] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        publisher(schema, [Point(2, 7, now, 5.0)])
        assert await next_message(pubsub, timeout=0.3) is None
    finally:
        publisher.stop()
        await client.delete(watch_key(schema))
        await pubsub.aclose()
        await client.aclose()


@pytest.mark.asyncio
async def test_pattern_subscription_reconnects_after_the_connection_is_cut(settings):
    import redis

    from iiot.live.streaming import pattern_messages

    name, channel = f"iiot-test-{uuid.uuid4().hex[:6]}", f"reconnect-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(settings.REDIS_URL)
    states, got = [], []

    async def consume():
        async for message in pattern_messages(settings.REDIS_URL, f"{channel}:*", timeout=lambda: 0.05, connected=states.append, name=name):
            if message is not None:
                got.append(message["data"])
                if len(got) == 2:
                    return

    task = asyncio.create_task(consume())
    try:
        await asyncio.sleep(0.3)
        client.publish(f"{channel}:a", b"before")
        await asyncio.sleep(0.3)
        assert client.client_kill_filter(_id=next(c["id"] for c in client.client_list() if c["name"] == name)) == 1
        deadline = time.monotonic() + 5
        while states.count(True) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        client.publish(f"{channel}:a", b"after")
        await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
        client.close()
    assert states == [True, False, True] and got == [b"before", b"after"]


# --- the channel layer's receive ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_channel_layer_receive_survives_redis_errors(monkeypatch):
    consumer = LiveConsumer()
    outcomes = [RedisTimeoutError("Timeout reading from 127.0.0.1:6379"), RedisConnectionError("gone"), {"type": "device.status"}]

    async def flaky_receive():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    consumer.channel_receive = flaky_receive  # as channels assigns it
    assert await asyncio.wait_for(consumer.channel_receive(), 2.0) == {"type": "device.status"}
    assert outcomes == []


# --- GC -------------------------------------------------------------------------------------------


def test_tune_gc_raises_the_young_threshold_once(monkeypatch):
    saved = gc.get_threshold()
    monkeypatch.setattr(hub_module, "_gc_tuned", False)
    try:
        gc.set_threshold(700, 10, 10)
        hub_module.tune_gc()
        assert gc.get_threshold() == (hub_module.GC_THRESHOLD0, 10, 10)
        gc.set_threshold(700, 10, 10)
        hub_module.tune_gc()  # once per process
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*saved)
        gc.unfreeze()
