"""GET /api/v1/ingest/rejections: permission ingest:read, filters, tenant isolation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from telemetry.pipeline import Kind, Outcome, Reason, Rejection
from telemetry.rejections import RejectionRecorder, counters_key, dead_letters_key, device_counters_key
from telemetry.storage import redis_client


@pytest.fixture
def rejections(alpha, beta):
    client = redis_client()
    for schema in ("alpha", "beta"):
        client.delete(counters_key(schema), device_counters_key(schema), dead_letters_key(schema))
    recorder = RejectionRecorder(keep=3)
    now = datetime.now(UTC)
    for _ in range(5):
        outcome = Outcome(kind=Kind.TELEMETRY, schema="alpha", device_uid="pump-1",
                          rejections=[Rejection(Reason.OUT_OF_RANGE, 2, "temperature=999"), Rejection(Reason.UNKNOWN_METRIC, 1, "foo")])
        recorder.record("iiot/alpha/pump-1/telemetry", b'{"temperature": 999, "foo": 1}' + b" " * 300, outcome, at=now)
    recorder.record("iiot/alpha/pump-2/telemetry", b"nope", Outcome(kind=Kind.TELEMETRY, schema="alpha", device_uid="pump-2",
                    rejections=[Rejection(Reason.INVALID_JSON, 1, "bad")]), at=now)
    recorder.record("iiot/beta/b-1/telemetry", b"{}", Outcome(kind=Kind.TELEMETRY, schema="beta", device_uid="b-1",
                    rejections=[Rejection(Reason.INVALID_PAYLOAD, 1, "empty")]), at=now)
    recorder.flush()
    yield
    for schema in ("alpha", "beta"):
        client.delete(counters_key(schema), device_counters_key(schema), dead_letters_key(schema))


def test_rejections_totals_filters_and_bounded_dead_letters(alpha, rejections):
    response = alpha.client("developer").get("/api/v1/ingest/rejections")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["totals"] == {"out_of_range": 10, "unknown_metric": 5, "invalid_json": 1}
    assert body["by_device"] == {"pump-1": {"out_of_range": 10, "unknown_metric": 5}, "pump-2": {"invalid_json": 1}}
    assert len(body["dead_letters"]) == 3  # LTRIM keeps the newest N
    assert body["dead_letters"][0]["reason"] == "invalid_json" and body["dead_letters"][0]["excerpt"] == "nope"
    filtered = alpha.client("admin").get("/api/v1/ingest/rejections?device=pump-1&reason=out_of_range").json()
    assert filtered["totals"] == {"out_of_range": 10}
    assert all(d["device"] == "pump-1" and d["reason"] == "out_of_range" for d in filtered["dead_letters"])
    assert len(filtered["dead_letters"][0]["excerpt"]) <= 201  # bounded excerpt
    assert alpha.client("developer").get("/api/v1/ingest/rejections?reason=bogus").status_code == 400


def test_rejections_need_ingest_read_and_stay_in_their_tenant(alpha, beta, rejections):
    assert alpha.client("viewer").get("/api/v1/ingest/rejections").status_code == 403
    assert alpha.client().get("/api/v1/ingest/rejections").status_code == 401
    body = beta.client("admin").get("/api/v1/ingest/rejections").json()
    assert body["totals"] == {"invalid_payload": 1} and set(body["by_device"]) == {"b-1"}
    assert all(d["topic"].startswith("iiot/beta/") for d in body["dead_letters"])
