"""Alert and notification-channel endpoints. Thin: parse, call a service or selector, render."""

from __future__ import annotations

import django_filters
from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from alerting import selectors, services
from alerting.api.serializers import (
    AlertDetailSerializer,
    AlertEventSerializer,
    AlertSerializer,
    AlertStateSerializer,
    AlertStatsSerializer,
    AlertTransitionSerializer,
    ChannelSecretSerializer,
    ConflictErrorSerializer,
    NoteSerializer,
    NotificationChannelSerializer,
    NotificationChannelWithSecretSerializer,
    NotificationDeliverySerializer,
    TransitionSerializer,
)
from alerting.choices import Severity
from alerting.models import Alert, AlertEvent, AlertState, DeliveryStatus, NotificationDelivery
from iiot.api.errors import error_body
from iiot.errors import ServiceConflict
from iiot.request_context import ClientInfo

CONFLICT = OpenApiResponse(
    ConflictErrorSerializer, description="Not allowed in the alert's current state (given in error.state)."
)


class AlertFilter(django_filters.FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=AlertState.choices, help_text="Repeatable: any of the given states.")
    severity = django_filters.MultipleChoiceFilter(choices=Severity.choices, help_text="Repeatable: any of the given severities.")
    open = django_filters.BooleanFilter(method="filter_open", help_text="true: triggered or acknowledged; false: resolved.")
    device = django_filters.NumberFilter(field_name="device_id")
    device_uid = django_filters.CharFilter(field_name="device_uid")
    rule = django_filters.NumberFilter(field_name="rule_id")
    since = django_filters.IsoDateTimeFilter(
        method="filter_since", help_text="Alerts still firing at or after this time (ISO 8601)."
    )
    until = django_filters.IsoDateTimeFilter(method="filter_until", help_text="Alerts that started before this time (ISO 8601).")

    class Meta:
        model = Alert
        fields = ["state", "severity", "device", "rule"]

    def filter_open(self, queryset, name, value):
        return queryset.open() if value else queryset.resolved()

    def filter_since(self, queryset, name, value):
        return queryset.seen_between(value, None)

    def filter_until(self, queryset, name, value):
        return queryset.seen_between(None, value)


@extend_schema(tags=["alerts"])
class AlertViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Alerts of the tenant: list, detail with timeline, state, acknowledge, resolve, notes."""

    serializer_class = AlertSerializer
    filterset_class = AlertFilter
    search_fields = ["rule_name", "device_uid", "message"]
    # `severity_rank`: most severe first when ascending (`severity` sorts by name).
    ordering_fields = ["first_seen_at", "last_seen_at", "severity", "severity_rank", "count", "state"]
    required_permissions = {
        "list": "alerts:read",
        "stats": "alerts:read",
        "retrieve": "alerts:read",
        "state": "alerts:read",
        "acknowledge": "alerts:ack",
        "resolve": "alerts:resolve",
        "notes": "alerts:read",
        "add_note": "alerts:ack",
    }

    def get_queryset(self):
        queryset = selectors.alerts()
        if self.action == "retrieve":
            queryset = queryset.prefetch_related(Prefetch("events", queryset=AlertEvent.objects.order_by("at", "id")))
        return queryset.order_by("-first_seen_at", "-id")

    def get_serializer_class(self):
        return AlertDetailSerializer if self.action == "retrieve" else AlertSerializer

    def handle_exception(self, exc):
        if isinstance(exc, ServiceConflict):
            body = error_body(409, exc.code, exc.message)
            body["error"].update({key: value for key, value in exc.context.items() if key == "state"})
            return Response(body, status=status.HTTP_409_CONFLICT)
        return super().handle_exception(exc)

    def _client(self) -> ClientInfo:
        return ClientInfo.from_request(self.request)

    def _state(self, alert, changed: bool) -> Response:
        fresh = self.get_queryset().get(pk=alert.pk)
        return Response(AlertTransitionSerializer(fresh, context={"changed": changed}).data)

    @extend_schema(responses={200: AlertStatsSerializer})
    @action(detail=False, methods=["get"])
    def stats(self, request):
        """Counts and time-to-acknowledge / time-to-resolve figures (seconds) over the alerts the
        list's filters select (e.g. `since`, `severity`, `rule`)."""
        return Response(AlertStatsSerializer(selectors.alert_stats(self.filter_queryset(self.get_queryset()))).data)

    @extend_schema(responses={200: AlertStateSerializer})
    @action(detail=True, methods=["get"])
    def state(self, request, pk=None):
        """The alert's state, its timestamps and the transitions still allowed."""
        return Response(AlertStateSerializer(self.get_object()).data)

    @extend_schema(request=TransitionSerializer, responses={200: AlertTransitionSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def acknowledge(self, request, pk=None):
        """Acknowledge a triggered alert (no-op when already acknowledged; 409 when resolved)."""
        alert = self.get_object()
        serializer = TransitionSerializer(data=request.data or {})
        serializer.is_valid(raise_exception=True)
        alert, changed = services.acknowledge_alert(
            actor=request.user, client=self._client(), alert_id=alert.pk, **serializer.validated_data
        )
        return self._state(alert, changed)

    @extend_schema(request=TransitionSerializer, responses={200: AlertTransitionSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def resolve(self, request, pk=None):
        """Resolve an open alert (no-op when already resolved)."""
        alert = self.get_object()
        serializer = TransitionSerializer(data=request.data or {})
        serializer.is_valid(raise_exception=True)
        alert, changed = services.resolve_alert(
            actor=request.user, client=self._client(), alert_id=alert.pk, **serializer.validated_data
        )
        return self._state(alert, changed)

    @extend_schema(responses={200: AlertEventSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def notes(self, request, pk=None):
        """The alert's notes, oldest first (the full timeline is in the alert's detail)."""
        events = selectors.alert_timeline(self.get_object()).filter(kind="note")
        return Response(AlertEventSerializer(events, many=True).data)

    @extend_schema(request=NoteSerializer, responses={201: AlertEventSerializer})
    @notes.mapping.post
    def add_note(self, request, pk=None):
        """Add a note to the alert's timeline (any state)."""
        alert = self.get_object()
        serializer = NoteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        event = services.add_note(actor=request.user, client=self._client(), alert_id=alert.pk, **serializer.validated_data)
        return Response(AlertEventSerializer(event).data, status=status.HTTP_201_CREATED)


class DeliveryFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=DeliveryStatus.choices)

    class Meta:
        model = NotificationDelivery
        fields = ["status", "alert"]


READ, WRITE = "notifications:read", "notifications:write"


@extend_schema(tags=["notifications"])
class NotificationChannelViewSet(viewsets.ModelViewSet):
    """Notification channels of the tenant (email, webhook, live) and their delivery log."""

    serializer_class = NotificationChannelSerializer
    search_fields = ["name"]
    ordering_fields = ["name", "kind", "created_at"]
    filterset_fields = ["kind", "enabled"]
    required_permissions = {
        "list": READ,
        "retrieve": READ,
        "create": WRITE,
        "update": WRITE,
        "partial_update": WRITE,
        "destroy": WRITE,
        "deliveries": READ,
        "test": WRITE,
        "rotate_secret": WRITE,
    }

    def get_queryset(self):
        return selectors.channels().order_by("name")

    def _client(self) -> ClientInfo:
        return ClientInfo.from_request(self.request)

    @extend_schema(responses={201: NotificationChannelWithSecretSerializer})
    def create(self, request, *args, **kwargs):
        """Create a channel. A webhook channel's signing secret is in this response only."""
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        channel, secret = services.create_channel(actor=request.user, client=self._client(), **serializer.validated_data)
        data = NotificationChannelWithSecretSerializer(channel).data
        data["secret"] = secret
        return Response(data, status=status.HTTP_201_CREATED)

    def update(self, request, *args, **kwargs):
        partial = kwargs.pop("partial", False)
        channel = self.get_object()
        serializer = self.get_serializer(channel, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        channel = services.update_channel(actor=request.user, client=self._client(), channel=channel, **serializer.validated_data)
        return Response(self.get_serializer(channel).data)

    @extend_schema(responses={204: None})
    def destroy(self, request, *args, **kwargs):
        services.delete_channel(actor=request.user, client=self._client(), channel=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=DeliveryStatus.values, description="Only deliveries in this status."),
            OpenApiParameter("alert", int, description="Only deliveries of this alert."),
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int),
        ],
        responses={200: NotificationDeliverySerializer(many=True)},
    )
    @action(detail=True, methods=["get"])
    def deliveries(self, request, pk=None):
        """The channel's deliveries, newest first: status, attempts, response and error of each."""
        filterset = DeliveryFilter(request.query_params, queryset=selectors.channel_deliveries(self.get_object()))
        if not filterset.is_valid():
            raise exceptions.ValidationError(filterset.errors)
        page = self.paginate_queryset(filterset.qs)
        return self.get_paginated_response(NotificationDeliverySerializer(page, many=True).data)

    @extend_schema(request=None, responses={202: NotificationDeliverySerializer})
    @action(detail=True, methods=["post"])
    def test(self, request, pk=None):
        """Send a test notification through the channel; follow it in the deliveries list."""
        delivery = services.send_test_notification(actor=request.user, client=self._client(), channel=self.get_object())
        return Response(NotificationDeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=None, responses={200: ChannelSecretSerializer, 409: OpenApiResponse(description="Not a webhook channel.")}
    )
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request, pk=None):
        """Replace a webhook channel's signing secret; the new one is in this response only."""
        secret = services.rotate_channel_secret(actor=request.user, client=self._client(), channel=self.get_object())
        return Response({"secret": secret})
