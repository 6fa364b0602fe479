"""The `/ws/v1/live` JSON protocol: close codes, client message parsing, server frame shapes.

Documented for clients in docs/websocket.md; keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import orjson

# Close codes (4000-4999 are the application's; the reason says what happened in words).
CLOSE_HEARTBEAT_TIMEOUT = 4002
CLOSE_SLOW_CLIENT = 4008
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_UNKNOWN_TENANT = 4404
CLOSE_TOO_MANY_ERRORS = 4429

STREAMS = ("telemetry", "status", "alerts")
Stream = Literal["telemetry", "status", "alerts"]
# The permission each stream needs.
STREAM_PERMISSIONS: dict[str, str] = {"telemetry": "telemetry:read", "status": "devices:read", "alerts": "alerts:read"}

MAX_MESSAGE_BYTES = 64 * 1024
MAX_DEVICES_PER_MESSAGE = 2000
MAX_METRICS_PER_MESSAGE = 100


@dataclass(frozen=True)
class Refusal:
    code: int
    reason: str


class ProtocolError(Exception):
    """A client message the server answers with an error frame (the connection stays open)."""

    def __init__(self, code: str, message: str, request_id: Any = None, **extra: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.request_id, self.extra = code, message, request_id, extra

    def frame(self) -> dict[str, Any]:
        return error_frame(self.code, self.message, self.request_id, **self.extra)


@dataclass(frozen=True)
class ClientMessage:
    type: Literal["subscribe", "unsubscribe", "ping", "pong"]
    request_id: Any = None
    stream: str = "telemetry"
    devices: tuple[int | str, ...] | None = None  # None: every device (status, alerts) / all subscribed (unsubscribe)
    metrics: tuple[str, ...] | None = None  # telemetry only; None: every metric
    rate: float | None = None  # telemetry only: updates per second wanted (capped by the server)


class ErrorFrame(TypedDict, total=False):
    type: Literal["error"]
    code: str
    message: str
    id: Any


def error_frame(code: str, message: str, request_id: Any = None, **extra: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request_id is not None:
        frame["id"] = request_id
    frame.update(extra)
    return frame


def _device_refs(value: Any, request_id: Any) -> tuple[int | str, ...]:
    if not isinstance(value, list) or not value:
        raise ProtocolError("invalid", '"devices" must be a non-empty list of device ids or uids.', request_id, field="devices")
    if len(value) > MAX_DEVICES_PER_MESSAGE:
        raise ProtocolError("invalid", f'At most {MAX_DEVICES_PER_MESSAGE} devices per message.', request_id, field="devices")
    refs: list[int | str] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | str) or (isinstance(item, str) and not 0 < len(item) <= 64):
            raise ProtocolError("invalid", f"Not a device id or uid: {str(item)[:70]!r}.", request_id, field="devices")
        refs.append(item)
    return tuple(dict.fromkeys(refs))


def parse_client_message(raw: str | bytes | None) -> ClientMessage:
    """Validate one client frame; raises ProtocolError with a code and a reason."""
    if raw is None:
        raise ProtocolError("bad_message", "Empty frame.")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"Messages are limited to {MAX_MESSAGE_BYTES} bytes.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError("bad_json", "The frame is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_message", "A message is a JSON object with a \"type\".")
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str | int):
        request_id = None
    kind = data.get("type")
    if kind in ("ping", "pong"):
        return ClientMessage(type=kind, request_id=request_id)
    if kind not in ("subscribe", "unsubscribe"):
        raise ProtocolError(
            "unknown_type", f"Unknown message type {str(kind)[:40]!r}: use subscribe, unsubscribe, ping or pong.", request_id
        )
    stream = data.get("stream", "telemetry")
    if stream not in STREAMS:
        raise ProtocolError("invalid", f'"stream" must be one of {", ".join(STREAMS)}.', request_id, field="stream")
    devices = data.get("devices")
    refs = None if devices is None else _device_refs(devices, request_id)
    if kind == "subscribe" and stream == "telemetry" and refs is None:
        raise ProtocolError("invalid", 'Telemetry subscriptions name their "devices".', request_id, field="devices")
    metrics = data.get("metrics")
    if metrics is not None:
        if stream != "telemetry" or kind != "subscribe":
            raise ProtocolError("invalid", '"metrics" applies to telemetry subscriptions only.', request_id, field="metrics")
        if (
            not isinstance(metrics, list)
            or not metrics
            or len(metrics) > MAX_METRICS_PER_MESSAGE
            or not all(isinstance(m, str) and 0 < len(m) <= 64 for m in metrics)
        ):
            raise ProtocolError("invalid", '"metrics" must be a non-empty list of metric names.', request_id, field="metrics")
        metrics = tuple(dict.fromkeys(metrics))
    rate = data.get("rate")
    if rate is not None:
        if stream != "telemetry" or kind != "subscribe":
            raise ProtocolError("invalid", '"rate" applies to telemetry subscriptions only.', request_id, field="rate")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
            raise ProtocolError("invalid", '"rate" must be a positive number of updates per second.', request_id, field="rate")
        rate = float(rate)
    return ClientMessage(type=kind, request_id=request_id, stream=stream, devices=refs, metrics=metrics, rate=rate)


def dumps(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()
