"""Events for the channel layer, sent after the transaction that caused them commits.

Groups (names start with the tenant's schema, DESIGN.md):
    f"{schema}.devices"  {"type": "device.status", "device": id, "uid": str, "status": str, "at": iso}
    f"{schema}.alerts"   {"type": "alert.event", "event": {...}}   (sent by the alerting app)
LiveConsumer joins them for connections that subscribed to the status or alert stream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import TypedDict

from django.db import transaction

logger = logging.getLogger(__name__)


class DeviceStatusEvent(TypedDict):
    type: str
    device: int
    uid: str
    status: str
    at: str | None


def devices_group(schema: str) -> str:
    return f"{schema}.devices"


def alerts_group(schema: str) -> str:
    return f"{schema}.alerts"


def _send(group: str, messages: list[dict]) -> None:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return

    async def send_all() -> None:
        for message in messages:
            await layer.group_send(group, message)

    try:
        async_to_sync(send_all)()
    except Exception as exc:  # noqa: BLE001 - live events are best-effort, never fail the caller
        logger.warning("live event not sent", extra={"group": group, "error": str(exc)[:300]})


def announce_device_status(*, schema: str, changes: Iterable[tuple[int, str, str, datetime | None]]) -> None:
    """After commit: tell the tenant's live connections that devices changed status.
    `changes`: (device id, uid, new status, when)."""
    messages: list[dict] = [
        {"type": "device.status", "device": pk, "uid": uid, "status": status, "at": at.isoformat() if at else None}
        for pk, uid, status, at in changes
    ]
    if messages:
        transaction.on_commit(lambda: _send(devices_group(schema), messages))
