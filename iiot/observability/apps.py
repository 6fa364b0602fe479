from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "iiot.observability"
    label = "observability"
    verbose_name = "Observability"

    def ready(self) -> None:
        from iiot.observability import celery_signals, model_signals, multiprocess

        celery_signals.connect()
        model_signals.connect()
        multiprocess.import_app_metrics()
