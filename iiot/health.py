"""Liveness and readiness probes.

`/healthz` says the process serves requests. `/readyz` checks each dependency with a short
timeout and answers 503 naming what is down, so an orchestrator (or a person) sees the cause.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from urllib.parse import urlparse

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET


def _check_postgres() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_redis_url(url: str) -> None:
    timeout = settings.READINESS_TIMEOUT_SECONDS
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()


def _check_amqp_url(url: str) -> None:
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5672), settings.READINESS_TIMEOUT_SECONDS) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        if not sock.recv(1):
            raise ConnectionError("broker closed the connection")


def _check_celery_broker() -> None:
    url = settings.CELERY_BROKER_URL
    if url.startswith(("redis://", "rediss://")):
        _check_redis_url(url)
    elif url.startswith(("amqp://", "pyamqp://")):
        _check_amqp_url(url)
    else:
        raise ValueError(f"cannot probe broker scheme of {url.split(':', 1)[0]}")


def _check_mqtt() -> None:
    """Open a TCP connection and send an MQTT 3.1.1 CONNECT; any CONNACK means the broker answers."""
    parsed = urlparse(settings.MQTT_URL)
    client_id = b"iiot-readyz"
    variable = b"\x00\x04MQTT\x04\x02\x00\x05"  # protocol name, level 4, clean session, keepalive 5s
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = variable + payload
    packet = b"\x10" + bytes([len(body)]) + body
    with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 1883), settings.READINESS_TIMEOUT_SECONDS) as sock:
        sock.settimeout(settings.READINESS_TIMEOUT_SECONDS)
        sock.sendall(packet)
        reply = sock.recv(4)
        if not reply or reply[0] != 0x20:
            raise ConnectionError("no CONNACK from broker")
        sock.sendall(b"\xe0\x00")  # DISCONNECT


def checks() -> dict[str, tuple[Callable[[], None], str]]:
    """name -> (probe, where it is configured). Read at call time so settings overrides apply."""
    db = settings.DATABASES["default"]
    return {
        "postgres": (_check_postgres, f"postgres://{db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}/{db.get('NAME')}"),
        "redis": (lambda: _check_redis_url(settings.REDIS_URL), settings.REDIS_URL),
        "celery_broker": (_check_celery_broker, settings.CELERY_BROKER_URL),
        "mqtt": (_check_mqtt, settings.MQTT_URL),
    }


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def run_checks() -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    for name, (probe, where) in checks().items():
        started = time.perf_counter()
        try:
            probe()
            results[name] = {"ok": True}
        except Exception as exc:  # every failure is a "down", whatever raised it
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300], "url": _redact(where)}
        results[name]["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return results


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    results = run_checks()
    down = sorted(name for name, result in results.items() if not result["ok"])
    body = {"status": "ok" if not down else "unavailable", "down": down, "checks": results}
    return JsonResponse(body, status=200 if not down else 503)
