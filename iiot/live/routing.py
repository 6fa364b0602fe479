"""WebSocket routes (mounted by iiot/asgi.py)."""

from django.urls import path

from iiot.live.consumers import LiveConsumer

websocket_urlpatterns = [
    path("ws/v1/live", LiveConsumer.as_asgi()),
]
