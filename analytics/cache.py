"""Short-lived Redis cache of analytics results, keyed by tenant and parameters, invalidated by data.

The key holds the tenant schema, the endpoint, a digest of the normalised parameters and the
newest point time of every device involved (the latest values Redis keeps per device, see
`telemetry.storage.read_latest`): a new point changes that time, so the next request misses and
computes afresh, even within the TTL. The TTL (`ANALYTICS_CACHE_TTL`, seconds; 0 disables the
cache) only bounds how long an unused entry lingers. Hits and misses are counted per endpoint
(analytics/metrics.py). A cache outage never fails a request: the result is computed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import cache

from analytics.metrics import CACHE_HITS, CACHE_MISSES
from telemetry.storage import read_latest, ts_to_ms

logger = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_TTL_SECONDS = 30


def ttl_seconds() -> int:
    return int(getattr(settings, "ANALYTICS_CACHE_TTL", DEFAULT_TTL_SECONDS))


def data_version(schema: str, device_ids: Sequence[int]) -> str:
    """The newest point time (epoch ms) of each device, or "-" for a device without data."""
    latest = read_latest(schema, device_ids)
    parts = []
    for device_id in sorted(set(device_ids)):
        per_metric = latest.get(device_id) or {}
        newest = max((ts for ts, _value in per_metric.values()), default=None)
        parts.append(f"{device_id}@{ts_to_ms(newest) if newest else '-'}")
    return ",".join(parts)


def cache_key(schema: str, endpoint: str, params: dict[str, Any], version: str) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return f"{schema}:analytics:{endpoint}:{digest}:{hashlib.sha256(version.encode()).hexdigest()[:16]}"


def cached_result(
    *, schema: str, endpoint: str, device_ids: Sequence[int], params: dict[str, Any], compute: Callable[[], T]
) -> T:
    """`compute()`'s result, from the cache when an entry for the same tenant, parameters and data exists."""
    ttl = ttl_seconds()
    if ttl <= 0:
        return compute()
    try:
        key = cache_key(schema, endpoint, params, data_version(schema, device_ids))
        hit = cache.get(key)
    except Exception:  # Redis down: compute, count nothing
        logger.warning("analytics cache unavailable", extra={"endpoint": endpoint})
        return compute()
    if hit is not None:
        CACHE_HITS.labels(endpoint=endpoint).inc()
        return hit
    CACHE_MISSES.labels(endpoint=endpoint).inc()
    result = compute()
    try:
        cache.set(key, result, ttl)
    except Exception:
        logger.warning("analytics cache unavailable", extra={"endpoint": endpoint})
    return result
