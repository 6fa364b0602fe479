"""ASGI entry point: HTTP through Django (django-tenants routes by host), WebSocket through
Channels: `/ws/v1/live` (iiot/live/, protocol in docs/websocket.md) behind LiveAuthMiddleware,
which resolves the tenant from the Host header and authenticates by session cookie or JWT."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iiot.settings")

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from iiot.live.middleware import LiveAuthMiddleware  # noqa: E402
from iiot.live.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": LiveAuthMiddleware(URLRouter(websocket_urlpatterns)),
    }
)
