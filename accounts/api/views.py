"""Auth, users, roles and audit endpoints (the predecessor's paths under /api/v1/)."""

from __future__ import annotations

import django_filters
from django.db import connection
from django.db.models import Count
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import services
from accounts.api.serializers import (
    AssignRolesSerializer,
    AuditLogSerializer,
    LoginResponseSerializer,
    LoginSerializer,
    MeSerializer,
    RefreshSerializer,
    RoleSerializer,
    TokenPairSerializer,
    UserCreateSerializer,
    UserSerializer,
    UserUpdateSerializer,
)
from accounts.models import AuditLog, Role, User
from iiot.api import ratelimit
from iiot.api.pagination import TimeCursorPagination
from iiot.request_context import ClientInfo, client_ip


class LoginView(APIView):
    """Exchange email and password for an access/refresh JWT pair bound to this tenant."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    @extend_schema(request=LoginSerializer, responses={200: LoginResponseSerializer}, tags=["auth"], auth=[])
    def post(self, request):
        ratelimit.check(request, "login", f"ip:{client_ip(request)}", label="login attempts from this address")
        serializer = LoginSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        email = serializer.validated_data["email"].lower()
        ratelimit.check(request, "login", f"email:{email}", label="login attempts for this account")
        user, tokens = services.login(
            client=ClientInfo.from_request(request), email=email, password=serializer.validated_data["password"], request=request
        )
        return Response({**tokens, "user": UserSerializer(user).data})


class RefreshView(APIView):
    """Rotate a refresh token: the old one is blacklisted; presenting it again revokes every session."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    rate_limit_group = "login"

    @extend_schema(request=RefreshSerializer, responses={200: TokenPairSerializer}, tags=["auth"], auth=[])
    def post(self, request):
        serializer = RefreshSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tokens = services.refresh(client=ClientInfo.from_request(request), raw=serializer.validated_data["refresh"])
        return Response(tokens)


class LogoutView(APIView):
    """Blacklist a refresh token (end the session it belongs to)."""

    permission_classes = [AllowAny]

    @extend_schema(request=RefreshSerializer, responses={204: None}, tags=["auth"])
    def post(self, request):
        serializer = RefreshSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.logout(client=ClientInfo.from_request(request), raw=serializer.validated_data["refresh"], actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeView(APIView):
    """The caller, its roles and its effective permissions."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: MeSerializer}, tags=["auth"])
    def get(self, request):
        user = request.user
        tenant = request.tenant
        return Response(
            {
                "user": UserSerializer(user).data,
                "tenant": {"slug": tenant.slug, "name": tenant.name, "schema": connection.schema_name},
                "roles": sorted(role.name for role in user.roles.all()),
                "permissions": sorted(user.effective_permissions()),
            }
        )


class UserFilter(django_filters.FilterSet):
    email = django_filters.CharFilter(lookup_expr="icontains")
    role = django_filters.CharFilter(field_name="roles__name")

    class Meta:
        model = User
        fields = ["email", "is_active", "is_staff", "role"]


@extend_schema(tags=["users"])
class UserViewSet(viewsets.ModelViewSet):
    """Tenant users. Reading needs `users:read`, every change `users:write`."""

    queryset = User.objects.prefetch_related("roles").order_by("email")
    serializer_class = UserSerializer
    filterset_class = UserFilter
    search_fields = ["email", "full_name"]
    ordering_fields = ["email", "date_joined", "last_login"]
    required_permissions = {
        "list": "users:read",
        "retrieve": "users:read",
        "create": "users:write",
        "update": "users:write",
        "partial_update": "users:write",
        "destroy": "users:write",
        "roles": "users:write",
    }

    def _client(self) -> ClientInfo:
        return ClientInfo.from_request(self.request)

    @extend_schema(request=UserCreateSerializer, responses={201: UserSerializer})
    def create(self, request, *args, **kwargs):
        data = UserCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.create_user(actor=request.user, client=self._client(), **data.validated_data)
        return Response(UserSerializer(user).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=UserUpdateSerializer, responses={200: UserSerializer})
    def update(self, request, *args, **kwargs):
        partial = kwargs.pop("partial", False)
        user = self.get_object()
        data = UserUpdateSerializer(data=request.data, partial=partial)
        data.is_valid(raise_exception=True)
        user = services.update_user(actor=request.user, client=self._client(), user=user, **data.validated_data)
        return Response(UserSerializer(User.objects.prefetch_related("roles").get(pk=user.pk)).data)

    @extend_schema(request=UserUpdateSerializer(partial=True), responses={200: UserSerializer})
    def partial_update(self, request, *args, **kwargs):
        kwargs["partial"] = True
        return self.update(request, *args, **kwargs)

    @extend_schema(responses={204: None})
    def destroy(self, request, *args, **kwargs):
        services.delete_user(actor=request.user, client=self._client(), user=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=AssignRolesSerializer, responses={200: UserSerializer})
    @action(detail=True, methods=["post"])
    def roles(self, request, pk=None):
        """Replace the user's roles with the given list of role names."""
        data = AssignRolesSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.assign_roles(actor=request.user, client=self._client(), user=self.get_object(), roles=data.validated_data["roles"])
        return Response(UserSerializer(User.objects.prefetch_related("roles").get(pk=user.pk)).data)


@extend_schema(tags=["roles"])
class RoleViewSet(viewsets.ModelViewSet):
    """Roles: the four defaults (read-only) and the tenant's custom roles."""

    queryset = Role.objects.annotate(user_count=Count("users")).order_by("name")
    serializer_class = RoleSerializer
    filterset_fields = ["is_system"]
    search_fields = ["name", "description"]
    required_permissions = {
        "list": "roles:read",
        "retrieve": "roles:read",
        "create": "roles:write",
        "update": "roles:write",
        "partial_update": "roles:write",
        "destroy": "roles:write",
    }

    def _client(self) -> ClientInfo:
        return ClientInfo.from_request(self.request)

    def _annotated(self, role: Role) -> Role:
        return self.get_queryset().get(pk=role.pk)

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        role = services.create_role(actor=request.user, client=self._client(), **serializer.validated_data)
        return Response(self.get_serializer(self._annotated(role)).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: RoleSerializer})
    def update(self, request, *args, **kwargs):
        role = self.get_object()
        serializer = self.get_serializer(role, data=request.data, partial=kwargs.pop("partial", False))
        serializer.is_valid(raise_exception=True)
        role = services.update_role(actor=request.user, client=self._client(), role=role, **serializer.validated_data)
        return Response(self.get_serializer(self._annotated(role)).data)

    @extend_schema(responses={204: None})
    def destroy(self, request, *args, **kwargs):
        services.delete_role(actor=request.user, client=self._client(), role=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class AuditLogFilter(django_filters.FilterSet):
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    action = django_filters.CharFilter()
    action_prefix = django_filters.CharFilter(field_name="action", lookup_expr="startswith")
    actor_email = django_filters.CharFilter(lookup_expr="iexact")

    class Meta:
        model = AuditLog
        fields = ["action", "outcome", "actor_id", "actor_email", "target_type", "target_id", "ip", "request_id"]


@extend_schema(tags=["audit"])
class AuditLogViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The tenant's audit trail, newest first (read-only; `audit:read`, admins only by default)."""

    queryset = AuditLog.objects.all()
    serializer_class = AuditLogSerializer
    filterset_class = AuditLogFilter
    pagination_class = TimeCursorPagination
    filter_backends = [django_filters.rest_framework.DjangoFilterBackend]
    required_permissions = "audit:read"
