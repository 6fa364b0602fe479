from __future__ import annotations

from rest_framework import serializers

from accounts.models import AuditLog, Role, User
from accounts.permissions import PERMISSIONS
from iiot.api.serializers import StrictSerializer, ValidatedModelSerializer


class LoginSerializer(StrictSerializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(max_length=256, trim_whitespace=False, style={"input_type": "password"})


class RefreshSerializer(StrictSerializer):
    refresh = serializers.CharField(max_length=4096)


class TokenPairSerializer(serializers.Serializer):
    access = serializers.CharField()
    refresh = serializers.CharField()
    token_type = serializers.CharField()
    expires_in = serializers.IntegerField(help_text="Access token lifetime in seconds.")


class RoleSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = Role
        fields = ["id", "name"]


class RoleSerializer(ValidatedModelSerializer):
    permissions = serializers.ListField(
        child=serializers.ChoiceField(choices=sorted(PERMISSIONS)), allow_empty=True, max_length=len(PERMISSIONS)
    )
    user_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Role
        fields = ["id", "name", "description", "permissions", "is_system", "user_count", "created_at", "updated_at"]
        read_only_fields = ["id", "is_system", "user_count", "created_at", "updated_at"]


class UserSerializer(serializers.ModelSerializer):
    roles = RoleSummarySerializer(many=True, read_only=True)

    class Meta:
        model = User
        fields = ["id", "email", "full_name", "is_active", "is_staff", "roles", "date_joined", "last_login"]
        read_only_fields = fields


class RoleNamesField(serializers.ListField):
    """Roles by name in input (`["operator"]`); unknown names are field errors."""

    child = serializers.CharField(max_length=64)

    def to_internal_value(self, data):
        names = super().to_internal_value(data)
        roles = list(Role.objects.filter(name__in=names))
        missing = sorted(set(names) - {role.name for role in roles})
        if missing:
            raise serializers.ValidationError([f"Unknown role: {name}." for name in missing])
        return roles


class UserCreateSerializer(StrictSerializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(max_length=256, write_only=True, trim_whitespace=False)
    full_name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    is_staff = serializers.BooleanField(required=False, default=False)
    is_active = serializers.BooleanField(required=False, default=True)
    roles = RoleNamesField(required=False, default=list)


class UserUpdateSerializer(StrictSerializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(max_length=256, write_only=True, trim_whitespace=False, required=False)
    full_name = serializers.CharField(max_length=200, allow_blank=True)
    is_staff = serializers.BooleanField()
    is_active = serializers.BooleanField()
    roles = RoleNamesField()


class AssignRolesSerializer(StrictSerializer):
    roles = RoleNamesField(allow_empty=True)


class MeSerializer(serializers.Serializer):
    user = UserSerializer()
    tenant = serializers.DictField(child=serializers.CharField())
    roles = serializers.ListField(child=serializers.CharField())
    permissions = serializers.ListField(child=serializers.CharField())


class LoginResponseSerializer(TokenPairSerializer):
    user = UserSerializer()


class AuditLogSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditLog
        fields = [
            "id",
            "created_at",
            "action",
            "outcome",
            "tenant",
            "actor_id",
            "actor_email",
            "ip",
            "user_agent",
            "request_id",
            "target_type",
            "target_id",
            "target_repr",
            "changes",
            "metadata",
        ]
        read_only_fields = fields
