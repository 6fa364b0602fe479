"""API routes of the alerting app (included under /api/v1/)."""

urlpatterns: list = []
