"""Alerts and notification channels in the tenant's Django admin. State changes go through the
alerting services (same locks, timeline events and audit entries as the API); state fields are
read-only here."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

from alerting import selectors, services
from alerting.models import Alert, AlertEvent, NotificationChannel, NotificationDelivery
from iiot.admin_access import ReadOnlyAdminMixin, TenantHostOnlyAdminMixin
from iiot.errors import ServiceConflict
from iiot.request_context import ClientInfo


class AlertEventInline(admin.TabularInline):
    model = AlertEvent
    extra = 0
    fields = ["at", "kind", "actor_email", "text", "data"]
    readonly_fields = fields
    can_delete = False
    ordering = ["at", "id"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Alert)
class AlertAdmin(TenantHostOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "rule_name",
        "device_uid",
        "severity",
        "state",
        "count",
        "first_seen_at",
        "last_seen_at",
        "auto_resolved",
    ]
    list_filter = ["state", "severity", "auto_resolved"]
    search_fields = ["rule_name", "device_uid", "message"]
    date_hierarchy = "first_seen_at"
    readonly_fields = [
        "fingerprint",
        "rule_id",
        "rule_name",
        "device",
        "device_uid",
        "severity",
        "state",
        "message",
        "value",
        "details",
        "count",
        "first_seen_at",
        "last_seen_at",
        "acknowledged_at",
        "acknowledged_by",
        "resolved_at",
        "resolved_by",
        "auto_resolved",
    ]
    fields = readonly_fields
    inlines = [AlertEventInline]
    actions = ["acknowledge_alerts", "resolve_alerts"]

    def get_queryset(self, request):
        return selectors.alerts()

    def has_add_permission(self, request, *args) -> bool:
        return False  # alerts are raised by rules

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # the timeline and SLA figures are history

    def _transition(self, request, queryset, service, verb: str) -> None:
        client = ClientInfo.from_request(request)
        done = 0
        for alert_id in queryset.order_by("pk").values_list("pk", flat=True):
            try:
                _, changed = service(actor=request.user, client=client, alert_id=alert_id)
            except ServiceConflict as exc:
                self.message_user(request, exc.message, messages.ERROR)
                continue
            done += changed
        self.message_user(request, f"{verb} {done} alert(s).", messages.SUCCESS)

    @admin.action(description="Acknowledge selected alerts")
    def acknowledge_alerts(self, request, queryset) -> None:
        self._transition(request, queryset, services.acknowledge_alert, "Acknowledged")

    @admin.action(description="Resolve selected alerts")
    def resolve_alerts(self, request, queryset) -> None:
        self._transition(request, queryset, services.resolve_alert, "Resolved")


class NotificationChannelForm(forms.ModelForm):
    class Meta:
        model = NotificationChannel
        fields = ["name", "kind", "enabled", "config", "min_severity"]

    def _update_errors(self, errors: ValidationError) -> None:
        # Config errors name the setting ("config.url", as the API reports them); the form shows
        # them on its "config" field.
        if hasattr(errors, "error_dict"):
            remapped: dict[str, list[str]] = {}
            for key, messages_ in errors.message_dict.items():
                if key in self.fields or key == NON_FIELD_ERRORS:
                    remapped.setdefault(key, []).extend(messages_)
                else:
                    target = "config" if key.startswith("config.") else NON_FIELD_ERRORS
                    remapped.setdefault(target, []).extend(f"{key.removeprefix('config.')}: {m}" for m in messages_)
            errors = ValidationError(remapped)
        super()._update_errors(errors)


@admin.register(NotificationChannel)
class NotificationChannelAdmin(TenantHostOnlyAdminMixin, admin.ModelAdmin):
    form = NotificationChannelForm
    list_display = ["name", "kind", "enabled", "min_severity", "updated_at"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name"]
    fields = ["name", "kind", "enabled", "config", "min_severity"]
    actions = ["send_test"]

    def get_readonly_fields(self, request, obj=None):
        return ["kind"] if obj is not None else []

    def save_model(self, request, obj, form, change) -> None:
        client = ClientInfo.from_request(request)
        editable = [name for name in self.fields if name not in self.get_readonly_fields(request, obj if change else None)]
        data = {name: form.cleaned_data[name] for name in editable}
        if change:
            services.update_channel(actor=request.user, client=client, channel=obj, **data)
            return
        channel, secret = services.create_channel(actor=request.user, client=client, **data)
        obj.pk = channel.pk
        if secret:
            self.message_user(request, f"Webhook signing secret: {secret} (shown once: copy it now).", messages.WARNING)

    def delete_model(self, request, obj) -> None:
        services.delete_channel(actor=request.user, client=ClientInfo.from_request(request), channel=obj)

    def delete_queryset(self, request, queryset) -> None:
        for channel in queryset:
            self.delete_model(request, channel)

    @admin.action(description="Send a test notification")
    def send_test(self, request, queryset) -> None:
        client = ClientInfo.from_request(request)
        for channel in queryset:
            try:
                services.send_test_notification(actor=request.user, client=client, channel=channel)
            except ValidationError as exc:
                self.message_user(request, f"{channel.name}: {exc}", messages.ERROR)
        self.message_user(request, "Test notifications queued; see the deliveries.", messages.SUCCESS)


@admin.register(NotificationDelivery)
class NotificationDeliveryAdmin(ReadOnlyAdminMixin, TenantHostOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "channel", "alert", "event_kind", "status", "attempts", "response_code", "created_at", "finished_at"]
    list_filter = ["status", "channel"]
    search_fields = ["error"]
    list_select_related = ["channel"]
    exclude = ["payload"]
