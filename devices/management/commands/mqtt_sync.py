"""Bring a running broker in line with the registry.

    python manage.py mqtt_sync

Ensures the service account and every device's role, then enables or disables each device
client by the same rule as the `devices.reconcile_broker` task (enabled device, active
credential, active tenant) and removes clients of deleted devices.

Passwords cannot be pushed: the platform stores only hashes of device secrets. A device with an
active credential that the broker does not know (a new or wiped broker) is listed; rotate its
credential (API `POST /api/v1/devices/{id}/credentials` or the admin action) to restore it.
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from devices import broker, services


class Command(BaseCommand):
    help = "Push the service account, device roles and enabled/disabled states to the MQTT broker."

    def add_arguments(self, parser):
        parser.add_argument("--wait", type=float, default=0, help="Seconds to keep retrying while the broker is not up yet")

    def handle(self, *args, **options):
        deadline = time.monotonic() + options["wait"]
        while True:
            try:
                result = services.reconcile_broker(ensure_roles=True)
                break
            except broker.BrokerUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise CommandError(str(exc)) from exc
                time.sleep(1)
        self.stdout.write(f"enabled {len(result.enabled)}, disabled {len(result.disabled)}, removed {len(result.removed)} client(s)")
        if result.missing:
            self.stdout.write(
                self.style.WARNING(
                    f"{len(result.missing)} device(s) hold an active credential the broker does not know; "
                    "rotate their credentials: " + ", ".join(result.missing[:20])
                )
            )
