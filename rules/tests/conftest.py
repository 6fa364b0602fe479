"""Factories for the rules tests: a small plant per tenant (profile, devices with labels), rules,
and points written through the real telemetry writer."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from django_tenants.utils import schema_context

_counter = itertools.count(1)
METRICS = ("temperature", "pressure", "inlet_temp", "outlet_temp")


@dataclass
class Plant:
    schema: str
    profile: object
    devices: list
    metric_ids: dict[str, int]


def make_plant(schema: str, count: int = 3) -> Plant:
    from devices import services
    from telemetry.models import Metric

    n = next(_counter)
    with schema_context(schema):
        profile = services.create_profile(actor=None, client=None, name=f"rules-profile-{n}", metrics=[{"name": m} for m in METRICS])
        devices = [
            services.create_device(actor=None, client=None, uid=f"r{n}-dev-{i}", name=f"Device {i}", profile=profile,
                                   labels={"line": str(i % 2), "area": "boilers"})  # fmt: skip
            for i in range(count)
        ]
        ids = dict(Metric.objects.filter(name__in=METRICS).values_list("name", "id"))
    return Plant(schema=schema, profile=profile, devices=devices, metric_ids=ids)


def make_rule(schema: str, **fields):
    from rules import services

    fields.setdefault("name", f"rule-{next(_counter)}")
    fields.setdefault("severity", "major")
    with schema_context(schema):
        return services.create_rule(actor=None, client=None, **fields)


def write_points(schema: str, rows: list[tuple[int, int, datetime, float]]) -> None:
    from telemetry.storage import Point, TelemetryWriter

    with TelemetryWriter() as writer:
        writer.write(schema, [Point(d, m, ts, v) for d, m, ts, v in rows])


def base_time() -> datetime:
    # Unique, recent per call (the store dedupes on device, metric, ts); aligned on a second.
    return (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0) - timedelta(seconds=next(_counter) * 7)


@pytest.fixture
def plant(alpha) -> Plant:
    return make_plant("alpha")
