"""Who sees which admin pages: the public host manages tenants, a tenant host its own objects.

Every ModelAdmin of the platform mixes in one of the host mixins; `ReadOnlyAdminMixin` is for
rows that only services write (audit entries, credentials, commands).
"""

from __future__ import annotations


class _HostScopedAdminMixin:
    serves_public_host: bool

    def _on_its_host(self, request) -> bool:
        tenant = getattr(request, "tenant", None)
        return tenant is not None and tenant.is_public == self.serves_public_host

    def has_module_permission(self, request) -> bool:
        return self._on_its_host(request) and super().has_module_permission(request)

    def has_view_permission(self, request, obj=None) -> bool:
        return self._on_its_host(request) and super().has_view_permission(request, obj)

    def has_add_permission(self, request, *args) -> bool:
        return self._on_its_host(request) and super().has_add_permission(request, *args)

    def has_change_permission(self, request, obj=None) -> bool:
        return self._on_its_host(request) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self._on_its_host(request) and super().has_delete_permission(request, obj)


class PublicHostOnlyAdminMixin(_HostScopedAdminMixin):
    """Platform objects (tenants, domains): only platform staff on the public host."""

    serves_public_host = True


class TenantHostOnlyAdminMixin(_HostScopedAdminMixin):
    """Tenant objects (roles, devices, ...): only on a tenant's host, never on the public one."""

    serves_public_host = False


class ReadOnlyAdminMixin:
    """Rows only services write: listed and viewed, never added, changed or deleted here."""

    def has_add_permission(self, request, *args) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
