"""Rules in the tenant's Django admin: writes go through rules.services (audited, announced to the
ingest processes)."""

from __future__ import annotations

from django.contrib import admin

from iiot.admin_access import TenantHostOnlyAdminMixin
from iiot.request_context import ClientInfo
from rules import services
from rules.models import Rule

EDITABLE = list(services.RULE_FIELDS)


@admin.register(Rule)
class RuleAdmin(TenantHostOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["name", "type", "severity", "enabled", "target_kind", "cooldown_s", "updated_at"]
    list_filter = ["type", "severity", "enabled", "target_kind"]
    search_fields = ["name", "description"]
    raw_id_fields = ["target_device", "target_profile"]
    fields = EDITABLE
    readonly_fields = ["created_by_email", "created_at", "updated_at"]

    def get_fields(self, request, obj=None):
        return [*EDITABLE, *self.readonly_fields] if obj else EDITABLE

    def save_model(self, request, obj, form, change) -> None:
        client = ClientInfo.from_request(request)
        data = {name: form.cleaned_data[name] for name in EDITABLE if name in form.cleaned_data}
        if change:
            services.update_rule(actor=request.user, client=client, rule=obj, **data)
        else:
            obj.pk = services.create_rule(actor=request.user, client=client, **data).pk

    def delete_model(self, request, obj) -> None:
        services.delete_rule(actor=request.user, client=ClientInfo.from_request(request), rule=obj)

    def delete_queryset(self, request, queryset) -> None:
        for rule in queryset:
            self.delete_model(request, rule)
