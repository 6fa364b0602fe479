"""The alerts console (tenant host, server-rendered)."""

from django.urls import path

from alerting import views

app_name = "alerting"

urlpatterns = [
    path("", views.console, name="console"),
    path("<int:pk>/", views.alert_detail, name="detail"),
    path("<int:pk>/row", views.alert_row, name="row"),
    path("<int:pk>/acknowledge", views.acknowledge, name="acknowledge"),
    path("<int:pk>/resolve", views.resolve, name="resolve"),
    path("<int:pk>/notes", views.add_note, name="note"),
]
