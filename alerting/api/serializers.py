"""Alert and notification-channel serializers: output shapes and strict inputs."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from alerting.models import ALERT_TRANSITIONS, Alert, AlertEvent, NotificationChannel, NotificationDelivery
from iiot.api.serializers import StrictSerializer, ValidatedModelSerializer


class AlertSerializer(serializers.ModelSerializer):
    acknowledged_by = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)
    resolved_by = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)
    rule = serializers.IntegerField(source="rule_id", read_only=True, allow_null=True)
    time_to_acknowledge_s = serializers.FloatField(read_only=True, allow_null=True)
    time_to_resolve_s = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = Alert
        fields = [
            "id",
            "fingerprint",
            "rule",
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
            "created_at",
            "acknowledged_at",
            "acknowledged_by",
            "resolved_at",
            "resolved_by",
            "auto_resolved",
            "time_to_acknowledge_s",
            "time_to_resolve_s",
        ]
        read_only_fields = fields


class AlertEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_email", read_only=True, help_text="Email of the user; empty for the system.")

    class Meta:
        model = AlertEvent
        fields = ["id", "kind", "at", "actor", "text", "data"]
        read_only_fields = fields


class AlertDetailSerializer(AlertSerializer):
    timeline = AlertEventSerializer(source="events", many=True, read_only=True)

    class Meta(AlertSerializer.Meta):
        fields = [*AlertSerializer.Meta.fields, "timeline"]
        read_only_fields = fields


class AlertStateSerializer(serializers.ModelSerializer):
    allowed_transitions = serializers.SerializerMethodField()
    time_to_acknowledge_s = serializers.FloatField(read_only=True, allow_null=True)
    time_to_resolve_s = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = Alert
        fields = [
            "id",
            "state",
            "allowed_transitions",
            "acknowledged_at",
            "resolved_at",
            "auto_resolved",
            "time_to_acknowledge_s",
            "time_to_resolve_s",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_allowed_transitions(self, alert: Alert) -> list[str]:
        return sorted(ALERT_TRANSITIONS[alert.state])


class AlertTransitionSerializer(AlertStateSerializer):
    changed = serializers.SerializerMethodField(help_text="false when the alert was already in the target state (nothing done).")

    class Meta(AlertStateSerializer.Meta):
        fields = [*AlertStateSerializer.Meta.fields, "changed"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_changed(self, alert: Alert) -> bool:
        return bool(self.context.get("changed"))


class TransitionSerializer(StrictSerializer):
    note = serializers.CharField(max_length=5000, required=False, allow_blank=True, default="")


class NoteSerializer(StrictSerializer):
    text = serializers.CharField(max_length=5000)


class NotificationChannelSerializer(ValidatedModelSerializer):
    config = serializers.JSONField(
        required=False,
        help_text='email: {"recipients": ["ops@example.com"], "subject_prefix": "Plant 1"}; '
        'webhook: {"url": "https://hooks.example.com/iiot", "headers": {"X-Team": "ops"}}; live: {}.',
    )
    has_secret = serializers.SerializerMethodField()

    class Meta:
        model = NotificationChannel
        fields = ["id", "name", "kind", "enabled", "config", "min_severity", "has_secret", "created_at", "updated_at"]
        read_only_fields = ["id", "has_secret", "created_at", "updated_at"]

    def get_fields(self):
        fields = super().get_fields()
        if self.instance is not None and not isinstance(self.instance, list | tuple):
            fields["kind"].read_only = True  # a channel's kind is fixed once created
        return fields

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_has_secret(self, channel: NotificationChannel) -> bool:
        return bool(channel.secret)


class NotificationChannelWithSecretSerializer(NotificationChannelSerializer):
    secret = serializers.CharField(
        read_only=True, allow_null=True, help_text="Webhook signing secret: shown only in this response."
    )

    class Meta(NotificationChannelSerializer.Meta):
        fields = [*NotificationChannelSerializer.Meta.fields, "secret"]
        read_only_fields = [*NotificationChannelSerializer.Meta.read_only_fields, "secret"]


class ChannelSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(read_only=True, help_text="The new signing secret: shown only in this response.")


class NotificationDeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = NotificationDelivery
        fields = [
            "id",
            "channel",
            "alert",
            "event_kind",
            "status",
            "attempts",
            "response_code",
            "response_excerpt",
            "error",
            "created_at",
            "last_attempt_at",
            "finished_at",
        ]
        read_only_fields = fields


class ConflictErrorSerializer(serializers.Serializer):
    """409 body: the error shape plus the alert's current state."""

    error = serializers.DictField(
        help_text='{"status": 409, "code": "alert_state_conflict", "message": ..., "state": "resolved"}'
    )
    request_id = serializers.CharField()


class DurationFiguresSerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="Alerts the figures are computed over.")
    mean = serializers.FloatField(allow_null=True)
    p50 = serializers.FloatField(allow_null=True)
    p90 = serializers.FloatField(allow_null=True)
    max = serializers.FloatField(allow_null=True)


class AlertStatsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    by_state = serializers.DictField(child=serializers.IntegerField())
    by_severity = serializers.DictField(child=serializers.IntegerField())
    auto_resolved = serializers.IntegerField()
    time_to_acknowledge_s = DurationFiguresSerializer()
    time_to_resolve_s = DurationFiguresSerializer()
