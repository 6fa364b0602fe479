"""Live operations over WebSocket (`/ws/v1/live`, protocol in docs/websocket.md).

One package, one role per file:
    middleware.py  tenant from the Host header, then session-cookie or JWT auth (ASGI)
    consumers.py   LiveConsumer: the JSON protocol, per-connection coalescing and slow-client policy
    hub.py         one Redis pub/sub subscription per web process, fan-out to local consumers in memory
    streaming.py   the ingest streaming hook: coalesces points per device, one PUBLISH per tenant per tick
    events.py      device status and alert events for the channel layer (sent after commit)
    protocol.py    message shapes, close codes, parsing of client messages
    routing.py     websocket_urlpatterns for iiot/asgi.py
"""
