"""Rules API shapes: input serializers validate (the model's full_clean runs), output ones render."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from devices.models import Device, DeviceProfile
from iiot.api.serializers import StrictSerializer, ValidatedModelSerializer
from rules.models import Rule

RULE_FIELDS = [
    "id", "name", "description", "type", "severity", "enabled", "target_kind", "target_device", "target_device_uid",
    "target_profile", "target_labels", "condition", "schedule", "cooldown_s", "actions", "created_by_email",
    "created_at", "updated_at",
]  # fmt: skip


@extend_schema_field(OpenApiTypes.OBJECT)
class ObjectField(serializers.JSONField):
    """A JSON object (its shape depends on the rule type: see rules/conditions.py)."""


@extend_schema_field({"type": "object", "nullable": True})
class NullableObjectField(serializers.JSONField):
    pass


class RuleSerializer(ValidatedModelSerializer):
    target_device = serializers.PrimaryKeyRelatedField(queryset=Device.objects.all(), required=False, allow_null=True)
    target_device_uid = serializers.CharField(source="target_device.uid", read_only=True, default=None, allow_null=True)
    target_profile = serializers.PrimaryKeyRelatedField(queryset=DeviceProfile.objects.all(), required=False, allow_null=True)
    target_labels = ObjectField(required=False)
    condition = ObjectField(help_text="Shape by type: see rules/conditions.py (threshold, comparison, no_data, ...).")
    schedule = NullableObjectField(required=False, allow_null=True)
    actions = ObjectField(required=False)

    class Meta:
        model = Rule
        fields = RULE_FIELDS
        read_only_fields = ["id", "created_by_email", "created_at", "updated_at"]


class BacktestRuleSerializer(RuleSerializer):
    """An unsaved rule: the same fields; the name is optional and need not be unique."""

    class Meta(RuleSerializer.Meta):
        extra_kwargs = {"name": {"required": False, "validators": []}}
        clean_exclude = ["name"]


class BacktestQuerySerializer(StrictSerializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["end"] <= attrs["start"]:
            raise serializers.ValidationError({"end": ["Must be after start."]})
        return attrs


class IntervalSerializer(serializers.Serializer):
    device_id = serializers.IntegerField()
    device_uid = serializers.CharField()
    fired_at = serializers.DateTimeField()
    fire_value = serializers.FloatField(allow_null=True)
    cleared_at = serializers.DateTimeField(allow_null=True)
    clear_value = serializers.FloatField(allow_null=True)


class BacktestResultSerializer(serializers.Serializer):
    rule_id = serializers.IntegerField(allow_null=True)
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    devices = serializers.IntegerField(help_text="Target devices evaluated.")
    points = serializers.IntegerField(help_text="Stored points read.")
    evaluations = serializers.IntegerField()
    truncated = serializers.BooleanField(help_text="More points than RULES_BACKTEST_MAX_POINTS: only the first were replayed.")
    fired = serializers.IntegerField()
    intervals = IntervalSerializer(many=True, help_text="When the rule fired and cleared (null: still firing at the end).")
