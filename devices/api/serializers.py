"""Device registry API shapes: input serializers validate, output serializers render."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from devices import services
from devices.models import (
    AttributeScope,
    Device,
    DeviceCommand,
    DeviceCredential,
    DeviceProfile,
    metric_name_validator,
)
from iiot.api.serializers import StrictSerializer, ValidatedModelSerializer

# --- Profiles -----------------------------------------------------------------------------------


class ProfileMetricSerializer(StrictSerializer):
    name = serializers.CharField(max_length=64, validators=[metric_name_validator])
    unit = serializers.CharField(max_length=32, required=False, allow_blank=True, default="")
    min = serializers.FloatField(required=False, allow_null=True, default=None)
    max = serializers.FloatField(required=False, allow_null=True, default=None)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("min") is not None and attrs.get("max") is not None and attrs["min"] > attrs["max"]:
            raise serializers.ValidationError({"max": ["Must not be less than min."]})
        return attrs

    def to_representation(self, instance: Any) -> dict[str, Any]:
        return {"name": instance.metric.name, "unit": instance.metric.unit, "min": instance.min_value, "max": instance.max_value}


class DeviceProfileSerializer(ValidatedModelSerializer):
    metrics = ProfileMetricSerializer(many=True, required=False)
    device_count = serializers.IntegerField(read_only=True, default=0)

    class Meta:
        model = DeviceProfile
        fields = [
            "id",
            "name",
            "description",
            "auto_register_metrics",
            "default_attributes",
            "offline_after_s",
            "metrics",
            "device_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "device_count", "created_at", "updated_at"]

    def validate_metrics(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = [item["name"] for item in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise serializers.ValidationError(f"Each metric may appear once: {', '.join(duplicates)}.")
        return value

    def validate_default_attributes(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError("Expected an object.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        metrics = attrs.pop("metrics", None)
        attrs = super().validate(attrs)
        if metrics is not None:
            attrs["metrics"] = metrics
        return attrs


# --- Devices ------------------------------------------------------------------------------------


class ActiveCredentialSerializer(serializers.Serializer):
    prefix = serializers.CharField()
    created_at = serializers.DateTimeField()


class DeviceSerializer(ValidatedModelSerializer):
    """Output and input of a device. `issue_credential` on create returns the first secret."""

    profile = serializers.PrimaryKeyRelatedField(queryset=DeviceProfile.objects.all())
    profile_name = serializers.CharField(source="profile.name", read_only=True)
    credential = serializers.SerializerMethodField()
    mqtt_username = serializers.SerializerMethodField()
    issue_credential = serializers.BooleanField(write_only=True, required=False, default=False)

    class Meta:
        model = Device
        fields = [
            "id",
            "uid",
            "name",
            "profile",
            "profile_name",
            "location",
            "latitude",
            "longitude",
            "labels",
            "enabled",
            "status",
            "status_changed_at",
            "last_seen_at",
            "credential",
            "mqtt_username",
            "created_at",
            "updated_at",
            "issue_credential",
        ]
        read_only_fields = ["id", "status", "status_changed_at", "last_seen_at", "created_at", "updated_at"]

    def get_credential(self, device: Device) -> dict[str, Any] | None:
        prefix = getattr(device, "credential_prefix", None)
        if prefix is None:
            return None
        return {"prefix": prefix, "created_at": serializers.DateTimeField().to_representation(device.credential_created_at)}

    def get_mqtt_username(self, device: Device) -> str:
        from devices.broker import device_username

        return device_username(services.current_tenant(), device.uid)

    def validate_uid(self, value: str) -> str:
        if self.instance is not None and value != self.instance.uid:
            raise serializers.ValidationError("The uid cannot be changed; create a new device instead.")
        return value

    def validate_labels(self, value: Any) -> Any:
        from django.core.exceptions import ValidationError

        try:
            return services.validate_labels(value)
        except ValidationError as exc:
            raise serializers.ValidationError(exc.message_dict["labels"]) from exc

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        issue = attrs.pop("issue_credential", False)
        attrs = super().validate(attrs)
        attrs["issue_credential"] = issue
        return attrs


class CredentialSerializer(serializers.ModelSerializer):
    prefix = serializers.CharField(source="secret_prefix")

    class Meta:
        model = DeviceCredential
        fields = ["id", "prefix", "status", "created_at", "revoked_at"]


class IssuedCredentialSerializer(serializers.Serializer):
    """The secret, once, and what a device needs to connect with it."""

    credential = CredentialSerializer()
    secret = serializers.CharField(help_text="The device's MQTT password. Shown once: only its hash is stored.")
    mqtt = serializers.DictField()

    @staticmethod
    def from_issued(issued: services.IssuedCredential) -> dict[str, Any]:
        from devices.broker import BrokerAddress

        address = BrokerAddress.from_url(issued.url)
        return {
            "credential": CredentialSerializer(issued.credential).data,
            "secret": issued.secret,
            "mqtt": {
                "url": issued.url,
                "host": address.host,
                "port": address.port,
                "tls": address.tls,
                "username": issued.username,
                "topics": issued.topics.as_dict(),
            },
        }


class DeviceWithSecretSerializer(DeviceSerializer):
    secret = serializers.DictField(read_only=True, required=False)

    class Meta(DeviceSerializer.Meta):
        fields = [*DeviceSerializer.Meta.fields, "secret"]


# --- Attributes ---------------------------------------------------------------------------------


class AttributesWriteSerializer(StrictSerializer):
    scope = serializers.ChoiceField(choices=[AttributeScope.SERVER, AttributeScope.SHARED])
    attributes = serializers.DictField(child=serializers.JSONField(allow_null=True), allow_empty=False)


class AttributesSerializer(serializers.Serializer):
    client = serializers.DictField()
    server = serializers.DictField()
    shared = serializers.DictField()


# --- Commands -----------------------------------------------------------------------------------


class CommandCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100)
    params = serializers.JSONField(required=False, default=dict)
    timeout_s = serializers.IntegerField(min_value=1, max_value=86400, required=False, default=30)


class CommandSerializer(serializers.ModelSerializer):
    device = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = DeviceCommand
        fields = [
            "command_id",
            "device",
            "name",
            "params",
            "status",
            "timeout_s",
            "created_by_email",
            "created_at",
            "delivered_at",
            "completed_at",
            "response",
            "error",
        ]
        read_only_fields = fields
