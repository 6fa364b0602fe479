"""Structured logs: JSON with request id and tenant; a rotating file (10 MB x 5) when LOG_FILE is set."""

import importlib
import json
import logging
import logging.config
import os

import pytest


def test_log_file_setting_adds_a_rotating_json_handler(tmp_path, monkeypatch):
    log_file = tmp_path / "iiot.log"
    monkeypatch.setenv("LOG_FILE", str(log_file))
    import iiot.settings as settings_module

    try:
        fresh = importlib.reload(settings_module)
        handler = fresh.LOGGING["handlers"]["file"]
        assert handler["class"] == "logging.handlers.RotatingFileHandler"
        assert handler["maxBytes"] == 10 * 1024 * 1024 and handler["backupCount"] == 5
        assert "file" in fresh.LOGGING["root"]["handlers"]
        logging.config.dictConfig(fresh.LOGGING)
        logging.getLogger("iiot.test").warning("hello", extra={"answer": 42})
        for h in logging.getLogger().handlers:
            h.flush()
        line = json.loads(log_file.read_text().splitlines()[-1])
        assert line["message"] == "hello" and line["answer"] == 42
        assert {"time", "level", "logger", "request_id", "tenant"} <= set(line)
    finally:
        monkeypatch.delenv("LOG_FILE")
        restored = importlib.reload(settings_module)
        logging.config.dictConfig(restored.LOGGING)


def test_secret_key_is_required_when_debug_is_off(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    import iiot.settings as settings_module

    monkeypatch.setenv("DEBUG", "0")
    monkeypatch.delenv("SECRET_KEY")
    try:
        with pytest.raises(ImproperlyConfigured, match="SECRET_KEY"):
            importlib.reload(settings_module)
    finally:
        monkeypatch.setenv("SECRET_KEY", os.environ.get("SECRET_KEY", "test-secret-key-not-for-production"))
        monkeypatch.undo()
        importlib.reload(settings_module)


def test_secure_flag_turns_on_cookies_and_hsts(monkeypatch):
    import iiot.settings as settings_module

    monkeypatch.setenv("IIOT_SECURE", "1")
    try:
        fresh = importlib.reload(settings_module)
        assert fresh.SESSION_COOKIE_SECURE and fresh.CSRF_COOKIE_SECURE
        assert fresh.SECURE_HSTS_SECONDS == 31536000 and fresh.SECURE_SSL_REDIRECT
    finally:
        monkeypatch.undo()
        fresh = importlib.reload(settings_module)
        assert not fresh.SESSION_COOKIE_SECURE and fresh.SECURE_HSTS_SECONDS == 0


@pytest.mark.django_db
def test_access_log_line_has_request_id_and_tenant(alpha, caplog):
    with caplog.at_level(logging.INFO, logger="iiot.access"):
        response = alpha.client("viewer").get("/api/v1/roles", HTTP_X_REQUEST_ID="trace-77")
    (record,) = [r for r in caplog.records if r.name == "iiot.access"]
    assert record.request_id == "trace-77"
    assert record.tenant == "alpha"
    assert record.status == response.status_code == 200
    assert record.path == "/api/v1/roles" and record.duration_ms >= 0
