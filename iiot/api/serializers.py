"""Serializer bases that make the API enforce what the model and the admin enforce."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers


class StrictFieldsMixin:
    """Unknown input fields are a 400 naming them, not silently dropped."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            writable = {name for name, field in self.fields.items() if not field.read_only}
            unknown = sorted(set(data) - writable)
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        elif data is not None and not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": [f"Expected a JSON object, got {type(data).__name__}."]}
            )
        return super().to_internal_value(data)


class StrictSerializer(StrictFieldsMixin, serializers.Serializer):
    pass


class ValidatedModelSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    """Runs the model's `full_clean()` on the would-be instance (DRF does not call `clean()`)."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        model = self.Meta.model
        m2m = {f.name for f in model._meta.many_to_many}
        plain = {key: value for key, value in attrs.items() if key not in m2m}
        if self.instance is None:
            instance = model(**plain)
        else:
            instance = model.objects.get(pk=self.instance.pk)
            for key, value in plain.items():
                setattr(instance, key, value)
        try:
            instance.full_clean(exclude=self._clean_exclude())
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from exc
        return attrs

    def _clean_exclude(self) -> list[str]:
        return list(getattr(self.Meta, "clean_exclude", []))
