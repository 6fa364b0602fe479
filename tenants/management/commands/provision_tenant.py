"""Create a tenant (schema, domain, default roles, first admin). Running it again is harmless."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from iiot.errors import ServiceConflict
from iiot.request_context import ClientInfo
from tenants import services


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser) -> None:
        parser.add_argument("--slug", required=True, help="Schema name and MQTT topic prefix, e.g. acme")
        parser.add_argument("--name", required=True, help="Display name")
        parser.add_argument("--domain", required=True, help="Hostname routed to the tenant, e.g. acme.localhost")
        parser.add_argument("--admin-email", required=True)
        parser.add_argument("--admin-password", required=True)

    def handle(self, *args, **options) -> None:
        try:
            result = services.provision_tenant(
                actor=None,
                client=ClientInfo(user_agent="manage.py provision_tenant"),
                slug=options["slug"],
                name=options["name"],
                domain=options["domain"],
                admin_email=options["admin_email"],
                admin_password=options["admin_password"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())) from exc
        except ServiceConflict as exc:
            raise CommandError(exc.message) from exc
        tenant = result.tenant
        self.stdout.write(
            f"tenant {tenant.slug}: {'created' if result.created_tenant else 'already there'}; "
            f"admin {options['admin_email']}: {'created' if result.created_admin else 'already there'}; "
            f"domain {options['domain']}"
        )
