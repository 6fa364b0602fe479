"""Celery app: tenant-aware (tenant-schemas-celery), configured from Django settings.

Tasks enqueued inside a tenant's schema carry it in their headers and run in it; the request id
of the HTTP request that enqueued them travels along too, so logs join up.
"""

from __future__ import annotations

import os

from celery.signals import before_task_publish, task_postrun, task_prerun
from tenant_schemas_celery.app import CeleryApp

from iiot.request_context import request_id_var

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iiot.settings")

app = CeleryApp("iiot")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@before_task_publish.connect
def _propagate_request_id(headers=None, **kwargs) -> None:
    if headers is not None and "request_id" not in headers:
        headers["request_id"] = request_id_var.get()


@task_prerun.connect
def _adopt_request_id(task=None, **kwargs) -> None:
    if task is None:
        return
    # With the Redis broker custom headers land on the request itself, with AMQP in `headers`.
    request_id = (task.request.headers or {}).get("request_id") or getattr(task.request, "request_id", None)
    task._request_id_token = request_id_var.set(request_id or task.request.id or "-")


@task_postrun.connect
def _drop_request_id(task=None, **kwargs) -> None:
    token = getattr(task, "_request_id_token", None)
    if token is not None:
        request_id_var.reset(token)
