"""Every write to users, roles, sessions and the audit log goes through here.

Each service takes a keyword-only `actor` (None for the system) and `client` (where the call came
from), runs in one transaction and writes its audit entry in that same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth import authenticate
from django.contrib.auth.models import update_last_login
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.models import AuditLog, AuditOutcome, Role, User
from accounts.permissions import DEFAULT_ROLES
from iiot.errors import AuthenticationRefused, ServiceConflict
from iiot.request_context import ClientInfo

TENANT_CLAIM = "tenant"


# --- Audit ------------------------------------------------------------------------------------


def record_audit(
    action: str,
    *,
    actor: User | None,
    client: ClientInfo | None,
    outcome: str = AuditOutcome.SUCCESS,
    target: Any = None,
    target_type: str = "",
    target_id: Any = "",
    target_repr: str = "",
    changes: dict[str, list[Any]] | None = None,
    metadata: dict[str, Any] | None = None,
    actor_email: str = "",
    tenant: str | None = None,
) -> AuditLog:
    """Append one audit entry in the current schema (the tenant's, or public for platform events)."""
    client = client or ClientInfo.system()
    if target is not None:
        target_type = target_type or target._meta.label_lower
        target_id = target_id or target.pk
        target_repr = target_repr or str(target)
    actor_is_user = actor is not None and getattr(actor, "pk", None) is not None
    return AuditLog.objects.create(
        action=action,
        outcome=outcome,
        tenant=tenant or connection.schema_name,
        actor_id=actor.pk if actor_is_user else None,
        actor_email=(actor.email if actor_is_user else actor_email)[:254],
        ip=client.ip,
        user_agent=client.user_agent,
        request_id=client.request_id,
        target_type=target_type,
        target_id=str(target_id or ""),
        target_repr=target_repr[:300],
        changes=changes or {},
        metadata=metadata or {},
    )


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    return {key: [before.get(key), after.get(key)] for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)}


def _user_snapshot(user: User) -> dict[str, Any]:
    return {
        "email": user.email,
        "full_name": user.full_name,
        "is_active": user.is_active,
        "is_staff": user.is_staff,
        "roles": sorted(user.roles.values_list("name", flat=True)) if user.pk else [],
    }


def _role_snapshot(role: Role) -> dict[str, Any]:
    return {"name": role.name, "description": role.description, "permissions": sorted(role.permissions)}


# --- Roles ------------------------------------------------------------------------------------


def sync_default_roles() -> list[Role]:
    """Create or update the default roles from the permission matrix (idempotent)."""
    roles = []
    for name, (description, permissions) in DEFAULT_ROLES.items():
        role, created = Role.objects.get_or_create(
            name=name, defaults={"description": description, "permissions": sorted(permissions), "is_system": True}
        )
        if not created and (role.permissions != sorted(permissions) or not role.is_system or role.description != description):
            role.permissions = sorted(permissions)
            role.description = description
            role.is_system = True
            role.save(update_fields=["permissions", "description", "is_system", "updated_at"])
        roles.append(role)
    return roles


def _check_role_permissions(permissions: Iterable[str]) -> list[str]:
    role = Role(name="probe", permissions=list(permissions))
    role.clean()  # raises ValidationError on unknown permissions, sorts and dedupes
    return role.permissions


@transaction.atomic
def create_role(*, actor: User | None, client: ClientInfo | None, name: str, description: str = "", permissions: Iterable[str] = ()) -> Role:
    role = Role(name=name, description=description, permissions=_check_role_permissions(permissions))
    role.full_clean()
    role.save()
    record_audit("role.create", actor=actor, client=client, target=role, changes=diff({}, _role_snapshot(role)))
    return role


@transaction.atomic
def update_role(*, actor: User | None, client: ClientInfo | None, role: Role, **fields: Any) -> Role:
    role = Role.objects.select_for_update().get(pk=role.pk)
    if role.is_system:
        raise ServiceConflict(f'"{role.name}" is a default role and cannot be changed; create a custom role instead.', "system_role")
    before = _role_snapshot(role)
    for key in ("name", "description"):
        if key in fields:
            setattr(role, key, fields[key])
    if "permissions" in fields:
        role.permissions = _check_role_permissions(fields["permissions"])
    role.full_clean()
    role.save()
    record_audit("role.update", actor=actor, client=client, target=role, changes=diff(before, _role_snapshot(role)))
    return role


@transaction.atomic
def delete_role(*, actor: User | None, client: ClientInfo | None, role: Role) -> None:
    role = Role.objects.select_for_update().get(pk=role.pk)
    if role.is_system:
        raise ServiceConflict(f'"{role.name}" is a default role and cannot be deleted.', "system_role")
    holders = role.users.count()
    if holders:
        raise ServiceConflict(f'Role "{role.name}" is assigned to {holders} user(s); unassign it first.', "role_in_use")
    snapshot = _role_snapshot(role)
    record_audit("role.delete", actor=actor, client=client, target=role, changes=diff(snapshot, {}))
    role.delete()


# --- Users ------------------------------------------------------------------------------------


def _validate_password(password: str, user: User) -> None:
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise ValidationError({"password": exc.messages}) from exc


def _admins_left_excluding(user: User) -> int:
    return User.objects.filter(is_active=True, roles__name="admin").exclude(pk=user.pk).distinct().count()


@transaction.atomic
def create_user(
    *,
    actor: User | None,
    client: ClientInfo | None,
    email: str,
    password: str,
    full_name: str = "",
    roles: Iterable[Role] = (),
    is_staff: bool = False,
    is_active: bool = True,
) -> User:
    user = User(email=User.objects.normalize_email(email).lower(), full_name=full_name, is_staff=is_staff, is_active=is_active)
    user.full_clean(exclude=["password"])
    _validate_password(password, user)
    user.set_password(password)
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError as exc:
        raise ValidationError({"email": ["A user with this email already exists."]}) from exc
    user.roles.set(list(roles))
    record_audit("user.create", actor=actor, client=client, target=user, changes=diff({}, _user_snapshot(user)))
    return user


@transaction.atomic
def update_user(*, actor: User | None, client: ClientInfo | None, user: User, **fields: Any) -> User:
    user = User.objects.select_for_update().get(pk=user.pk)
    before = _user_snapshot(user)
    for key in ("email", "full_name", "is_active", "is_staff"):
        if key in fields:
            setattr(user, key, fields[key])
    if "email" in fields:
        user.email = User.objects.normalize_email(user.email).lower()
    if before["is_active"] and not user.is_active:
        if actor is not None and actor.pk == user.pk:
            raise ServiceConflict("You cannot deactivate yourself.", "self_deactivation")
        if "admin" in before["roles"] and _admins_left_excluding(user) == 0:
            raise ServiceConflict("This is the tenant's last active admin.", "last_admin")
    user.full_clean(exclude=["password"])
    password_changed = False
    if fields.get("password"):
        _validate_password(fields["password"], user)
        user.set_password(fields["password"])
        password_changed = True
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError as exc:
        raise ValidationError({"email": ["A user with this email already exists."]}) from exc
    if "roles" in fields:
        _set_roles(actor=actor, user=user, roles=fields["roles"], before=before["roles"])
    changes = diff(before, _user_snapshot(user))
    if password_changed:
        changes["password"] = ["***", "***(changed)"]
        _revoke_refresh_tokens(user)
    if changes:
        record_audit("user.update", actor=actor, client=client, target=user, changes=changes)
    return user


def _set_roles(*, actor: User | None, user: User, roles: Iterable[Role], before: list[str]) -> None:
    roles = list(roles)
    names = {role.name for role in roles}
    if "admin" in before and "admin" not in names:
        if actor is not None and actor.pk == user.pk:
            raise ServiceConflict("You cannot remove your own admin role.", "self_demotion")
        if _admins_left_excluding(user) == 0:
            raise ServiceConflict("This is the tenant's last active admin.", "last_admin")
    user.roles.set(roles)


@transaction.atomic
def assign_roles(*, actor: User | None, client: ClientInfo | None, user: User, roles: Iterable[Role]) -> User:
    user = User.objects.select_for_update().get(pk=user.pk)
    before = _user_snapshot(user)
    _set_roles(actor=actor, user=user, roles=roles, before=before["roles"])
    record_audit("user.roles", actor=actor, client=client, target=user, changes=diff(before, _user_snapshot(user)))
    return user


@transaction.atomic
def delete_user(*, actor: User | None, client: ClientInfo | None, user: User) -> None:
    user = User.objects.select_for_update().get(pk=user.pk)
    if actor is not None and actor.pk == user.pk:
        raise ServiceConflict("You cannot delete yourself.", "self_deletion")
    before = _user_snapshot(user)
    if "admin" in before["roles"] and _admins_left_excluding(user) == 0:
        raise ServiceConflict("This is the tenant's last active admin.", "last_admin")
    record_audit("user.delete", actor=actor, client=client, target=user, changes=diff(before, {}))
    user.delete()


# --- Sessions (JWT) ---------------------------------------------------------------------------


def issue_tokens(user: User) -> dict[str, Any]:
    """A refresh/access pair bound to the current tenant's schema."""
    refresh = RefreshToken.for_user(user)
    refresh[TENANT_CLAIM] = connection.schema_name
    # for_user() recorded the token before it carried the tenant claim: store what was issued.
    OutstandingToken.objects.filter(jti=refresh[jwt_settings.JTI_CLAIM]).update(token=str(refresh))
    access = refresh.access_token
    return {
        "access": str(access),
        "refresh": str(refresh),
        "token_type": "Bearer",
        "expires_in": int(jwt_settings.ACCESS_TOKEN_LIFETIME.total_seconds()),
    }


def login(*, client: ClientInfo, email: str, password: str, request: Any = None) -> tuple[User, dict[str, Any]]:
    user = authenticate(request, email=(email or "").strip().lower(), password=password)
    if user is None:
        record_audit(
            "auth.login_failed",
            actor=None,
            client=client,
            outcome=AuditOutcome.FAILURE,
            actor_email=(email or "")[:254],
            metadata={"reason": "invalid_credentials"},
        )
        raise AuthenticationRefused("Invalid email or password.", "invalid_credentials")
    tokens = issue_tokens(user)
    update_last_login(None, user)
    record_audit("auth.login", actor=user, client=client, target=user)
    return user, tokens


def _decode_refresh(raw: str) -> RefreshToken:
    try:
        return _verified_without_blacklist(raw)
    except TokenError as exc:
        raise AuthenticationRefused(str(exc), "token_not_valid") from exc


def _verified_without_blacklist(raw: str) -> RefreshToken:
    """Signature, expiry and type checked; the blacklist is checked by the caller, who must
    tell reuse of a rotated token apart from any other invalid token."""
    token = RefreshToken(raw, verify=False)
    token.token_backend.decode(raw, verify=True)
    token.check_exp()
    if token.get("token_type") != "refresh":
        raise TokenError("Token has wrong type")
    return token


def _check_tenant(token: RefreshToken) -> None:
    if token.get(TENANT_CLAIM) != connection.schema_name:
        raise AuthenticationRefused("Token was issued for another tenant.", "token_tenant_mismatch")


def _revoke_refresh_tokens(user: User) -> int:
    outstanding = OutstandingToken.objects.filter(user=user, blacklistedtoken__isnull=True)
    count = 0
    for token in outstanding:
        BlacklistedToken.objects.get_or_create(token=token)
        count += 1
    return count


def refresh(*, client: ClientInfo, raw: str) -> dict[str, Any]:
    """Rotate a refresh token. Presenting a token that was already rotated or revoked is reuse:
    the whole family (every outstanding refresh token of that user) is revoked and audited."""
    token = _decode_refresh(raw)
    _check_tenant(token)
    user = User.objects.filter(pk=token.get(jwt_settings.USER_ID_CLAIM)).first()
    if user is None or not user.is_active:
        raise AuthenticationRefused("User not found or inactive.", "user_inactive")
    jti = token.get(jwt_settings.JTI_CLAIM)
    with transaction.atomic():
        if BlacklistedToken.objects.filter(token__jti=jti).exists():
            revoked = _revoke_refresh_tokens(user)
            record_audit(
                "auth.refresh_reuse",
                actor=user,
                client=client,
                outcome=AuditOutcome.DENIED,
                target=user,
                metadata={"jti": jti, "revoked_tokens": revoked},
            )
            reused = True
        else:
            reused = False
            outstanding = OutstandingToken.objects.filter(jti=jti).first()
            if outstanding is None:
                raise AuthenticationRefused("Token is not known.", "token_not_valid")
            BlacklistedToken.objects.get_or_create(token=outstanding)
            record_audit("auth.refresh", actor=user, client=client, target=user)
    if reused:
        raise AuthenticationRefused("Refresh token was already used; all sessions of this user were revoked.", "token_reused")
    return issue_tokens(user)


def logout(*, client: ClientInfo, raw: str, actor: User | None = None) -> None:
    token = _decode_refresh(raw)
    _check_tenant(token)
    user = User.objects.filter(pk=token.get(jwt_settings.USER_ID_CLAIM)).first()
    if actor is not None and actor.is_authenticated and user is not None and actor.pk != user.pk:
        raise AuthenticationRefused("This refresh token belongs to another user.", "token_not_yours")
    with transaction.atomic():
        outstanding = OutstandingToken.objects.filter(jti=token.get(jwt_settings.JTI_CLAIM)).first()
        if outstanding is not None:
            BlacklistedToken.objects.get_or_create(token=outstanding)
        record_audit("auth.logout", actor=user, client=client, target=user)
