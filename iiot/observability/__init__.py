"""Observability: Prometheus metrics across processes, the protected /metrics endpoint, Celery task
metrics and log lines, tenant storage gauges, Grafana dashboards (deploy/grafana/) and their export.

The metric objects themselves live in `iiot.metrics` (one vocabulary for every app)."""
