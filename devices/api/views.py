"""Device registry endpoints: profiles, devices, credentials, attributes, commands."""

from __future__ import annotations

import uuid

import django_filters
from django.db import transaction
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from devices import broker, selectors, services
from devices.api.serializers import (
    AttributesSerializer,
    AttributesWriteSerializer,
    CommandCreateSerializer,
    CommandSerializer,
    CredentialSerializer,
    DeviceProfileSerializer,
    DeviceSerializer,
    DeviceWithSecretSerializer,
    IssuedCredentialSerializer,
)
from devices.models import Device, DeviceStatus
from iiot.request_context import ClientInfo


class BrokerUnavailableError(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "broker_unavailable"
    default_detail = "The MQTT broker is unavailable; nothing was changed. Try again shortly."


def _broker_error(exc: Exception) -> BrokerUnavailableError:
    return BrokerUnavailableError(f"The MQTT broker did not take the new credential, so nothing was stored ({exc}). Try again shortly.")


READ, WRITE, COMMAND = "devices:read", "devices:write", "devices:command"


@extend_schema(tags=["devices"])
class DeviceProfileViewSet(viewsets.ModelViewSet):
    """Device profiles: a device type with its metrics (units, valid ranges) and defaults."""

    serializer_class = DeviceProfileSerializer
    rate_limit_group = "devices"
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at"]
    required_permissions = {
        "list": READ,
        "retrieve": READ,
        "create": WRITE,
        "update": WRITE,
        "partial_update": WRITE,
        "destroy": WRITE,
    }

    def get_queryset(self):
        return selectors.profiles().order_by("name")

    def _client(self) -> ClientInfo:
        return ClientInfo.from_request(self.request)

    def _render(self, profile, code=status.HTTP_200_OK) -> Response:
        return Response(self.get_serializer(self.get_queryset().get(pk=profile.pk)).data, status=code)

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        profile = services.create_profile(actor=request.user, client=self._client(), **serializer.validated_data)
        return self._render(profile, status.HTTP_201_CREATED)

    def update(self, request, *args, **kwargs):
        partial = kwargs.pop("partial", False)
        profile = self.get_object()
        serializer = self.get_serializer(profile, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        profile = services.update_profile(actor=request.user, client=self._client(), profile=profile, **serializer.validated_data)
        return self._render(profile)

    @extend_schema(responses={204: None})
    def destroy(self, request, *args, **kwargs):
        services.delete_profile(actor=request.user, client=self._client(), profile=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeviceFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=DeviceStatus.choices)
    label = django_filters.CharFilter(method="filter_label", help_text="`key:value` (repeatable; all must match) or a bare `key`.")

    class Meta:
        model = Device
        fields = ["profile", "status", "enabled"]

    def filter_label(self, queryset, name, value):
        return selectors.filter_by_labels(queryset, self.request.query_params.getlist("label"))


@extend_schema(tags=["devices"])
class DeviceViewSet(viewsets.ModelViewSet):
    """Devices of the tenant, their credentials, attributes and commands."""

    serializer_class = DeviceSerializer
    rate_limit_group = "devices"
    filterset_class = DeviceFilter
    search_fields = ["uid", "name"]
    ordering_fields = ["uid", "name", "created_at", "last_seen_at", "status"]
    required_permissions = {
        "list": READ,
        "retrieve": READ,
        "create": WRITE,
        "update": WRITE,
        "partial_update": WRITE,
        "destroy": WRITE,
        "credentials": READ,
        "issue_credential": WRITE,
        "revoke_credential": WRITE,
        "attributes": READ,
        "set_attributes": WRITE,
        "commands": READ,
        "send_command": COMMAND,
        "command_detail": READ,
    }

    def get_queryset(self):
        return selectors.devices().order_by("uid")

    def _client(self) -> ClientInfo:
        return ClientInfo.from_request(self.request)

    def _render(self, device: Device, code=status.HTTP_200_OK, **extra) -> Response:
        data = DeviceSerializer(self.get_queryset().get(pk=device.pk), context=self.get_serializer_context()).data
        return Response({**data, **extra}, status=code)

    @extend_schema(responses={201: DeviceWithSecretSerializer})
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        issue = data.pop("issue_credential", False)
        try:
            with transaction.atomic():
                device = services.create_device(actor=request.user, client=self._client(), **data)
                issued = services.issue_credential(actor=request.user, client=self._client(), device=device) if issue else None
        except broker.BrokerUnavailable as exc:
            raise _broker_error(exc) from exc
        extra = {"secret": IssuedCredentialSerializer.from_issued(issued)} if issued else {}
        return self._render(device, status.HTTP_201_CREATED, **extra)

    def update(self, request, *args, **kwargs):
        partial = kwargs.pop("partial", False)
        device = self.get_object()
        serializer = self.get_serializer(device, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        if data.pop("issue_credential", False):
            raise exceptions.ValidationError({"issue_credential": ["Use POST /devices/{id}/credentials to issue or rotate."]})
        device = services.update_device(actor=request.user, client=self._client(), device=device, **data)
        return self._render(device)

    @extend_schema(responses={204: None})
    def destroy(self, request, *args, **kwargs):
        services.delete_device(actor=request.user, client=self._client(), device=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    # --- credentials ---

    @extend_schema(responses={200: CredentialSerializer(many=True)})
    @action(detail=True, methods=["get"], url_path="credentials")
    def credentials(self, request, pk=None):
        """The device's credentials, newest first (prefixes only: secrets are never stored)."""
        return Response(CredentialSerializer(selectors.device_credentials(self.get_object()), many=True).data)

    @extend_schema(request=None, responses={201: IssuedCredentialSerializer})
    @credentials.mapping.post
    def issue_credential(self, request, pk=None):
        """Issue or rotate the device's secret. The response is the only time the secret is shown."""
        try:
            issued = services.issue_credential(actor=request.user, client=self._client(), device=self.get_object())
        except broker.BrokerUnavailable as exc:
            raise _broker_error(exc) from exc
        return Response(IssuedCredentialSerializer.from_issued(issued), status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: CredentialSerializer(many=True)})
    @action(detail=True, methods=["post"], url_path="credentials/revoke")
    def revoke_credential(self, request, pk=None):
        """Revoke the active credential: the broker disconnects the device and refuses it."""
        revoked = services.revoke_credential(actor=request.user, client=self._client(), device=self.get_object())
        return Response(CredentialSerializer(revoked, many=True).data)

    # --- attributes ---

    @extend_schema(responses={200: AttributesSerializer})
    @action(detail=True, methods=["get"], url_path="attributes")
    def attributes(self, request, pk=None):
        """Attributes by scope: client (reported by the device), server, shared (sent to the device)."""
        return Response(selectors.device_attributes(self.get_object()))

    @extend_schema(request=AttributesWriteSerializer, responses={200: AttributesSerializer})
    @attributes.mapping.put
    def set_attributes(self, request, pk=None):
        """Upsert server or shared attributes; a null value deletes the key."""
        device = self.get_object()
        serializer = AttributesWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.set_attributes(actor=request.user, client=self._client(), device=device, **serializer.validated_data)
        return Response(selectors.device_attributes(device))

    # --- commands ---

    @extend_schema(responses={200: CommandSerializer(many=True)})
    @action(detail=True, methods=["get"], url_path="commands")
    def commands(self, request, pk=None):
        """Commands sent to the device, newest first."""
        queryset = selectors.device_commands(self.get_object())
        page = self.paginate_queryset(queryset)
        if page is not None:
            return self.get_paginated_response(CommandSerializer(page, many=True).data)
        return Response(CommandSerializer(queryset, many=True).data)

    @extend_schema(request=CommandCreateSerializer, responses={201: CommandSerializer})
    @commands.mapping.post
    def send_command(self, request, pk=None):
        """Send a command: it is published at QoS 1 to the device's command topic; follow its status."""
        device = self.get_object()
        serializer = CommandCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        command = services.send_command(actor=request.user, client=self._client(), device=device, **serializer.validated_data)
        return Response(CommandSerializer(command).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("command_id", str, OpenApiParameter.PATH)],
        responses={200: CommandSerializer},
    )
    @action(detail=True, methods=["get"], url_path=r"commands/(?P<command_id>[^/]+)")
    def command_detail(self, request, pk=None, command_id=None):
        device = self.get_object()
        try:
            parsed = uuid.UUID(str(command_id))
        except ValueError as exc:
            raise Http404 from exc
        command = selectors.device_commands(device).filter(command_id=parsed).first()
        if command is None:
            raise Http404
        return Response(CommandSerializer(command).data)
