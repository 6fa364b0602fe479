"""Names of Redis pub/sub channels.

Redis pub/sub ignores the database number: two deployments (or two test runs) that share one
Redis server on different databases would hear each other's announcements. Every channel name
therefore carries the database of the Redis URL it is published on, after the tenant:
`{tenant}:db{n}:{topic}`. Subscribers use `pattern(topic)`.
"""

from __future__ import annotations

from urllib.parse import urlparse

from django.conf import settings


def namespace(url: str | None = None) -> str:
    path = urlparse(url or settings.REDIS_URL).path.strip("/") or "0"
    return f"db{path}"


def channel(schema: str, topic: str, *, url: str | None = None) -> str:
    """The tenant's channel for `topic` (e.g. `registry`, `rules`)."""
    return f"{schema}:{namespace(url)}:{topic}"


def pattern(topic: str, *, url: str | None = None) -> str:
    """Every tenant's channel for `topic` on this deployment (for PSUBSCRIBE)."""
    return f"*:{namespace(url)}:{topic}"


def schema_of(channel_name: str | bytes) -> str:
    text = channel_name.decode() if isinstance(channel_name, bytes) else channel_name
    return text.split(":", 1)[0]
