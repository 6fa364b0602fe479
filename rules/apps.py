from django.apps import AppConfig
from django.conf import settings

# Windowed rules (beat, database scheduler): merged into CELERY_BEAT_SCHEDULE when the app loads.
# `expires`: a run that could not start within one interval is dropped (the next one supersedes it).
BEAT_SCHEDULE = {
    "rules-evaluate-windowed": {
        "task": "rules.evaluate_windowed",
        "schedule": settings.RULES_WINDOW_INTERVAL_S,
        "options": {"expires": settings.RULES_WINDOW_INTERVAL_S},
    },
}


class RulesConfig(AppConfig):
    name = "rules"
    verbose_name = "Rules"

    def ready(self) -> None:
        from iiot.celery import app

        app.conf.beat_schedule = {**BEAT_SCHEDULE, **(app.conf.beat_schedule or {})}
