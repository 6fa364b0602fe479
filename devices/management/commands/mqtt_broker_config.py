"""Write the platform broker's files: DIR/mosquitto.conf and DIR/dynamic-security.json.

    python manage.py mqtt_broker_config --dir var/mosquitto --port 1884

Idempotent: device clients already in dynamic-security.json are kept; the admin and service
accounts are (re)set from MQTT_ADMIN_* / MQTT_SERVICE_*. Run it while that broker is stopped
(the plugin rewrites the file from memory). `make run` does it before starting the Procfile.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from devices.broker_config import BrokerConfigError, write_broker_config


class Command(BaseCommand):
    help = "Write mosquitto.conf and an initialised dynamic-security.json for the platform's broker."

    def add_arguments(self, parser):
        parser.add_argument("--dir", required=True, help="Directory for the config, dynsec file and persistence")
        parser.add_argument("--port", type=int, default=None, help="Listener port (default: the port of MQTT_URL)")
        parser.add_argument("--bind", default="127.0.0.1", help="Listener address (default 127.0.0.1)")

    def handle(self, *args, **options):
        port = options["port"] or urlsplit(settings.MQTT_URL).port or settings.IIOT_MQTT_PORT
        try:
            files = write_broker_config(Path(options["dir"]), port=port, bind_address=options["bind"])
        except BrokerConfigError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Wrote {files.config_file} (listener {options['bind']}:{port}) and {files.dynsec_file}")
