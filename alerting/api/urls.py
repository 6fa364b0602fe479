"""API routes of the alerting app (included under /api/v1/)."""

from rest_framework.routers import SimpleRouter

from alerting.api import views

router = SimpleRouter(trailing_slash=False)
router.register("alerts", views.AlertViewSet, basename="alert")
router.register("notification-channels", views.NotificationChannelViewSet, basename="notification-channel")

urlpatterns = [*router.urls]
