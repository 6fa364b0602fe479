"""JWT authentication bound to the tenant whose host minted the token."""

from __future__ import annotations

from django.db import connection
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import AuthenticationFailed

from accounts.services import TENANT_CLAIM


class TenantJWTAuthentication(JWTAuthentication):
    """A token carries its tenant's schema; presented on another tenant's host it is a 401.

    User ids are per schema, so without this check a token from tenant A would authenticate
    as whichever user of tenant B happens to share the id.
    """

    def get_validated_token(self, raw_token: bytes):
        token = super().get_validated_token(raw_token)
        if token.get(TENANT_CLAIM) != connection.schema_name:
            raise AuthenticationFailed("Token was issued for another tenant.", code="token_tenant_mismatch")
        return token
