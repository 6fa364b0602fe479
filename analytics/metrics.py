"""Prometheus counters of the analytics app (exposed by the project's /metrics endpoint).

The cache hit rate is hits / (hits + misses), per endpoint.
"""

from __future__ import annotations

from prometheus_client import Counter

CACHE_HITS = Counter("iiot_analytics_cache_hits_total", "Analytics results served from the Redis cache.", ["endpoint"])
CACHE_MISSES = Counter("iiot_analytics_cache_misses_total", "Analytics results computed (not in the cache).", ["endpoint"])
