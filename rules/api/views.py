"""Rule endpoints: CRUD and backtests."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from iiot.request_context import ClientInfo
from rules import selectors, services
from rules.api.serializers import BacktestQuerySerializer, BacktestResultSerializer, BacktestRuleSerializer, RuleSerializer
from rules.backtest import BacktestError, run_backtest
from rules.models import Rule

READ, WRITE = "rules:read", "rules:write"
BACKTEST_PARAMETERS = [
    OpenApiParameter("start", str, OpenApiParameter.QUERY, required=True,
                     description="ISO 8601 start of the range (inclusive)."),
    OpenApiParameter("end", str, OpenApiParameter.QUERY, required=True, description="ISO 8601 end of the range (exclusive)."),
]  # fmt: skip


@extend_schema(tags=["rules"])
class RuleViewSet(viewsets.ModelViewSet):
    """Rules: threshold, comparison, no-data, rate of change, statistical and z-score conditions over
    a device, a profile or labelled devices, with a schedule, a cooldown and actions."""

    serializer_class = RuleSerializer
    rate_limit_group = "rules"
    filterset_fields = ["type", "severity", "enabled", "target_kind"]
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at", "updated_at", "severity"]
    required_permissions = {
        "list": READ,
        "retrieve": READ,
        "create": WRITE,
        "update": WRITE,
        "partial_update": WRITE,
        "destroy": WRITE,
        "backtest": WRITE,
        "backtest_unsaved": WRITE,
    }

    def get_queryset(self):
        return selectors.rules().order_by("name")

    def _client(self) -> ClientInfo:
        return ClientInfo.from_request(self.request)

    def _render(self, rule: Rule, code=status.HTTP_200_OK) -> Response:
        return Response(self.get_serializer(self.get_queryset().get(pk=rule.pk)).data, status=code)

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        rule = services.create_rule(actor=request.user, client=self._client(), **serializer.validated_data)
        return self._render(rule, status.HTTP_201_CREATED)

    def update(self, request, *args, **kwargs):
        partial = kwargs.pop("partial", False)
        rule = self.get_object()
        serializer = self.get_serializer(rule, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        rule = services.update_rule(actor=request.user, client=self._client(), rule=rule, **serializer.validated_data)
        return self._render(rule)

    @extend_schema(responses={204: None})
    def destroy(self, request, *args, **kwargs):
        services.delete_rule(actor=request.user, client=self._client(), rule=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    # --- backtests ---

    def _range(self, request):
        query = BacktestQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        return query.validated_data["start"], query.validated_data["end"]

    def _backtest(self, rule: Rule, request) -> Response:
        start, end = self._range(request)
        try:
            result = run_backtest(rule, start=start, end=end)
        except BacktestError as exc:
            raise exceptions.ValidationError({exc.field: [exc.message]}) from exc
        return Response(BacktestResultSerializer(result.as_dict()).data)

    @extend_schema(operation_id="rules_backtest", request=None, parameters=BACKTEST_PARAMETERS, responses={200: BacktestResultSerializer})
    @action(detail=True, methods=["post"], url_path="backtest")
    def backtest(self, request, pk=None):
        """Evaluate the saved rule over stored history: when it would have fired and cleared."""
        return self._backtest(self.get_object(), request)

    @extend_schema(
        operation_id="rules_backtest_unsaved", request=BacktestRuleSerializer, parameters=BACKTEST_PARAMETERS,
        responses={200: BacktestResultSerializer},
    )
    @action(detail=False, methods=["post"], url_path="backtest")
    def backtest_unsaved(self, request):
        """Evaluate an unsaved rule (the body of a create) over stored history."""
        serializer = BacktestRuleSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        data.setdefault("name", "backtest")
        rule = Rule(**{key: value for key, value in data.items() if key in services.RULE_FIELDS})
        try:
            rule.full_clean(exclude=["name"])
        except DjangoValidationError as exc:
            raise exceptions.ValidationError(exc.message_dict) from exc
        return self._backtest(rule, request)
