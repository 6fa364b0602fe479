"""API routes of the rules app (included under /api/v1/)."""

from rest_framework.routers import SimpleRouter

from rules.api import views

router = SimpleRouter(trailing_slash=False)
router.register("rules", views.RuleViewSet, basename="rule")

urlpatterns = [*router.urls]
