"""`python manage.py export_grafana --tenant SLUG [--out DIR]`: the tenant-aware Grafana dashboards
(deploy/grafana/dashboards) fixed to one tenant's schema, one JSON file each, ready for Grafana's
dashboard import or a provisioning directory of that tenant's folder or organisation."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from iiot.observability.grafana import export_for_tenant


class Command(BaseCommand):
    help = "Write the Grafana dashboards for one tenant (the tenant variable fixed to its schema)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", required=True, help="The tenant's slug.")
        parser.add_argument("--out", default=None, help="Directory to write into (default: var/grafana/<slug>).")

    def handle(self, *args, **options) -> None:
        from django_tenants.utils import get_public_schema_name

        from tenants.models import Tenant

        slug = options["tenant"]
        tenant = Tenant.objects.exclude(schema_name=get_public_schema_name()).filter(slug=slug).first()
        if tenant is None:
            raise CommandError(f'No tenant with slug "{slug}".')
        out = Path(options["out"] or Path("var") / "grafana" / slug)
        written = export_for_tenant(schema=tenant.schema_name, slug=tenant.slug, name=tenant.name, out=out)
        for path in written:
            self.stdout.write(str(path))
        self.stdout.write(self.style.SUCCESS(f"{len(written)} dashboards for {tenant.slug} in {out}"))
