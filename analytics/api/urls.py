"""API routes of the analytics app (included under /api/v1/, paths from the seed's Feature 1)."""

from django.urls import path

from analytics.api import views

urlpatterns = [
    path("analytics/timeseries/<int:device_id>/<str:metric>", views.TimeseriesView.as_view(), name="analytics-timeseries"),
    path("analytics/trends/<int:device_id>/<str:metric>", views.TrendView.as_view(), name="analytics-trends"),
    path("analytics/statistics/<int:device_id>/<str:metric>", views.StatisticsView.as_view(), name="analytics-statistics"),
    path("analytics/correlation/<int:device_id>", views.CorrelationView.as_view(), name="analytics-correlation"),
    path("analytics/forecast/<int:device_id>/<str:metric>", views.ForecastView.as_view(), name="analytics-forecast"),
]
