from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    name = "telemetry"
    verbose_name = "Telemetry"

    def ready(self) -> None:
        # Registry changes are published to the ingest processes (telemetry/registry.py).
        from telemetry.registry import connect_signals

        connect_signals()
