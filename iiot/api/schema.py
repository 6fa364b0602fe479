"""OpenAPI generation: every operation documents the shared error body for its error statuses."""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from rest_framework import serializers

ERROR_DESCRIPTIONS = {
    "400": "Invalid input: `error.fields` maps each bad field (dotted path) to its reasons.",
    "401": "Not authenticated, token invalid or expired, or the token belongs to another tenant.",
    "403": "The caller lacks the permission this operation declares, or the tenant is suspended.",
    "404": "No such object in this tenant.",
    "409": "Not allowed in the object's current state.",
    "413": "Request body over the size limit.",
    "429": "Rate limited: retry after `Retry-After` seconds.",
}


class ErrorDetailSerializer(serializers.Serializer):
    status = serializers.IntegerField()
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. validation_error, permission_denied.")
    message = serializers.CharField()
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()), required=False)


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()
    request_id = serializers.CharField(help_text="Also sent as the X-Request-ID response header.")


class AutoSchema(SpectacularAutoSchema):
    def _error_codes(self) -> list[str]:
        codes = ["401", "403", "429"]
        if self.method in ("POST", "PUT", "PATCH"):
            codes[:0] = ["400", "413"]
        if "{" in self.path or self.method == "GET":
            codes.append("404")
        if self.method in ("PUT", "PATCH", "DELETE") or "{" in self.path and self.method == "POST":
            codes.append("409")
        auth = self.get_auth()
        if not auth:
            codes = [code for code in codes if code not in ("401", "403")]
        return codes

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in self._error_codes():
            if code not in responses or "content" not in responses[code]:
                body = self._get_response_for_code(ErrorSerializer, code, direction=direction)
                body["description"] = responses.get(code, {}).get("description") or ERROR_DESCRIPTIONS[code]
                responses[code] = body
        return responses
