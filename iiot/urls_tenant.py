"""URLs on a tenant's host (`demo.localhost`): the API, the operator web and the tenant admin."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from accounts import views as account_views
from iiot import health, views
from iiot.observability import views as observability_views

api_v1 = [
    path("", include("accounts.api.urls")),
    path("", include("devices.api.urls")),
    path("", include("telemetry.api.urls")),
    path("", include("rules.api.urls")),
    path("", include("alerting.api.urls")),
    path("", include("analytics.api.urls")),
    path("schema/", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[], throttle_classes=[]), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema", permission_classes=[], throttle_classes=[]), name="swagger-ui"),
    path("redoc/", SpectacularRedocView.as_view(url_name="schema", permission_classes=[], throttle_classes=[]), name="redoc"),
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", observability_views.metrics, name="metrics"),
    path("api/v1/", include(api_v1)),
    path("admin/", admin.site.urls),
    path("login/", account_views.PlatformLoginView.as_view(), name="login"),
    path("logout/", account_views.logout_view, name="logout"),
    path("devices/", include("devices.urls")),
    path("alerts/", include("alerting.urls")),
    path("rules/", include("rules.urls")),
    path("", views.home, name="home"),
]

handler400 = "iiot.api.errors.handler400"
handler403 = "iiot.api.errors.handler403"
handler404 = "iiot.api.errors.handler404"
handler500 = "iiot.api.errors.handler500"
