"""Device registry API routes (filled by the devices work)."""

urlpatterns: list = []
