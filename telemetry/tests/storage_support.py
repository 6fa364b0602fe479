"""Helpers for the storage and query tests: devices, metrics, clean telemetry tables, raw reads."""

from __future__ import annotations

import itertools
import secrets
from datetime import UTC, datetime

import psycopg
import pytest
from django_tenants.utils import schema_context
from psycopg import sql

from telemetry.storage import TelemetryWriter, database_conninfo

TENANTS = ("alpha", "beta")
_names = itertools.count(1)
# Names unique to this run: transactional tests elsewhere may leave committed "dev-N" rows behind.
_RUN = secrets.token_hex(3)


def make_device(schema: str, *, metrics: tuple[str, ...] = ()):
    """A device (and its profile listing `metrics`) created with the ORM in the test transaction."""
    from devices.models import Device, DeviceProfile, ProfileMetric

    n = next(_names)
    with schema_context(schema):
        profile = DeviceProfile.objects.create(name=f"profile-{_RUN}-{n}")
        for name in metrics:
            ProfileMetric.objects.create(profile=profile, metric=make_metric(schema, name))
        return Device.objects.create(uid=f"dev-{_RUN}-{n}", name=f"Device {n}", profile=profile)


def make_metric(schema: str, name: str, unit: str = ""):
    from telemetry.models import Metric

    with schema_context(schema):
        metric, _ = Metric.objects.get_or_create(name=name, defaults={"unit": unit})
        return metric


def truncate_telemetry() -> None:
    """Points written by TelemetryWriter are committed (its own connection): empty them first."""
    with psycopg.connect(database_conninfo(), autocommit=True) as conn:
        for schema in TENANTS:
            conn.execute(
                sql.SQL("TRUNCATE {}, {}, {}").format(
                    sql.Identifier(schema, "telemetry_point"),
                    sql.Identifier(schema, "telemetry_rollup_1m"),
                    sql.Identifier(schema, "telemetry_rollup_1h_sealed"),
                )
            )


def fetch(query: str, *params) -> list[tuple]:
    """Read committed rows on a separate connection (what another process would see)."""
    with psycopg.connect(database_conninfo(), autocommit=True, options="-c timezone=UTC") as conn:
        return conn.execute(query, params).fetchall()


@pytest.fixture
def clean_telemetry(platform, db):
    truncate_telemetry()
    yield


@pytest.fixture
def writer(clean_telemetry):
    with TelemetryWriter() as telemetry_writer:
        yield telemetry_writer


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)
