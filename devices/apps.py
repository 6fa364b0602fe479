from django.apps import AppConfig

# Periodic device upkeep (beat, database scheduler): merged into CELERY_BEAT_SCHEDULE when the app
# loads, so the entries live next to the tasks they run and settings keep other apps' entries.
BEAT_SCHEDULE = {
    "devices-mark-stale-offline": {"task": "devices.mark_stale_devices_offline", "schedule": 30.0},
    "devices-expire-commands": {"task": "devices.expire_commands", "schedule": 5.0},
    "devices-reconcile-broker": {"task": "devices.reconcile_broker", "schedule": 300.0},
}


class DevicesConfig(AppConfig):
    name = "devices"
    verbose_name = "Devices"

    def ready(self) -> None:
        from iiot.celery import app

        app.conf.beat_schedule = {**BEAT_SCHEDULE, **(app.conf.beat_schedule or {})}
