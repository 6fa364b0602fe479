"""Rules pages (tenant host, server-rendered)."""

from django.urls import path

from rules import views

app_name = "rules"

urlpatterns = [
    path("", views.rule_list, name="list"),
    path("new", views.rule_create, name="create"),
    path("<int:pk>/", views.rule_edit, name="edit"),
    path("backtest", views.rule_backtest, name="backtest"),
]
