import pytest


@pytest.mark.parametrize("host", ["localhost", "alpha.localhost", "127.0.0.1"])
def test_healthz_answers_on_every_host(platform, db, client, host):
    response = client.get("/healthz", HTTP_HOST=host)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_every_dependency_up(platform, db, client):
    response = client.get("/readyz", HTTP_HOST="localhost")
    body = response.json()
    assert response.status_code == 200, body
    assert body["down"] == []
    assert set(body["checks"]) == {"postgres", "redis", "celery_broker", "mqtt"}
    assert all(check["ok"] for check in body["checks"].values())


def test_readyz_names_redis_when_it_is_down(platform, db, client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:6399/0"  # nothing listens there
    settings.READINESS_TIMEOUT_SECONDS = 0.5
    response = client.get("/readyz", HTTP_HOST="localhost")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "unavailable"
    assert body["down"] == ["redis"]
    assert body["checks"]["redis"]["url"] == "redis://127.0.0.1:6399/0"
    assert "Connection" in body["checks"]["redis"]["error"]
    assert body["checks"]["postgres"]["ok"] is True


def test_readyz_names_mqtt_and_broker_when_down(platform, db, client, settings):
    settings.MQTT_URL = "mqtt://127.0.0.1:1899"
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6398/1"
    settings.READINESS_TIMEOUT_SECONDS = 0.5
    response = client.get("/readyz", HTTP_HOST="alpha.localhost")
    assert response.status_code == 503
    assert response.json()["down"] == ["celery_broker", "mqtt"]


def test_readyz_redacts_passwords(platform, db, client, settings):
    settings.REDIS_URL = "redis://:s3cret@127.0.0.1:6399/0"
    settings.READINESS_TIMEOUT_SECONDS = 0.5
    body = client.get("/readyz", HTTP_HOST="localhost").json()
    assert "s3cret" not in str(body)


def test_probes_answer_by_ip_but_nothing_else_does(platform, db, client):
    assert client.get("/readyz", HTTP_HOST="127.0.0.1").status_code == 200
    assert client.get("/admin/", HTTP_HOST="127.0.0.1").status_code == 404
    assert client.get("/api/v1/users", HTTP_HOST="127.0.0.1").status_code == 404
