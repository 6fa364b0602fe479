"""Telemetry API routes (under /api/v1/, no trailing slashes)."""

from django.urls import path

from telemetry.api import rejections, views

urlpatterns = [
    path("devices/<int:device_id>/telemetry", views.SeriesView.as_view(), name="device-telemetry"),
    path("devices/<int:device_id>/telemetry/latest", views.LatestView.as_view(), name="device-telemetry-latest"),
    path("devices/<int:device_id>/telemetry/export.csv", views.ExportCSVView.as_view(), name="device-telemetry-export"),
    path("metrics", views.MetricListView.as_view(), name="metric-list"),
    path("ingest/rejections", rejections.RejectionsView.as_view(), name="ingest-rejections"),
]
