"""`GET /api/v1/ingest/rejections`: what the ingest service refused in this tenant, and why.

Reads the Redis counters and dead-letter list written by `telemetry.rejections` (the tenant is
the request's; another tenant's rejections are never visible). Filters: `device` (uid), `reason`.
"""

from __future__ import annotations

from django.db import connection
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from telemetry.pipeline import Reason
from telemetry.rejections import read_rejections

REASONS = [reason.value for reason in Reason] + ["store_failed"]


class RejectionQuerySerializer(serializers.Serializer):
    device = serializers.CharField(required=False, max_length=64)
    reason = serializers.ChoiceField(choices=REASONS, required=False)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000, default=100)


@extend_schema(
    tags=["ingest"],
    parameters=[
        OpenApiParameter("device", str, description="Device uid"),
        OpenApiParameter("reason", str, enum=REASONS),
        OpenApiParameter("limit", int, description="Dead letters to return (newest first, at most 1000)"),
    ],
    responses=inline_serializer(
        "IngestRejections",
        {
            "totals": serializers.DictField(child=serializers.IntegerField(), help_text="Points or messages refused, per reason"),
            "by_device": serializers.DictField(child=serializers.DictField(child=serializers.IntegerField())),
            "dead_letters": serializers.ListField(child=serializers.DictField()),
        },
    ),
)
class RejectionsView(APIView):
    """Ingest rejections: totals per reason, counters per device, the newest dead letters."""

    required_permissions = {"GET": "ingest:read"}

    def get(self, request: Request) -> Response:
        query = RejectionQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        summary = read_rejections(connection.schema_name, device=data.get("device"), reason=data.get("reason"), limit=data["limit"])
        return Response({"totals": summary.totals, "by_device": summary.by_device, "dead_letters": summary.dead_letters})
