"""Celery task metrics and one structured log line per task, from Celery's signals.

    task_prerun   -> start time, request id (set by iiot/celery.py just before), tenant schema
    task_retry    -> outcome "retry"
    task_failure  -> outcome "failure", iiot_celery_task_failures_total{exception}
    task_postrun  -> iiot_celery_task_seconds / iiot_celery_tasks_total and the log line

The log line (`iiot.celery.task`): task, task_id, tenant, request_id, duration_ms, outcome.
The request id is the one of the HTTP request that enqueued the task (propagated in the task's
headers by iiot/celery.py), so a request's log line and its tasks' lines join up.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.signals import task_failure, task_postrun, task_prerun, task_retry, worker_process_shutdown

from iiot import metrics
from iiot.request_context import request_id_var, tenant_var

task_log = logging.getLogger("iiot.celery.task")

_running: dict[str, dict[str, Any]] = {}  # task id -> what prerun saw
_connected = False


def _tenant_of(task: Any) -> str:
    try:
        from tenant_schemas_celery.app import get_schema_name_from_task

        schema = get_schema_name_from_task(task, {})
    except Exception:
        schema = None
    if not schema:
        from django_tenants.utils import get_public_schema_name

        schema = get_public_schema_name()
    return schema


def on_prerun(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    if task is None or task_id is None:
        return
    tenant = _tenant_of(task)
    _running[task_id] = {
        "started": time.perf_counter(),
        "request_id": request_id_var.get(),
        "tenant": tenant,
        "tenant_token": tenant_var.set(tenant),
        "outcome": "success",
    }


def on_retry(request: Any = None, **kwargs: Any) -> None:
    state = _running.get(getattr(request, "id", None) or "")
    if state is not None:
        state["outcome"] = "retry"


def on_failure(task_id: str | None = None, exception: BaseException | None = None, sender: Any = None, **kwargs: Any) -> None:
    name = getattr(sender, "name", None) or "unknown"
    metrics.CELERY_TASK_FAILURES.labels(task=name, exception=type(exception).__name__ if exception else "unknown").inc()
    state = _running.get(task_id or "")
    if state is not None:
        state["outcome"] = "failure"
        state["exception"] = type(exception).__name__ if exception else "unknown"


def on_postrun(task_id: str | None = None, task: Any = None, state: str | None = None, **kwargs: Any) -> None:
    saved = _running.pop(task_id or "", None)
    if task is None or saved is None:
        return
    seconds = time.perf_counter() - saved["started"]
    outcome = saved["outcome"]
    if state == "RETRY":
        outcome = "retry"
    elif state == "FAILURE":
        outcome = "failure"
    metrics.CELERY_TASK_SECONDS.labels(task=task.name, outcome=outcome).observe(seconds)
    metrics.CELERY_TASKS.labels(task=task.name, outcome=outcome).inc()
    extra = {
        "task": task.name,
        "task_id": task_id,
        "tenant": saved["tenant"],
        "request_id": saved["request_id"],
        "duration_ms": round(seconds * 1000, 2),
        "outcome": outcome,
    }
    if "exception" in saved:
        extra["exception"] = saved["exception"]
    task_log.log(logging.WARNING if outcome == "failure" else logging.INFO, "task", extra=extra)
    try:
        tenant_var.reset(saved["tenant_token"])
    except ValueError:  # set in another context (eager task inside a request): leave it
        pass


def on_worker_process_shutdown(**kwargs: Any) -> None:
    from iiot.observability.multiprocess import mark_dead

    mark_dead()


def connect() -> None:
    """Connect the receivers once (weak=False: they are module functions, kept anyway)."""
    global _connected
    if _connected:
        return
    task_prerun.connect(on_prerun, weak=False)
    task_retry.connect(on_retry, weak=False)
    task_failure.connect(on_failure, weak=False)
    task_postrun.connect(on_postrun, weak=False)
    worker_process_shutdown.connect(on_worker_process_shutdown, weak=False)
    _connected = True
