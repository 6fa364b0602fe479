"""Tenant lifecycle: provision (idempotent), suspend, reactivate. Audited in the public schema."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, schema_context

from accounts import services as account_services
from accounts.models import Role, User
from iiot.errors import ServiceConflict
from iiot.request_context import ClientInfo
from tenants.models import Domain, Tenant, TenantStatus


@dataclass(frozen=True)
class ProvisionResult:
    tenant: Tenant
    created_tenant: bool
    created_admin: bool


def _audit_public(action: str, *, actor: User | None, client: ClientInfo | None, tenant: Tenant, **extra) -> None:
    with schema_context(get_public_schema_name()):
        account_services.record_audit(
            action,
            actor=actor,
            client=client,
            target=tenant,
            target_id=tenant.slug,
            tenant=tenant.schema_name,
            **extra,
        )


def ensure_public_tenant(domain: str) -> Tenant:
    """The public schema's tenant row and its host (the platform admin portal)."""
    public = get_public_schema_name()
    with schema_context(public):
        tenant, _ = Tenant.objects.get_or_create(schema_name=public, defaults={"slug": "public", "name": "Platform"})
        Domain.objects.get_or_create(domain=domain, defaults={"tenant": tenant, "is_primary": True})
    return tenant


def ensure_platform_admin(*, email: str, password: str) -> tuple[User, bool]:
    """A platform superuser in the public schema (staff of the platform operator)."""
    with schema_context(get_public_schema_name()):
        user = User.objects.filter(email__iexact=email).first()
        if user is not None:
            return user, False
        return User.objects.create_superuser(email=email, password=password), True


def provision_tenant(
    *,
    actor: User | None,
    client: ClientInfo | None,
    slug: str,
    name: str,
    domain: str,
    admin_email: str,
    admin_password: str,
) -> ProvisionResult:
    """Create (or complete) a tenant: schema, primary domain, default roles and a first admin.

    Safe to run again: existing pieces are kept, missing ones are added, the admin's password is
    never overwritten.
    """
    public = get_public_schema_name()
    probe = Tenant(slug=slug, schema_name=slug, name=name)
    try:
        probe.full_clean(exclude=["schema_name"], validate_unique=False)
    except ValidationError as exc:
        raise ValidationError(exc.message_dict) from exc
    if slug == public:
        raise ValidationError({"slug": [f'"{public}" is reserved.']})

    with schema_context(public):
        existing_domain = Domain.objects.select_related("tenant").filter(domain=domain).first()
        if existing_domain is not None and existing_domain.tenant.slug != slug:
            raise ServiceConflict(f'Domain "{domain}" already routes to tenant "{existing_domain.tenant.slug}".', "domain_taken")
        tenant = Tenant.objects.filter(slug=slug).first()
        created_tenant = tenant is None
        if created_tenant:
            # Creating the schema runs every tenant migration; it cannot share a transaction.
            tenant = Tenant(slug=slug, schema_name=slug, name=name)
            tenant.save()
        Domain.objects.get_or_create(domain=domain, defaults={"tenant": tenant, "is_primary": not tenant.domains.exists()})

    with schema_context(tenant.schema_name):
        with transaction.atomic():
            account_services.sync_default_roles()
            user = User.objects.filter(email__iexact=admin_email).first()
            created_admin = user is None
            if created_admin:
                user = account_services.create_user(
                    actor=None,
                    client=client,
                    email=admin_email,
                    password=admin_password,
                    full_name="Tenant administrator",
                    roles=[Role.objects.get(name="admin")],
                    is_staff=True,
                )
                user.is_superuser = True  # full Django-admin rights inside this tenant's schema only
                user.save(update_fields=["is_superuser"])
    if created_tenant:
        _audit_public(
            "tenant.create",
            actor=actor,
            client=client,
            tenant=tenant,
            changes={"slug": [None, slug], "name": [None, name], "domain": [None, domain]},
        )
    return ProvisionResult(tenant=tenant, created_tenant=created_tenant, created_admin=created_admin)


def suspend_tenant(*, actor: User | None, client: ClientInfo | None, tenant: Tenant, reason: str = "") -> Tenant:
    with schema_context(get_public_schema_name()), transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if tenant.is_public:
            raise ServiceConflict("The public tenant cannot be suspended.", "public_tenant")
        if tenant.status == TenantStatus.SUSPENDED:
            return tenant
        tenant.status = TenantStatus.SUSPENDED
        tenant.suspended_at = timezone.now()
        tenant.suspended_reason = reason[:500]
        tenant.save(update_fields=["status", "suspended_at", "suspended_reason"])
        _audit_public(
            "tenant.suspend",
            actor=actor,
            client=client,
            tenant=tenant,
            changes={"status": [TenantStatus.ACTIVE, TenantStatus.SUSPENDED]},
            metadata={"reason": reason},
        )
        # The broker refuses the tenant's devices (and disconnects them) once this commits.
        from devices.services import tenant_broker_access_on_commit

        tenant_broker_access_on_commit(schema=tenant.schema_name, enabled=False)
    return tenant


def reactivate_tenant(*, actor: User | None, client: ClientInfo | None, tenant: Tenant) -> Tenant:
    with schema_context(get_public_schema_name()), transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if tenant.status == TenantStatus.ACTIVE:
            return tenant
        tenant.status = TenantStatus.ACTIVE
        tenant.suspended_at = None
        tenant.suspended_reason = ""
        tenant.save(update_fields=["status", "suspended_at", "suspended_reason"])
        _audit_public(
            "tenant.reactivate", actor=actor, client=client, tenant=tenant, changes={"status": [TenantStatus.SUSPENDED, TenantStatus.ACTIVE]}
        )
        from devices.services import tenant_broker_access_on_commit

        tenant_broker_access_on_commit(schema=tenant.schema_name, enabled=True)
    return tenant


def tenant_is_active(schema_name: str) -> bool:
    """For non-HTTP entry points (ingest, tasks): whether a tenant's devices may be served."""
    with schema_context(get_public_schema_name()):
        return Tenant.objects.filter(schema_name=schema_name, status=TenantStatus.ACTIVE).exists()
