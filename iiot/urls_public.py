"""URLs on the public host (`localhost`): the platform admin portal and the probes."""

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from iiot import health
from iiot.observability import views as observability_views

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", observability_views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("", RedirectView.as_view(url="/admin/", permanent=False), name="home"),
]

handler404 = "iiot.api.errors.handler404"
handler500 = "iiot.api.errors.handler500"
