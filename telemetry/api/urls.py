"""Telemetry and ingest API routes (filled by the telemetry work)."""

urlpatterns: list = []
