"""Users, roles and the (read-only) audit log in the Django admin.

Changes go through the account services, so the admin writes the same audit entries as the API.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from accounts import services
from accounts.models import AuditLog, Role, User
from accounts.permissions import PERMISSIONS
from iiot.admin_access import ReadOnlyAdminMixin, TenantHostOnlyAdminMixin
from iiot.request_context import ClientInfo


class RoleForm(forms.ModelForm):
    permissions = forms.MultipleChoiceField(choices=[(name, f"{name} — {text}") for name, text in PERMISSIONS.items()], widget=forms.CheckboxSelectMultiple, required=False)

    class Meta:
        model = Role
        fields = ["name", "description", "permissions"]


@admin.register(Role)
class RoleAdmin(TenantHostOnlyAdminMixin, admin.ModelAdmin):
    form = RoleForm
    list_display = ["name", "description", "is_system", "permission_count"]
    list_filter = ["is_system"]
    search_fields = ["name"]

    @admin.display(description="Permissions")
    def permission_count(self, obj: Role) -> int:
        return len(obj.permissions)

    def has_change_permission(self, request, obj=None) -> bool:
        return super().has_change_permission(request, obj) and not (obj and obj.is_system)

    def has_delete_permission(self, request, obj=None) -> bool:
        return super().has_delete_permission(request, obj) and not (obj and obj.is_system)

    def save_model(self, request, obj, form, change) -> None:
        client = ClientInfo.from_request(request)
        data = {key: form.cleaned_data[key] for key in ("name", "description", "permissions")}
        if change:
            services.update_role(actor=request.user, client=client, role=obj, **data)
        else:
            created = services.create_role(actor=request.user, client=client, **data)
            obj.pk = created.pk

    def delete_model(self, request, obj) -> None:
        services.delete_role(actor=request.user, client=ClientInfo.from_request(request), role=obj)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ["email"]
    list_display = ["email", "full_name", "is_active", "is_staff", "role_names", "last_login"]
    list_filter = ["is_active", "is_staff", "roles"]
    search_fields = ["email", "full_name"]
    filter_horizontal = ["roles"]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        ("Profile", {"fields": ["full_name"]}),
        ("Access", {"fields": ["is_active", "is_staff", "is_superuser", "roles"]}),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]})]
    readonly_fields = ["last_login", "date_joined"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("roles")

    @admin.display(description="Roles")
    def role_names(self, obj: User) -> str:
        return ", ".join(role.name for role in obj.roles.all())

    def save_related(self, request, form, formsets, change) -> None:
        before = sorted(form.instance.roles.values_list("name", flat=True)) if change else []
        super().save_related(request, form, formsets, change)
        after = sorted(form.instance.roles.values_list("name", flat=True))
        action = "user.update" if change else "user.create"
        changes = services.diff({key: form.initial.get(key) for key in form.changed_data if key not in ("password", "password1", "password2", "roles")},
                                {key: form.cleaned_data.get(key) for key in form.changed_data if key not in ("password", "password1", "password2", "roles")})
        if before != after:
            changes["roles"] = [before, after]
        services.record_audit(action, actor=request.user, client=ClientInfo.from_request(request), target=form.instance, changes=changes, metadata={"via": "admin"})

    def delete_model(self, request, obj) -> None:
        services.delete_user(actor=request.user, client=ClientInfo.from_request(request), user=obj)


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only: the audit trail is append-only for everyone, superusers included."""

    list_display = ["created_at", "action", "outcome", "actor_email", "target_type", "target_repr", "ip"]
    list_filter = ["outcome", "action"]
    search_fields = ["actor_email", "target_repr", "action", "request_id"]
    date_hierarchy = "created_at"
