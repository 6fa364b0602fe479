"""API routes of the rules app (included under /api/v1/)."""

urlpatterns: list = []
