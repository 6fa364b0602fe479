"""Prometheus metrics of rule evaluation (default registry; /metrics exposes it, multiprocess mode
included: gauges say how processes combine). Labels are bounded: never a rule, device or tenant id.

Streaming counters are accumulated in plain integers on the event loop and added to these from
the evaluator's background thread (a prometheus_client call takes a lock: not per point).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STREAM_POINTS = Counter("iiot_rules_stream_points_total", "Points the streaming rule evaluator looked at")
STREAM_EVALUATIONS = Counter("iiot_rules_stream_evaluations_total", "Rule evaluations done by the streaming evaluator")
STREAM_SECONDS = Counter("iiot_rules_stream_seconds_total", "Seconds spent evaluating streaming rules on the ingest event loop")
EVENTS = Counter("iiot_rules_events_total", "Rule firings and clearings", ["kind", "path"])
ACTION_LAG = Histogram(
    "iiot_rules_action_lag_seconds",
    "From a point's arrival at the streaming evaluator to its rule's actions done (alert stored)",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ACTION_QUEUE = Gauge("iiot_rules_action_queue", "Rule events waiting for their actions", multiprocess_mode="livesum")
INDEX_RULES = Gauge("iiot_rules_index_bindings", "Streaming rule and device bindings loaded in the ingest indexes", multiprocess_mode="livemax")
INDEX_LOAD_SECONDS = Histogram("iiot_rules_index_load_seconds", "Time to load one tenant's streaming rule index")
WINDOW_SECONDS = Histogram(
    "iiot_rules_window_evaluation_seconds",
    "Time to evaluate one tenant's windowed rules",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WINDOW_SERIES = Gauge("iiot_rules_window_series", "Rule and device pairs in the last windowed evaluation of a tenant", multiprocess_mode="mostrecent")
WINDOW_LAG = Gauge("iiot_rules_window_lag_seconds", "How late the last windowed evaluation started after it was due", multiprocess_mode="mostrecent")
