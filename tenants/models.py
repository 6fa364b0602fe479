"""Tenants (one PostgreSQL schema each) and the hostnames that route to them."""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models
from django_tenants.models import DomainMixin, TenantMixin

slug_validator = RegexValidator(
    r"^[a-z][a-z0-9_]{1,47}$",
    "2-48 characters: lower-case letters, digits and underscores, starting with a letter.",
)


class TenantStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"


class TenantQuerySet(models.QuerySet):
    def active(self) -> TenantQuerySet:
        return self.filter(status=TenantStatus.ACTIVE)

    def customers(self) -> TenantQuerySet:
        from django_tenants.utils import get_public_schema_name

        return self.exclude(schema_name=get_public_schema_name())


class Tenant(TenantMixin):
    """A customer organisation. `slug` doubles as the schema name and the MQTT topic prefix."""

    slug = models.CharField(max_length=48, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=TenantStatus.choices, default=TenantStatus.ACTIVE)
    suspended_at = models.DateTimeField(null=True, blank=True)
    suspended_reason = models.CharField(max_length=500, blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    created_at = models.DateTimeField(auto_now_add=True)

    auto_create_schema = True
    auto_drop_schema = False

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.CheckConstraint(
                name="tenant_suspended_has_time",
                condition=models.Q(status="active", suspended_at__isnull=True)
                | models.Q(status="suspended", suspended_at__isnull=False),
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"

    @property
    def is_active(self) -> bool:
        return self.status == TenantStatus.ACTIVE

    @property
    def is_public(self) -> bool:
        from django_tenants.utils import get_public_schema_name

        return self.schema_name == get_public_schema_name()


class Domain(DomainMixin):
    """A hostname routed to a tenant (`demo.localhost`, `acme.example.com`)."""

    def __str__(self) -> str:
        return self.domain
