"""Factories and local servers for the alerting tests (real PostgreSQL, Redis, SMTP and HTTP on 127.0.0.1)."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django_tenants.utils import schema_context

from devices.tests.conftest import make_device

_counter = itertools.count(1)


def fire(schema: str, *, rule_id: int | None = None, device=None, severity: str = "major", value: float | None = 80.0, **extra):
    """raise_alert in the tenant's schema; returns (alert, created)."""
    from alerting import services

    with schema_context(schema):
        return services.raise_alert(
            rule_id=rule_id if rule_id is not None else 9000 + next(_counter),
            rule_name=extra.pop("rule_name", "Boiler too hot"),
            device_id=getattr(device, "pk", device),
            severity=severity,
            message=extra.pop("message", "temperature 80 > 75"),
            value=value,
            observed_at=extra.pop("observed_at", datetime.now(UTC)),
            **extra,
        )


def make_alert(schema: str, **kwargs):
    return fire(schema, **kwargs)[0]


def make_channel(schema: str, kind: str = "webhook", config: dict | None = None, **fields):
    from alerting import services

    defaults = {"webhook": {"url": "https://hooks.example.com/iiot"}, "email": {"recipients": ["ops@example.com"]}, "live": {}}
    with schema_context(schema):
        channel, _secret = services.create_channel(
            actor=None,
            client=None,
            name=fields.pop("name", f"{kind}-{next(_counter)}"),
            kind=kind,
            config=config if config is not None else defaults[kind],
            **fields,
        )
    return channel


@pytest.fixture
def device(alpha):
    return make_device("alpha")


@pytest.fixture
def eager_tasks():
    """Celery tasks run inline (retries too, without their countdown)."""
    from iiot.celery import app

    before = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, False
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = before


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- a webhook receiver -------------------------------------------------------------------------


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class WebhookReceiver:
    """HTTP server on 127.0.0.1 answering each POST with the next scripted (status, headers, delay)."""

    server: ThreadingHTTPServer
    scheme: str = "http"
    requests: list[ReceivedRequest] = field(default_factory=list)
    script: list[tuple[int, dict[str, str], float]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/hooks/iiot?team=ops"

    def answer(self, *responses: int | tuple[int, dict[str, str]] | tuple[int, dict[str, str], float]) -> None:
        for response in responses:
            if isinstance(response, int):
                response = (response, {}, 0.0)
            elif len(response) == 2:
                response = (*response, 0.0)
            self.script.append(response)

    def json(self, index: int = -1) -> dict:
        return json.loads(self.requests[index].body)


def start_receiver(ssl_context=None) -> WebhookReceiver:
    state: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            hook: WebhookReceiver = state["receiver"]
            hook.requests.append(ReceivedRequest(self.path, {k: v for k, v in self.headers.items()}, body, time.monotonic()))
            status, headers, delay = hook.script.pop(0) if hook.script else (200, {}, 0.0)
            if delay:
                time.sleep(delay)
            payload = b'{"ok": true}'
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    hook = state["receiver"] = WebhookReceiver(server=server, scheme="https" if ssl_context is not None else "http")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return hook


def stop_receiver(hook: WebhookReceiver) -> None:
    hook.server.shutdown()
    hook.server.server_close()


@pytest.fixture
def receiver():
    hook = start_receiver()
    yield hook
    stop_receiver(hook)


# --- an SMTP server -----------------------------------------------------------------------------


@pytest.fixture
def smtp_server(settings):
    """aiosmtpd on a free port of 127.0.0.1; Django's SMTP backend points at it."""
    from aiosmtpd.controller import Controller

    class Sink:
        def __init__(self) -> None:
            self.envelopes: list = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's naming)
            self.envelopes.append(envelope)
            return "250 Message accepted for delivery"

    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = port
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    yield sink
    controller.stop()
