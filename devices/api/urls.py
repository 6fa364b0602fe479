"""Device registry API routes (under /api/v1/)."""

from rest_framework.routers import SimpleRouter

from devices.api import views

router = SimpleRouter(trailing_slash=False)
router.register("device-profiles", views.DeviceProfileViewSet, basename="device-profile")
router.register("devices", views.DeviceViewSet, basename="device")

urlpatterns = [*router.urls]
