"""The ingest service's in-memory index of the device registry, one per tenant.

For every message the pipeline needs: is the tenant active, which device id has this uid, is it
enabled, which metrics may its profile report (and within which range), which catalogue id has
a metric name. Asking PostgreSQL per message would cap ingest at a few thousand messages a
second (a loopback round trip costs 70-80 µs), so each tenant's registry is loaded once with five
queries into a `TenantIndex` and swapped for a fresh one when it changes:

- on change: model signals (below) publish the tenant's schema name on the Redis channel
  `{schema}:registry` after the transaction commits; every ingest process listens (pattern
  `*:registry`) and reloads that tenant in a background thread;
- periodically (settings.INGEST_REGISTRY_REFRESH_S, default 30 s), as a safety net for a missed
  notification (Redis restarted, a bulk `QuerySet.update()` that sends no signal).

An index is immutable once built; readers take a reference and never lock. Metrics the pipeline
auto-registers are added to the live index under a lock (`register_metrics`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models.signals import post_delete, post_save
from django_tenants.utils import get_public_schema_name, schema_context

from iiot import pubsub as channels

logger = logging.getLogger(__name__)

REGISTRY_TOPIC = "registry"


def registry_channel(schema: str, url: str | None = None) -> str:
    """`{schema}:db{n}:registry` (iiot/pubsub.py: pub/sub ignores the Redis database number)."""
    return channels.channel(schema, REGISTRY_TOPIC, url=url)


@dataclass(frozen=True, slots=True)
class MetricRule:
    """A metric a profile reports: its catalogue id and the accepted range (None: unbounded)."""

    metric_id: int
    min_value: float | None
    max_value: float | None


@dataclass(slots=True)
class ProfileEntry:
    profile_id: int
    auto_register_metrics: bool
    # metric name -> rule; grows when the pipeline auto-registers a metric for this profile.
    metrics: dict[str, MetricRule] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    device_id: int
    uid: str
    enabled: bool
    profile: ProfileEntry


@dataclass(slots=True)
class TenantIndex:
    schema: str
    exists: bool
    active: bool
    devices: dict[str, DeviceEntry] = field(default_factory=dict)
    # The tenant's whole metric catalogue: name -> id (auto-registration looks here first).
    metrics: dict[str, int] = field(default_factory=dict)
    loaded_at: float = 0.0  # time.monotonic()


class RegistryUnavailable(Exception):
    """The registry could not be read (database down): retry the message later, do not reject it."""


class RegistryMiss(Exception):
    """The in-memory index lacks something only the database can give (a tenant not loaded yet,
    metrics to auto-register). `resolve()` does the (blocking) database work; then process the
    message again. Raised so that the event loop never waits on PostgreSQL: the caller runs
    `resolve` in a thread."""

    def __init__(self, key: tuple, resolve) -> None:
        super().__init__(key)
        self.key = key
        self.resolve = resolve


def load_tenant_index(schema: str) -> TenantIndex:
    """Read one tenant's registry: five queries whatever its size."""
    from devices.models import Device, DeviceProfile, ProfileMetric
    from telemetry.models import Metric
    from tenants.models import Tenant, TenantStatus

    now = time.monotonic()
    if schema == get_public_schema_name():
        return TenantIndex(schema=schema, exists=False, active=False, loaded_at=now)
    with schema_context(get_public_schema_name()):
        status = Tenant.objects.filter(schema_name=schema).values_list("status", flat=True).first()
    if status is None:
        return TenantIndex(schema=schema, exists=False, active=False, loaded_at=now)
    with schema_context(schema):
        metrics = dict(Metric.objects.values_list("name", "id"))
        names = {metric_id: name for name, metric_id in metrics.items()}
        profiles = {pk: ProfileEntry(profile_id=pk, auto_register_metrics=auto) for pk, auto in DeviceProfile.objects.values_list("id", "auto_register_metrics")}
        for profile_id, metric_id, low, high in ProfileMetric.objects.values_list("profile_id", "metric_id", "min_value", "max_value"):
            profile = profiles.get(profile_id)
            name = names.get(metric_id)
            if profile is not None and name is not None:
                profile.metrics[name] = MetricRule(metric_id, low, high)
        devices = {}
        for pk, uid, enabled, profile_id in Device.objects.values_list("id", "uid", "enabled", "profile_id").order_by():
            profile = profiles.get(profile_id)
            if profile is not None:
                devices[uid] = DeviceEntry(device_id=pk, uid=uid, enabled=enabled, profile=profile)
    return TenantIndex(
        schema=schema, exists=True, active=status == TenantStatus.ACTIVE, devices=devices, metrics=metrics, loaded_at=now
    )


class Registry:
    """Tenant indexes for one ingest process: loaded on first sight, refreshed on change."""

    def __init__(self, *, refresh_s: float | None = None, redis_url: str | None = None) -> None:
        self.refresh_s = refresh_s if refresh_s is not None else settings.INGEST_REGISTRY_REFRESH_S
        self.redis_url = redis_url or settings.REDIS_URL
        self._indexes: dict[str, TenantIndex] = {}
        self._lock = threading.Lock()
        self._stale: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- reading (hot path) --------------------------------------------------------------------
    def tenant(self, schema: str) -> TenantIndex:
        """The tenant's index; raises RegistryMiss when it has not been loaded yet."""
        index = self._indexes.get(schema)
        if index is None:
            raise RegistryMiss(("tenant", schema), lambda: self._load(schema))
        return index

    def _load(self, schema: str) -> TenantIndex:
        try:
            index = load_tenant_index(schema)
        except Exception as exc:  # database down or any driver error: the caller retries later
            close_old_connections()
            raise RegistryUnavailable(f"registry of {schema!r} could not be loaded: {exc}") from exc
        with self._lock:
            self._indexes[schema] = index
        return index

    def loaded(self) -> list[str]:
        return list(self._indexes)

    # --- auto-registration ---------------------------------------------------------------------
    def register_metrics(self, index: TenantIndex, profile: ProfileEntry, names: Iterable[str]) -> dict[str, int]:
        """Create catalogue metrics (and the profile's entries for them) for `names`, in two
        statements whatever their number; returns name -> id for those now known."""
        from devices.models import ProfileMetric
        from telemetry.models import Metric

        wanted = sorted(set(names))
        if not wanted:
            return {}
        try:
            with schema_context(index.schema), transaction.atomic():
                Metric.objects.bulk_create([Metric(name=name) for name in wanted], ignore_conflicts=True)
                ids = dict(Metric.objects.filter(name__in=wanted).values_list("name", "id"))
                ProfileMetric.objects.bulk_create(
                    [ProfileMetric(profile_id=profile.profile_id, metric_id=metric_id) for metric_id in ids.values()],
                    ignore_conflicts=True,
                )
        except Exception as exc:
            close_old_connections()
            raise RegistryUnavailable(f"metrics could not be registered in {index.schema!r}: {exc}") from exc
        with self._lock:
            index.metrics.update(ids)
            for name, metric_id in ids.items():
                profile.metrics.setdefault(name, MetricRule(metric_id, None, None))
        return ids

    # --- refreshing ----------------------------------------------------------------------------
    def invalidate(self, schema: str) -> None:
        """Reload `schema` soon (in the refresher thread); the current index serves meanwhile."""
        with self._lock:
            self._stale.add(schema)
        self._wake.set()

    def refresh(self, schemas: Iterable[str]) -> None:
        for schema in schemas:
            try:
                self._load(schema)
            except RegistryUnavailable as exc:
                logger.warning("registry refresh failed; keeping the previous index", extra={"schema": schema, "error": str(exc)})
                with self._lock:
                    self._stale.add(schema)

    def start(self) -> None:
        """Start the refresher thread and the Redis listener thread (daemon threads)."""
        for target, name in ((self._refresher, "registry-refresh"), (self._listener, "registry-listen")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=3)
        self._threads.clear()

    def _refresher(self) -> None:
        last_full = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(timeout=min(1.0, self.refresh_s))
            self._wake.clear()
            if self._stop.is_set():
                break
            with self._lock:
                stale, self._stale = self._stale, set()
            if time.monotonic() - last_full >= self.refresh_s:
                stale |= set(self._indexes)
                last_full = time.monotonic()
            if stale:
                close_old_connections()
                self.refresh(sorted(stale))

    def _listener(self) -> None:
        import redis

        backoff = 0.5
        while not self._stop.is_set():
            try:
                client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=5)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(channels.pattern(REGISTRY_TOPIC, url=self.redis_url))
                backoff = 0.5
                # After (re)subscribing, anything may have been missed: reload everything soon.
                for schema in self.loaded():
                    self.invalidate(schema)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "pmessage":
                        schema = channels.schema_of(message["channel"])
                        if schema in self._indexes:
                            self.invalidate(schema)
                pubsub.close()
                client.close()
            except Exception as exc:  # Redis down: the periodic refresh still runs
                logger.warning("registry listener: Redis unavailable, retrying", extra={"error": str(exc)})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)


# --- Change notifications --------------------------------------------------------------------------


def publish_registry_change(schema: str) -> None:
    """Tell every ingest process that `schema`'s registry changed (after the current commit)."""

    def send() -> None:
        try:
            from telemetry.storage import redis_client

            redis_client().publish(registry_channel(schema), b"1")
        except Exception as exc:  # the periodic refresh catches up
            logger.warning("registry change not published", extra={"schema": schema, "error": str(exc)})

    transaction.on_commit(send)


def _on_registry_model_change(sender, instance=None, **kwargs) -> None:
    schema = getattr(connection, "schema_name", None)
    if schema and schema != get_public_schema_name():
        publish_registry_change(schema)


def _on_tenant_change(sender, instance=None, **kwargs) -> None:
    schema = getattr(instance, "schema_name", None)
    if schema:
        publish_registry_change(schema)


_connected = False


def connect_signals() -> None:
    """Publish registry changes from model signals (called from TelemetryConfig.ready)."""
    global _connected
    if _connected:
        return
    from devices.models import Device, DeviceProfile, ProfileMetric
    from telemetry.models import Metric
    from tenants.models import Tenant

    for model in (Device, DeviceProfile, ProfileMetric, Metric):
        post_save.connect(_on_registry_model_change, sender=model, dispatch_uid=f"ingest-registry-{model.__name__}-save")
        post_delete.connect(_on_registry_model_change, sender=model, dispatch_uid=f"ingest-registry-{model.__name__}-delete")
    post_save.connect(_on_tenant_change, sender=Tenant, dispatch_uid="ingest-registry-tenant-save")
    post_delete.connect(_on_tenant_change, sender=Tenant, dispatch_uid="ingest-registry-tenant-delete")
    _connected = True
