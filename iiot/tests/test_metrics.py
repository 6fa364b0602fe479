"""GET /metrics: refused unless configured (token, networks), and what it shows after real work:
a real `manage.py ingest` subprocess writing multiprocess files (counters move by exactly what was
published and rejected), a real Celery worker (task metrics, the task log line with the enqueuing
request's id), tenant storage gauges from the PostgreSQL catalogue."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from django.http import HttpResponse
from django.test import RequestFactory
from django_tenants.utils import schema_context
from prometheus_client.parser import text_string_to_metric_families

from iiot.celery import app
from iiot.testing.mosquitto import mosquitto_fixture
from telemetry.tests.test_ingest_support import ROOT, IngestProcess, Publisher, count_points, create_plant, delete_plant, wait_for

TOKEN = "metrics-token-for-tests-0123456789"

metrics_broker = mosquitto_fixture("module")

pytestmark = pytest.mark.timeout(180)


# --- helpers -------------------------------------------------------------------------------------


def scrape(client) -> dict[str, list]:
    """{sample name: [Sample, ...]} of one authorised scrape."""
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples `name` whose labels include `labels` (0 when there is none)."""
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def _error(response) -> dict:
    body = response.json()
    assert set(body) == {"error", "request_id"} and body["error"]["status"] == response.status_code
    return body["error"]


# --- access ----------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("host", ["localhost", "alpha.localhost"])
def test_refused_to_everyone_when_nothing_is_configured(platform, settings, host):
    from rest_framework.test import APIClient

    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = []
    client = APIClient(HTTP_HOST=host)
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer anything"}, {"HTTP_AUTHORIZATION": "Bearer "}):
        response = client.get("/metrics", **headers)
        assert response.status_code == 403
        assert _error(response)["code"] == "metrics_disabled"


@pytest.mark.django_db
@pytest.mark.parametrize("host", ["localhost", "alpha.localhost"])
def test_token_required_and_checked(platform, settings, host):
    from rest_framework.test import APIClient

    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = []
    client = APIClient(HTTP_HOST=host)
    missing = client.get("/metrics")
    assert missing.status_code == 401 and _error(missing)["code"] == "not_authenticated"
    assert missing["WWW-Authenticate"].startswith("Bearer")
    for header in ("Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"):
        wrong = client.get("/metrics", HTTP_AUTHORIZATION=header)
        assert wrong.status_code == 401, header
        assert _error(wrong)["code"] in {"authentication_failed", "not_authenticated"}
    samples = scrape(client)
    assert "iiot_telemetry_partitions" in samples
    posted = client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert posted.status_code == 405 and _error(posted)["code"] == "method_not_allowed"
    # A tenant user's JWT is not the metrics token.
    if host == "alpha.localhost":
        assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {platform['alpha'].access_token('admin')}").status_code == 401


@pytest.mark.django_db
def test_answers_on_an_address_like_the_probes(platform, settings):
    """Prometheus scrapes a process by its address: no tenant is served there, /metrics still answers."""
    from rest_framework.test import APIClient

    settings.METRICS_TOKEN = TOKEN
    assert "iiot_telemetry_partitions" in scrape(APIClient(HTTP_HOST="127.0.0.1"))
    assert APIClient(HTTP_HOST="127.0.0.1").get("/metrics").status_code == 401
    assert APIClient(HTTP_HOST="127.0.0.1").get("/api/v1/devices").status_code == 404


@pytest.mark.django_db
def test_allowed_networks(platform, settings):
    from rest_framework.test import APIClient

    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = ["10.20.0.0/16", "2001:db8::/32"]
    inside = APIClient(HTTP_HOST="localhost", REMOTE_ADDR="10.20.3.4")
    assert inside.get("/metrics").status_code == 200
    assert APIClient(HTTP_HOST="localhost", REMOTE_ADDR="2001:db8::7").get("/metrics").status_code == 200
    for address in ("10.21.0.1", "127.0.0.1", "2001:db9::1"):
        outside = APIClient(HTTP_HOST="localhost", REMOTE_ADDR=address).get("/metrics")
        assert outside.status_code == 403 and _error(outside)["code"] == "permission_denied", address
    # X-Forwarded-For is believed only behind configured proxies.
    spoofed = APIClient(HTTP_HOST="localhost", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="10.20.3.4").get("/metrics")
    assert spoofed.status_code == 403
    settings.IIOT_TRUSTED_PROXIES = 1
    proxied = APIClient(HTTP_HOST="localhost", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="10.20.3.4").get("/metrics")
    assert proxied.status_code == 200


@pytest.mark.django_db
def test_token_and_networks_both_required_when_both_set(platform, settings):
    from rest_framework.test import APIClient

    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = ["10.20.0.0/16"]
    right_token_wrong_net = APIClient(HTTP_HOST="localhost", REMOTE_ADDR="10.99.0.1").get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert right_token_wrong_net.status_code == 403
    right_net_no_token = APIClient(HTTP_HOST="localhost", REMOTE_ADDR="10.20.0.1").get("/metrics")
    assert right_net_no_token.status_code == 401
    both = APIClient(HTTP_HOST="localhost", REMOTE_ADDR="10.20.0.1").get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert both.status_code == 200


def test_bad_network_setting_is_a_configuration_error(settings):
    from django.core.exceptions import ImproperlyConfigured

    from iiot.observability.views import parse_networks

    with pytest.raises(ImproperlyConfigured, match="not-a-network"):
        parse_networks(("10.0.0.0/8", "not-a-network"))


# --- storage gauges --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_partition_count_and_table_size_per_tenant(platform, settings):
    from rest_framework.test import APIClient

    from telemetry.tests.test_ingest_support import fetch

    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_STORAGE_CACHE_SECONDS = 0
    samples = scrape(APIClient(HTTP_HOST="localhost"))
    for schema in ("alpha", "beta"):
        partitions = fetch(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace "
            "WHERE n.nspname = %s AND p.relname = 'telemetry_point'",
            schema,
        )[0][0]
        assert partitions > 0
        assert value(samples, "iiot_telemetry_partitions", tenant=schema, table="telemetry_point") == partitions
        assert value(samples, "iiot_telemetry_table_bytes", tenant=schema, table="telemetry_point") > 0
        assert value(samples, "iiot_telemetry_partitions", tenant=schema, table="telemetry_rollup_1h_sealed") >= 1
    assert not [s for s in samples["iiot_telemetry_partitions"] if s.labels["tenant"] == "public"]


# --- a real ingest run -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metrics_plant(metrics_broker, platform, django_db_blocker):
    with django_db_blocker.unblock():
        created = create_plant("alpha", 2, prefix=f"met{uuid.uuid4().hex[:5]}")
    yield created
    with django_db_blocker.unblock():
        delete_plant(created)


@pytest.mark.django_db
def test_ingest_counters_move_by_exactly_what_was_published_and_rejected(metrics_broker, metrics_plant, tmp_path, settings, monkeypatch):
    from rest_framework.test import APIClient

    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    settings.METRICS_TOKEN = TOKEN
    client = APIClient(HTTP_HOST="localhost")
    before = scrape(client)  # this process's registry only: the directory is not named yet
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc))
    ingest = IngestProcess(metrics_broker, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(multiproc))
    ingest.start()
    publishers = [Publisher(metrics_broker, device) for device in metrics_plant.devices]
    try:
        base = int((datetime.now(UTC) - timedelta(minutes=20)).timestamp()) * 1000
        infos = []
        good_messages = 25
        for i in range(good_messages):
            for publisher in publishers:
                infos.append(publisher.publish({"ts": base + i, "values": {"temperature": 20.5, "humidity": 40.0, "pressure": 1.2, "vibration": 3.0}}))
        # One point stored, three refused (out_of_range, invalid_value, unknown_metric); one message refused (invalid_json).
        infos.append(publishers[0].publish({"ts": base + 500, "values": {"temperature": 999, "humidity": "wet", "nope": 1, "pressure": 2.0}}))
        infos.append(publishers[1].publish(b"not json"))
        for info in infos:
            info.wait_for_publish(20)
        stored = good_messages * 4 * len(publishers) + 1
        ids = [d.pk for d in metrics_plant.devices]
        assert wait_for(lambda: count_points("alpha", ids) == stored, 30), count_points("alpha", ids)

        expected = {
            ("iiot_ingest_points_received_total", ()): stored,
            ("iiot_ingest_points_stored_total", ()): stored,
            ("iiot_ingest_messages_received_total", ()): good_messages * len(publishers) + 2,
            ("iiot_ingest_rejected_total", (("reason", "out_of_range"),)): 1,
            ("iiot_ingest_rejected_total", (("reason", "invalid_value"),)): 1,
            ("iiot_ingest_rejected_total", (("reason", "unknown_metric"),)): 1,
            ("iiot_ingest_rejected_total", (("reason", "invalid_json"),)): 1,
        }

        def deltas(after: dict) -> dict:
            return {
                key: value(after, key[0], tenant="alpha", **dict(key[1])) - value(before, key[0], tenant="alpha", **dict(key[1]))
                for key in expected
            }

        after = wait_for(lambda: (lambda s: s if deltas(s) == expected else None)(scrape(client)), 10)
        assert after is not None, deltas(scrape(client))
        assert value(after, "iiot_ingest_points_duplicate_total", tenant="alpha") == value(before, "iiot_ingest_points_duplicate_total", tenant="alpha")
        assert value(after, "iiot_ingest_rejected_total", tenant="alpha") - value(before, "iiot_ingest_rejected_total", tenant="alpha") == 4
        # Batches: every stored point went through a batch histogram; flush latency observed per batch.
        batches = value(after, "iiot_ingest_batch_points_count", tenant="alpha") - value(before, "iiot_ingest_batch_points_count", tenant="alpha")
        assert batches >= 1
        assert value(after, "iiot_ingest_batch_points_sum", tenant="alpha") - value(before, "iiot_ingest_batch_points_sum", tenant="alpha") == stored
        assert value(after, "iiot_ingest_flush_seconds_count", tenant="alpha") - value(before, "iiot_ingest_flush_seconds_count", tenant="alpha") == batches
        # The ingest process is alive, connected, and has nothing pending.
        assert value(after, "iiot_ingest_broker_connected") >= 1
        assert value(after, "iiot_ingest_processes") >= 1
        assert value(after, "iiot_ingest_pending_points") == 0

        # One structured log line per flush: tenant/schema, points, duration.
        flushes = [json.loads(line) for line in ingest.log().splitlines() if line.startswith("{") and '"ingest flush"' in line]
        assert flushes and sum(f["points"] for f in flushes if f["schema"] == "alpha") == stored
        assert all({"tenant", "schema", "points", "duration_ms", "request_id", "time"} <= set(f) for f in flushes)
    finally:
        for publisher in publishers:
            publisher.close()
        assert ingest.terminate() == 0
    # A process that exits removes its live gauges (mark_process_dead); its counters stay.
    gone = scrape(client)
    assert value(gone, "iiot_ingest_broker_connected") == 0 and value(gone, "iiot_ingest_processes") == 0
    assert value(gone, "iiot_ingest_points_stored_total", tenant="alpha") == value(after, "iiot_ingest_points_stored_total", tenant="alpha")


# --- Celery: task metrics, the task log line, request ids from HTTP into tasks ---------------------


@app.task(name="observability_tests.fail")
def failing_task() -> None:
    raise RuntimeError("boom")


@pytest.fixture(scope="module")
def worker():
    app.conf.task_always_eager = False
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10, loglevel="WARNING"):
        yield


@pytest.mark.django_db
def test_task_metrics_and_log_line_carry_the_enqueuing_requests_id(alpha, worker, settings, caplog):
    from rest_framework.test import APIClient

    from iiot.middleware import RequestIdMiddleware
    from tenants.tasks import describe_context

    settings.METRICS_TOKEN = TOKEN
    client = APIClient(HTTP_HOST="localhost")
    before = scrape(client)
    results = {}

    def view(request):
        # What a view does: enqueue inside the tenant's schema, during the request.
        with schema_context("alpha"):
            results["ok"] = describe_context.delay()
            results["fail"] = failing_task.delay()
        return HttpResponse("queued")

    request = RequestFactory().get("/anything", HTTP_X_REQUEST_ID="req-obs-42", HTTP_HOST="alpha.localhost")
    caplog.set_level("INFO", logger="iiot.celery.task")
    response = RequestIdMiddleware(view)(request)
    assert response["X-Request-ID"] == "req-obs-42"
    assert results["ok"].get(timeout=20) == {"schema": "alpha", "request_id": "req-obs-42"}
    with pytest.raises(RuntimeError):
        results["fail"].get(timeout=20)

    lines = wait_for(lambda: [r for r in caplog.records if r.name == "iiot.celery.task" and r.request_id == "req-obs-42"] if len(
        [r for r in caplog.records if r.name == "iiot.celery.task" and r.request_id == "req-obs-42"]) >= 2 else None, 10)
    assert lines, [vars(r) for r in caplog.records if r.name == "iiot.celery.task"]
    by_task = {r.task: r for r in lines}
    ok, failed = by_task["tenants.describe_context"], by_task["observability_tests.fail"]
    assert ok.outcome == "success" and ok.tenant == "alpha" and ok.duration_ms >= 0 and ok.task_id == results["ok"].id
    assert failed.outcome == "failure" and failed.tenant == "alpha" and failed.exception == "RuntimeError"

    after = scrape(client)

    def moved(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("iiot_celery_tasks_total", task="tenants.describe_context", outcome="success") == 1
    assert moved("iiot_celery_tasks_total", task="observability_tests.fail", outcome="failure") == 1
    assert moved("iiot_celery_task_failures_total", task="observability_tests.fail", exception="RuntimeError") == 1
    assert moved("iiot_celery_task_seconds_count", task="tenants.describe_context") == 1


@pytest.mark.django_db
def test_request_metrics_and_access_log_line(alpha, settings, caplog):
    """django-prometheus counts requests; the access log line has tenant, request id, duration."""
    settings.METRICS_TOKEN = TOKEN
    from rest_framework.test import APIClient

    metrics_client = APIClient(HTTP_HOST="localhost")
    before = scrape(metrics_client)
    caplog.set_level("INFO", logger="iiot.access")
    response = alpha.client("viewer").get("/api/v1/devices", HTTP_X_REQUEST_ID="req-access-7")
    assert response.status_code == 200
    lines = [r for r in caplog.records if r.name == "iiot.access" and r.request_id == "req-access-7"]
    assert len(lines) == 1
    line = lines[0]
    assert line.tenant == "alpha" and line.status == 200 and line.duration_ms >= 0 and line.path == "/api/v1/devices"
    after = scrape(metrics_client)
    name = "django_http_responses_total_by_status_view_method_total"
    assert value(after, name, status="200", method="GET") - value(before, name, status="200", method="GET") >= 1


def test_metric_names_other_apps_record_through():
    """The shared vocabulary exists and records (single-process registry in tests)."""
    from prometheus_client import REGISTRY

    from iiot import metrics

    metrics.record_notification(tenant="alpha", channel="webhook", outcome="retried", seconds=0.2)
    metrics.record_cache("analytics", hit=True)
    metrics.ALERTS_RAISED.labels(tenant="alpha", severity="critical").inc()
    metrics.WEBSOCKET_CLIENTS.labels(tenant="alpha").inc()
    get = REGISTRY.get_sample_value
    assert get("iiot_notification_deliveries_total", {"tenant": "alpha", "channel": "webhook", "outcome": "retried"}) >= 1
    assert get("iiot_notification_retries_total", {"channel": "webhook"}) >= 1
    assert get("iiot_cache_requests_total", {"cache": "analytics", "result": "hit"}) >= 1
    metrics.WEBSOCKET_CLIENTS.labels(tenant="alpha").dec()


@pytest.mark.django_db
def test_alerts_and_deliveries_counted_after_commit(alpha, django_capture_on_commit_callbacks):
    """Alert and delivery metrics come from the alerting models' saves, once committed."""
    from prometheus_client import REGISTRY

    from alerting import services as alerting_services
    from alerting.models import NotificationChannel, NotificationDelivery

    get = REGISTRY.get_sample_value

    def raised() -> float:
        return get("iiot_alerts_raised_total", {"tenant": "alpha", "severity": "major"}) or 0

    def delivered(outcome: str) -> float:
        return get("iiot_notification_deliveries_total", {"tenant": "alpha", "channel": "webhook", "outcome": outcome}) or 0

    before, sent_before, retried_before = raised(), delivered("sent"), delivered("retried")
    with schema_context("alpha"):
        with django_capture_on_commit_callbacks(execute=True):
            alert, created = alerting_services.raise_alert(
                rule_id=None, rule_name="m", device_id=None, severity="major", message="x", value=1.0, observed_at=datetime.now(UTC)
            )
        assert created and raised() == before + 1
        with django_capture_on_commit_callbacks(execute=True):
            alerting_services.raise_alert(
                rule_id=None, rule_name="m", device_id=None, severity="major", message="x", value=2.0, observed_at=datetime.now(UTC)
            )
        assert raised() == before + 1  # a repeat folds into the open alert
        channel = NotificationChannel.objects.create(name=f"hook-{uuid.uuid4().hex[:6]}", kind="webhook", config={"url": "https://example.com/h"})
        delivery = NotificationDelivery.objects.create(channel=channel, alert=alert, event_kind="triggered")
        delivery = NotificationDelivery.objects.select_related("channel").get(pk=delivery.pk)
        with django_capture_on_commit_callbacks(execute=True):
            delivery.status = "retrying"
            delivery.save(update_fields=["status"])
            delivery.status, delivery.finished_at = "succeeded", datetime.now(UTC)
            delivery.save(update_fields=["status", "finished_at"])
    assert delivered("retried") == retried_before + 1 and delivered("sent") == sent_before + 1


def test_multiprocess_files_are_named_by_host_and_pid_and_live_gauges_go_at_exit(tmp_path):
    """Two processes sharing one directory write their own files; the collector sums them; an
    exiting process removes its live gauges (mark_process_dead at exit) and keeps its counters."""
    import os
    import socket
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    script = (
        "import os, sys, iiot\n"
        "from iiot import metrics\n"
        "metrics.INGEST_PROCESSES.set(1)\n"
        "metrics.INGEST_POINTS_STORED.labels(tenant='alpha').inc(int(sys.argv[1]))\n"
        "print(os.getpid())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "iiot.settings"}
    pids = [subprocess.run([sys.executable, "-c", script, str(n)], env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
            for n in (3, 4)]
    host = socket.gethostname().replace("_", "-")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"counter_{host}-{pid}.db" for pid in pids)  # live gauge files removed at exit
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()
    assert 'iiot_ingest_points_stored_total{tenant="alpha"} 7.0' in text


@pytest.mark.django_db
def test_a_real_worker_process_records_into_the_shared_directory(alpha, metrics_broker, tmp_path, settings, monkeypatch):
    """`celery worker` as its own process (multiprocess mode): its task metrics reach /metrics and
    its task log line carries the enqueuing request's id and the tenant."""
    import signal
    import subprocess
    import sys

    from rest_framework.test import APIClient

    from iiot.request_context import request_id_var
    from telemetry.tests.test_ingest_support import ingest_env
    from tenants.tasks import describe_context

    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    queue = f"obs-{uuid.uuid4().hex[:8]}"
    env = ingest_env(
        metrics_broker,
        PROMETHEUS_MULTIPROC_DIR=str(multiproc),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        CELERY_RESULT_BACKEND=settings.CELERY_RESULT_BACKEND,
        CELERY_TASK_ALWAYS_EAGER="0",
    )
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "iiot", "worker", "--pool", "solo", "-Q", queue, "-l", "INFO", "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        assert wait_for(lambda: "ready" in log_path.read_text(errors="replace"), 60), log_path.read_text()[-2000:]
        app.conf.task_always_eager = False
        token = request_id_var.set("req-worker-9")
        try:
            with schema_context("alpha"):
                result = describe_context.apply_async(queue=queue)
        finally:
            request_id_var.reset(token)
        assert result.get(timeout=30) == {"schema": "alpha", "request_id": "req-worker-9"}

        def task_line():
            for line in log_path.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"iiot.celery.task"' in line:
                    entry = json.loads(line)
                    if entry.get("request_id") == "req-worker-9":
                        return entry
            return None

        entry = wait_for(task_line, 10)
        assert entry and entry["task"] == "tenants.describe_context" and entry["tenant"] == "alpha" and entry["outcome"] == "success"
        assert entry["duration_ms"] >= 0 and entry["task_id"] == result.id

        settings.METRICS_TOKEN = TOKEN
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc))
        samples = scrape(APIClient(HTTP_HOST="localhost"))
        before_files = value(samples, "iiot_celery_tasks_total", task="tenants.describe_context", outcome="success")
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
        own = value(scrape(APIClient(HTTP_HOST="localhost")), "iiot_celery_tasks_total", task="tenants.describe_context", outcome="success")
        assert before_files - own == 1  # exactly the worker process's run, from its file
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
