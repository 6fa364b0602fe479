"""Operator pages for the device registry (tenant host)."""

from django.urls import path

from devices import views

app_name = "devices"

urlpatterns = [
    path("", views.fleet, name="fleet"),
    path("<int:pk>/", views.device_detail, name="detail"),
    path("<int:pk>/commands", views.device_command, name="command"),
]
