"""Platform admin portal (public host only): create, suspend and reactivate tenants."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError

from iiot.admin_access import PublicHostOnlyAdminMixin
from iiot.errors import ServiceConflict
from iiot.request_context import ClientInfo
from tenants import services
from tenants.models import Domain, Tenant


class TenantCreationForm(forms.ModelForm):
    domain = forms.CharField(max_length=253, help_text="Hostname that routes to this tenant, e.g. acme.localhost")
    admin_email = forms.EmailField()
    admin_password = forms.CharField(widget=forms.PasswordInput, min_length=10)

    class Meta:
        model = Tenant
        fields = ["slug", "name", "timezone"]

    def clean_domain(self) -> str:
        domain = self.cleaned_data["domain"].strip().lower()
        if Domain.objects.filter(domain=domain).exists():
            raise ValidationError("This domain already routes to a tenant.")
        return domain

    def clean_admin_password(self) -> str:
        password = self.cleaned_data["admin_password"]
        validate_password(password)
        return password


class DomainInline(admin.TabularInline):
    model = Domain
    extra = 0


@admin.register(Tenant)
class TenantAdmin(PublicHostOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["slug", "name", "status", "primary_domain", "created_at", "suspended_at"]
    list_filter = ["status"]
    search_fields = ["slug", "name", "domains__domain"]
    readonly_fields = ["schema_name", "status", "suspended_at", "suspended_reason", "created_at"]
    actions = ["suspend_selected", "reactivate_selected"]
    inlines = [DomainInline]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = TenantCreationForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return [*self.readonly_fields, "slug"]

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["slug", "name", "timezone", "domain", "admin_email", "admin_password"]
        return ["slug", "schema_name", "name", "timezone", "status", "suspended_at", "suspended_reason", "created_at"]

    @admin.display(description="Primary domain")
    def primary_domain(self, obj: Tenant) -> str:
        domain = obj.get_primary_domain()
        return domain.domain if domain else "-"

    def save_model(self, request, obj, form, change) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        try:
            result = services.provision_tenant(
                actor=request.user,
                client=ClientInfo.from_request(request),
                slug=form.cleaned_data["slug"],
                name=form.cleaned_data["name"],
                domain=form.cleaned_data["domain"],
                admin_email=form.cleaned_data["admin_email"],
                admin_password=form.cleaned_data["admin_password"],
            )
        except (ValidationError, ServiceConflict) as exc:
            messages.error(request, f"Tenant not created: {getattr(exc, 'message', exc)}")
            raise
        obj.pk = result.tenant.pk

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # deleting a tenant drops customer data: done deliberately, outside the portal

    @admin.action(description="Suspend selected tenants")
    def suspend_selected(self, request, queryset) -> None:
        for tenant in queryset:
            try:
                services.suspend_tenant(actor=request.user, client=ClientInfo.from_request(request), tenant=tenant, reason="Suspended from the admin portal")
            except ServiceConflict as exc:
                self.message_user(request, exc.message, messages.ERROR)
        self.message_user(request, "Suspended.")

    @admin.action(description="Reactivate selected tenants")
    def reactivate_selected(self, request, queryset) -> None:
        for tenant in queryset:
            services.reactivate_tenant(actor=request.user, client=ClientInfo.from_request(request), tenant=tenant)
        self.message_user(request, "Reactivated.")


@admin.register(Domain)
class DomainAdmin(PublicHostOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["domain", "tenant", "is_primary"]
    search_fields = ["domain", "tenant__slug"]
