"""API routes of the analytics app (included under /api/v1/)."""

urlpatterns: list = []
