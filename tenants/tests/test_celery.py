"""Tasks run in the schema of the tenant that enqueued them, with the enqueuing request's id,
on a real worker consuming the real Redis broker."""

import pytest
from celery.contrib.testing.worker import start_worker
from django_tenants.utils import schema_context

from iiot.celery import app
from iiot.request_context import request_id_var
from tenants.tasks import describe_context

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def worker():
    app.conf.task_always_eager = False
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10, loglevel="WARNING"):
        yield


@pytest.mark.parametrize("schema", ["alpha", "beta"])
def test_task_runs_in_the_enqueuing_tenant_schema(alpha, beta, worker, schema):
    token = request_id_var.set(f"req-{schema}")
    try:
        with schema_context(schema):
            result = describe_context.delay()
    finally:
        request_id_var.reset(token)
    assert result.get(timeout=20) == {"schema": schema, "request_id": f"req-{schema}"}


def test_task_enqueued_on_the_public_schema_runs_there(platform, worker):
    assert describe_context.delay().get(timeout=20)["schema"] == "public"
