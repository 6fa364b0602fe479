"""Helpers for the analytics tests: a device with metrics, points written through the real writer."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from telemetry.storage import Point, TelemetryWriter
from telemetry.tests.storage_support import make_device, make_metric, truncate_telemetry

BASE = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
ENV = {}

__all__ = ["BASE", "make_device", "make_metric", "series_points", "truncate_telemetry", "write"]


def series_points(device_id: int, metric_id: int, offsets_s: Sequence[float], values: Sequence[float], start=BASE) -> list[Point]:
    return [
        Point(device_id, metric_id, start + timedelta(microseconds=round(offset * 1_000_000)), float(value))
        for offset, value in zip(offsets_s, values, strict=True)
    ]


def write(schema: str, points: Sequence[Point]) -> None:
    with TelemetryWriter() as writer:
        for index in range(0, len(points), 20_000):
            writer.write(schema, points[index : index + 20_000])
