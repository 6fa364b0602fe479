"""The platform's Prometheus metrics, defined once: import them from here.

Every process (web, ingest, worker, beat) registers the same metrics; with
`PROMETHEUS_MULTIPROC_DIR` set (the Procfile, `make run` and docker-compose set it) each process
writes its values to memory-mapped files in that directory and the web process's `/metrics` sums
them (prometheus_client multiprocess mode, see iiot/observability/). Gauges say how they combine
across processes (`multiprocess_mode`): `livesum` adds up the live processes' values.

Labels are bounded: `tenant` is a tenant schema name, `reason` a `telemetry.pipeline.Reason`,
`task` a registered Celery task name, `channel` a notification channel kind. Never a device id,
a rule id or anything else a user can multiply. (rules/metrics.py and analytics/metrics.py keep
their own `iiot_rules_*` and `iiot_analytics_*` metrics; /metrics shows them as well.)

Other apps record through these objects (or the small helpers below); an app that needs a metric
not listed here adds it here, so that `/metrics` stays one consistent vocabulary.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

NAMESPACE = "iiot"

# --- Ingest (telemetry/transports/base.py, through iiot.observability.ingest.IngestMetrics) --------
INGEST_MESSAGES_RECEIVED = Counter(
    "ingest_messages_received", "Device messages handed to the ingest pipeline.", ["tenant"], namespace=NAMESPACE
)
INGEST_POINTS_RECEIVED = Counter(
    "ingest_points_received", "Valid telemetry points accepted into a batch (awaiting storage).", ["tenant"], namespace=NAMESPACE
)
INGEST_POINTS_STORED = Counter(
    "ingest_points_stored", "Telemetry points committed to the tenant's tables (new rows).", ["tenant"], namespace=NAMESPACE
)
INGEST_POINTS_DUPLICATE = Counter(
    "ingest_points_duplicate", "Points of committed batches already stored (redeliveries).", ["tenant"], namespace=NAMESPACE
)
INGEST_REJECTED = Counter(
    "ingest_rejected",
    "Refused input by reason: points, or whole messages for message-level reasons (same counts as the rejections API).",
    ["tenant", "reason"],
    namespace=NAMESPACE,
)
INGEST_BATCH_POINTS = Histogram(
    "ingest_batch_points",
    "Points per written batch (one tenant, one transaction).",
    ["tenant"],
    buckets=(1, 10, 50, 100, 500, 1000, 5000, 10_000, 20_000, 50_000),
    namespace=NAMESPACE,
)
INGEST_FLUSH_SECONDS = Histogram(
    "ingest_flush_seconds",
    "Time to commit one batch (COPY, insert, rollups, commit), retries included.",
    ["tenant"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    namespace=NAMESPACE,
)
INGEST_BATCH_AGE_SECONDS = Histogram(
    "ingest_batch_age_seconds",
    "From a batch's first point arriving to its commit: how long a point waits to be stored (ingest lag).",
    ["tenant"],
    buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30, 60),
    namespace=NAMESPACE,
)
INGEST_WRITE_ERRORS = Counter("ingest_write_errors", "Failed batch write attempts (each is retried).", namespace=NAMESPACE)
INGEST_PENDING_POINTS = Gauge(
    "ingest_pending_points", "Points received but not yet committed.", multiprocess_mode="livesum", namespace=NAMESPACE
)
INGEST_BROKER_CONNECTED = Gauge(
    "ingest_broker_connected",
    "Ingest processes connected to the MQTT broker (1 per connected process).",
    multiprocess_mode="livesum",
    namespace=NAMESPACE,
)
INGEST_PROCESSES = Gauge("ingest_processes", "Running ingest processes.", multiprocess_mode="livesum", namespace=NAMESPACE)

# --- Rules and alerts -------------------------------------------------------------------------------
# Rule evaluation metrics are rules/metrics.py's own (`iiot_rules_*`); alerts are counted here, from the
# alerting models' saves (iiot/observability/model_signals.py).
ALERTS_RAISED = Counter("alerts_raised", "Alerts opened (repeats of an open alert do not count).", ["tenant", "severity"], namespace=NAMESPACE)
ALERT_TRANSITIONS = Counter(
    "alert_transitions", "Alert state changes (acknowledged, resolved, auto-resolved...).", ["tenant", "to_state"], namespace=NAMESPACE
)

# --- Notifications (alerting/) ------------------------------------------------------------------------
NOTIFICATION_DELIVERIES = Counter(
    "notification_deliveries",
    "Notification delivery attempts by channel and outcome (sent, failed, retried, dropped).",
    ["tenant", "channel", "outcome"],
    namespace=NAMESPACE,
)
NOTIFICATION_RETRIES = Counter("notification_retries", "Notification deliveries scheduled for a retry.", ["channel"], namespace=NAMESPACE)
NOTIFICATION_SECONDS = Histogram(
    "notification_delivery_seconds",
    "Duration of one delivery attempt.",
    ["channel"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    namespace=NAMESPACE,
)

# --- WebSocket live updates (Channels consumers) ------------------------------------------------------
WEBSOCKET_CLIENTS = Gauge(
    "websocket_clients", "Open WebSocket connections.", ["tenant"], multiprocess_mode="livesum", namespace=NAMESPACE
)
WEBSOCKET_MESSAGES_SENT = Counter("websocket_messages_sent", "Messages sent to WebSocket clients.", ["tenant"], namespace=NAMESPACE)
WEBSOCKET_MESSAGES_COALESCED = Counter(
    "websocket_messages_coalesced",
    "Live updates merged into a later message instead of being sent on their own.",
    ["tenant"],
    namespace=NAMESPACE,
)

# --- Caches ----------------------------------------------------------------------------------------
CACHE_REQUESTS = Counter(
    "cache_requests",
    "Cache look-ups by cache and result (hit or miss); hit rate = hit / (hit + miss).",
    ["cache", "result"],
    namespace=NAMESPACE,
)

# --- Celery (iiot/observability/celery_signals.py) -----------------------------------------------
CELERY_TASK_SECONDS = Histogram(
    "celery_task_seconds",
    "Celery task run time by task and outcome.",
    ["task", "outcome"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    namespace=NAMESPACE,
)
CELERY_TASKS = Counter("celery_tasks", "Celery tasks run, by task and outcome (success, failure, retry).", ["task", "outcome"], namespace=NAMESPACE)
CELERY_TASK_FAILURES = Counter(
    "celery_task_failures", "Celery tasks that raised, by task and exception class.", ["task", "exception"], namespace=NAMESPACE
)


def record_cache(cache: str, hit: bool) -> None:
    CACHE_REQUESTS.labels(cache=cache, result="hit" if hit else "miss").inc()


def record_notification(*, tenant: str, channel: str, outcome: str, seconds: float | None = None) -> None:
    NOTIFICATION_DELIVERIES.labels(tenant=tenant, channel=channel, outcome=outcome).inc()
    if outcome == "retried":
        NOTIFICATION_RETRIES.labels(channel=channel).inc()
    if seconds is not None:
        NOTIFICATION_SECONDS.labels(channel=channel).observe(seconds)
