"""Device registry in the tenant's Django admin. Writes go through the device services, so the admin
writes the same audit entries and broker changes as the API; state fields are read-only."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from devices import broker, selectors, services
from devices.models import Device, DeviceCommand, DeviceCredential, DeviceProfile, ProfileMetric
from iiot.admin_access import ReadOnlyAdminMixin, TenantHostOnlyAdminMixin
from iiot.errors import ServiceConflict
from iiot.request_context import ClientInfo


class ProfileMetricInline(admin.TabularInline):
    model = ProfileMetric
    extra = 0
    fields = ["metric", "min_value", "max_value"]
    readonly_fields = ["metric", "min_value", "max_value"]
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # metrics are edited through the API (the service keeps the catalogue in step)


@admin.register(DeviceProfile)
class DeviceProfileAdmin(TenantHostOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["name", "offline_after_s", "auto_register_metrics", "device_count", "updated_at"]
    search_fields = ["name", "description"]
    list_filter = ["auto_register_metrics"]
    fields = ["name", "description", "auto_register_metrics", "default_attributes", "offline_after_s"]
    inlines = [ProfileMetricInline]

    def get_queryset(self, request):
        return selectors.profiles()

    @admin.display(description="Devices", ordering="device_count")
    def device_count(self, obj) -> int:
        return obj.device_count

    def save_model(self, request, obj, form, change) -> None:
        client = ClientInfo.from_request(request)
        data = {name: form.cleaned_data[name] for name in self.fields}
        if change:
            services.update_profile(actor=request.user, client=client, profile=obj, **data)
        else:
            obj.pk = services.create_profile(actor=request.user, client=client, **data).pk

    def delete_model(self, request, obj) -> None:
        try:
            services.delete_profile(actor=request.user, client=ClientInfo.from_request(request), profile=obj)
        except ServiceConflict as exc:
            self.message_user(request, exc.message, messages.ERROR)


@admin.register(Device)
class DeviceAdmin(TenantHostOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["uid", "name", "profile", "status", "enabled", "last_seen_at", "credential_prefix", "location"]
    list_filter = ["status", "enabled", "profile"]
    search_fields = ["uid", "name", "location"]
    list_select_related = ["profile"]
    fields = ["uid", "name", "profile", "location", "latitude", "longitude", "labels", "enabled", "status", "status_changed_at", "last_seen_at"]
    readonly_fields = ["status", "status_changed_at", "last_seen_at"]
    actions = ["disable_devices", "rotate_credentials"]

    def get_queryset(self, request):
        return selectors.devices()

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "uid"] if obj is not None else self.readonly_fields

    @admin.display(description="Credential")
    def credential_prefix(self, obj) -> str:
        return f"{obj.credential_prefix}…" if obj.credential_prefix else "—"

    def save_model(self, request, obj, form, change) -> None:
        client = ClientInfo.from_request(request)
        editable = [name for name in self.fields if name not in self.get_readonly_fields(request, obj if change else None)]
        data = {name: form.cleaned_data[name] for name in editable}
        if change:
            services.update_device(actor=request.user, client=client, device=obj, **data)
        else:
            obj.pk = services.create_device(actor=request.user, client=client, **data).pk

    def delete_model(self, request, obj) -> None:
        services.delete_device(actor=request.user, client=ClientInfo.from_request(request), device=obj)

    def delete_queryset(self, request, queryset) -> None:
        for device in queryset:
            self.delete_model(request, device)

    @admin.action(description="Disable selected devices (disconnects them at the broker)")
    def disable_devices(self, request, queryset) -> None:
        count = services.disable_devices(actor=request.user, client=ClientInfo.from_request(request), devices=queryset)
        self.message_user(request, f"Disabled {count} device(s).", messages.SUCCESS)

    @admin.action(description="Rotate credentials of selected devices (new secrets shown once)")
    def rotate_credentials(self, request, queryset) -> None:
        client = ClientInfo.from_request(request)
        for device in queryset:
            try:
                issued = services.issue_credential(actor=request.user, client=client, device=device)
            except (broker.BrokerUnavailable, broker.BrokerCommandError) as exc:
                self.message_user(request, f"{device.uid}: not rotated, the broker did not answer ({exc}).", messages.ERROR)
                continue
            except ValidationError as exc:
                self.message_user(request, f"{device.uid}: {exc}", messages.ERROR)
                continue
            self.message_user(
                request,
                f"{device.uid}: MQTT username {issued.username}, new secret {issued.secret} (shown once: copy it now).",
                messages.WARNING,
            )


@admin.register(DeviceCredential)
class DeviceCredentialAdmin(ReadOnlyAdminMixin, TenantHostOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["device", "secret_prefix", "status", "created_at", "revoked_at"]
    list_filter = ["status"]
    search_fields = ["device__uid", "secret_prefix"]
    list_select_related = ["device"]


@admin.register(DeviceCommand)
class DeviceCommandAdmin(ReadOnlyAdminMixin, TenantHostOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["command_id", "device", "name", "status", "created_by_email", "created_at", "completed_at"]
    list_filter = ["status", "name"]
    search_fields = ["device__uid", "name", "command_id"]
    list_select_related = ["device"]
