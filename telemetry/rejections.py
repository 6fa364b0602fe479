"""Rejected ingest input: counters per tenant, device and reason, and a bounded dead-letter log.

Redis layout (keys start with the tenant's schema, DESIGN.md):
    `{schema}:ingest:rejected`        hash  field `{reason}`            -> points/messages refused
    `{schema}:ingest:rejected:device` hash  field `{device_uid}|{reason}` -> same, per device
    `{schema}:ingest:dead_letters`    list  newest first, at most settings.INGEST_DEAD_LETTERS
                                             JSON entries {at, topic, device, reason, count, detail, excerpt}
Messages for tenants that do not exist are recorded under the public schema's keys (`public:...`),
so a platform operator sees them.

The ingest loop records into a `RejectionRecorder` (memory only) and flushes it with each batch:
one pipelined Redis round trip for everything rejected since the previous flush, never one per
message. A log line per rejected message is written at most `LOG_PER_SECOND` times a second; the
rest are summed into the next line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from django.conf import settings
from django_tenants.utils import get_public_schema_name

from telemetry.pipeline import Outcome, Reason

logger = logging.getLogger(__name__)

EXCERPT_BYTES = 200
LOG_PER_SECOND = 5
# At most this many dead letters are kept in memory per tenant between two flushes.
PENDING_DEAD_LETTERS = 200


def counters_key(schema: str) -> str:
    return f"{schema}:ingest:rejected"


def device_counters_key(schema: str) -> str:
    return f"{schema}:ingest:rejected:device"


def dead_letters_key(schema: str) -> str:
    return f"{schema}:ingest:dead_letters"


def excerpt(payload: bytes, limit: int = EXCERPT_BYTES) -> str:
    text = payload[:limit].decode("utf-8", errors="replace")
    return text + "…" if len(payload) > limit else text


class RejectionRecorder:
    """Accumulates rejections in memory; `flush()` writes them in one pipelined round trip."""

    def __init__(self, *, redis_url: str | None = None, keep: int | None = None) -> None:
        self.redis_url = redis_url or settings.REDIS_URL
        self.keep = keep if keep is not None else settings.INGEST_DEAD_LETTERS
        self.counts: Counter[tuple[str, str, str]] = Counter()  # (schema, uid, reason) -> n
        self.dead_letters: dict[str, list[bytes]] = {}
        self.total = 0
        self._redis = None
        self._log_window = 0.0
        self._logged = 0
        self._suppressed = 0

    def record(self, topic: str, payload: bytes, outcome: Outcome, *, at: datetime | None = None) -> None:
        if not outcome.rejections:
            return
        schema = outcome.schema if _tenant_known(outcome) else get_public_schema_name()
        uid = (outcome.device_uid or "")[:64]
        when = (at or datetime.now(UTC)).isoformat()
        pending = self.dead_letters.setdefault(schema, [])
        for rejection in outcome.rejections:
            self.counts[(schema, uid, rejection.reason.value)] += rejection.count
            self.total += rejection.count
            if len(pending) < PENDING_DEAD_LETTERS:
                pending.append(
                    orjson.dumps(
                        {
                            "at": when,
                            "topic": topic[:200],
                            "device": uid,
                            "reason": rejection.reason.value,
                            "count": rejection.count,
                            "detail": rejection.detail[:200],
                            "excerpt": excerpt(payload),
                        }
                    )
                )
        self._log(topic, outcome)

    def _log(self, topic: str, outcome: Outcome) -> None:
        now = time.monotonic()
        if now - self._log_window >= 1.0:
            self._log_window, self._logged = now, 0
        if self._logged >= LOG_PER_SECOND:
            self._suppressed += 1
            return
        self._logged += 1
        reasons = {r.reason.value: r.count for r in outcome.rejections}
        logger.info(
            "ingest rejected",
            extra={"topic": topic[:200], "reasons": reasons, "suppressed_since_last": self._suppressed},
        )
        self._suppressed = 0

    def take(self) -> tuple[Counter, dict[str, list[bytes]]]:
        """Hand the pending state to a flush (call on the event loop; flush elsewhere)."""
        counts, letters = self.counts, self.dead_letters
        self.counts, self.dead_letters = Counter(), {}
        return counts, letters

    def write(self, counts: Counter, letters: dict[str, list[bytes]]) -> None:
        """One pipelined round trip (safe to call from a worker thread). Raises redis errors."""
        if not counts and not letters:
            return
        if self._redis is None:
            from telemetry.storage import redis_client

            self._redis = redis_client(self.redis_url)
        pipe = self._redis.pipeline(transaction=False)
        for (schema, uid, reason), count in counts.items():
            pipe.hincrby(counters_key(schema), reason, count)
            if uid:
                pipe.hincrby(device_counters_key(schema), f"{uid}|{reason}", count)
        for schema, entries in letters.items():
            if entries:
                key = dead_letters_key(schema)
                pipe.lpush(key, *entries)
                pipe.ltrim(key, 0, self.keep - 1)
        pipe.execute()

    def flush(self) -> None:
        counts, letters = self.take()
        try:
            self.write(counts, letters)
        except Exception as exc:  # Redis down: keep the counts for the next flush (letters are best effort)
            self.counts.update(counts)
            logger.warning("ingest rejections not recorded: Redis unavailable", extra={"error": str(exc)})


def _tenant_known(outcome: Outcome) -> bool:
    return bool(outcome.schema) and not any(r.reason in (Reason.UNKNOWN_TENANT, Reason.INVALID_TOPIC) for r in outcome.rejections)


# --- Reading (API) -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RejectionSummary:
    totals: dict[str, int]
    by_device: dict[str, dict[str, int]]
    dead_letters: list[dict[str, Any]]


def read_rejections(schema: str, *, device: str | None = None, reason: str | None = None, limit: int | None = None) -> RejectionSummary:
    """Totals per reason, counters per device, and the dead letters (newest first), filtered."""
    from telemetry.storage import redis_client

    client = redis_client()
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(counters_key(schema))
    pipe.hgetall(device_counters_key(schema))
    pipe.lrange(dead_letters_key(schema), 0, settings.INGEST_DEAD_LETTERS - 1)
    totals_raw, devices_raw, letters_raw = pipe.execute()
    totals = {k.decode(): int(v) for k, v in totals_raw.items()}
    by_device: dict[str, dict[str, int]] = {}
    for field, value in devices_raw.items():
        uid, _, why = field.decode().rpartition("|")
        if device is not None and uid != device:
            continue
        by_device.setdefault(uid, {})[why] = int(value)
    if device is not None:
        totals = {}
        for counts in by_device.values():
            for why, n in counts.items():
                totals[why] = totals.get(why, 0) + n
    if reason is not None:
        totals = {k: v for k, v in totals.items() if k == reason}
        by_device = {uid: {k: v for k, v in counts.items() if k == reason} for uid, counts in by_device.items()}
        by_device = {uid: counts for uid, counts in by_device.items() if counts}
    letters = []
    for raw in letters_raw:
        entry = orjson.loads(raw)
        if device is not None and entry.get("device") != device:
            continue
        if reason is not None and entry.get("reason") != reason:
            continue
        letters.append(entry)
        if limit is not None and len(letters) >= limit:
            break
    return RejectionSummary(totals=totals, by_device=by_device, dead_letters=letters)
