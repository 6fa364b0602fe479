from django.apps import AppConfig

# Periodic alerting upkeep (beat, database scheduler): merged into CELERY_BEAT_SCHEDULE when the
# app loads, next to the tasks they run.
BEAT_SCHEDULE = {
    "alerting-requeue-stale-deliveries": {"task": "alerting.requeue_stale_deliveries", "schedule": 60.0},
}


class AlertingConfig(AppConfig):
    name = "alerting"
    verbose_name = "Alerting"

    def ready(self) -> None:
        from iiot.celery import app

        app.conf.beat_schedule = {**BEAT_SCHEDULE, **(app.conf.beat_schedule or {})}
