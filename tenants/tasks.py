"""Tenant-level Celery tasks."""

from __future__ import annotations

from django.db import connection

from iiot.celery import app
from iiot.request_context import request_id_var


@app.task(name="tenants.describe_context")
def describe_context() -> dict[str, str]:
    """Diagnostic: the schema and request id a task runs with.

    `celery -A iiot call tenants.describe_context` checks a worker's wiring; the test suite uses
    it to prove that tasks run in the schema of the tenant that enqueued them.
    """
    return {"schema": connection.schema_name, "request_id": request_id_var.get()}
