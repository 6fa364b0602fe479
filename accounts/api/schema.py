"""OpenAPI description of the tenant-bound JWT authentication (imported in AppConfig.ready)."""

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme


class TenantJWTScheme(SimpleJWTScheme):
    target_class = "accounts.authentication.TenantJWTAuthentication"
    name = "jwtAuth"

    def get_security_definition(self, auto_schema):
        definition = super().get_security_definition(auto_schema)
        definition["description"] = (
            "Access token from POST /api/v1/auth/login on the tenant's host. "
            "A token is valid only on the host of the tenant that issued it."
        )
        return definition
