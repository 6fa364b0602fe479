"""Public tenant, platform superuser and the demo tenant, from the environment (make run)."""

from __future__ import annotations

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from tenants import services


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser) -> None:
        parser.add_argument("--demo-slug", default="demo")
        parser.add_argument("--demo-domain", default="demo.localhost")

    def handle(self, *args, **options) -> None:
        services.ensure_public_tenant(settings.IIOT_PUBLIC_DOMAIN)
        _, created = services.ensure_platform_admin(email=settings.IIOT_ADMIN_EMAIL, password=settings.IIOT_ADMIN_PASSWORD)
        self.stdout.write(f"platform admin {settings.IIOT_ADMIN_EMAIL}: {'created' if created else 'already there'}")
        call_command(
            "provision_tenant",
            slug=options["demo_slug"],
            name="Demo Plant",
            domain=options["demo_domain"],
            admin_email=settings.IIOT_DEMO_ADMIN_EMAIL,
            admin_password=settings.IIOT_DEMO_ADMIN_PASSWORD,
            stdout=self.stdout,
        )
