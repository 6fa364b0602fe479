"""Users, roles and the append-only audit log.

These tables exist in the public schema (platform staff and platform-level audit: tenant
lifecycle) and in every tenant schema (the tenant's users, roles and audit trail).
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Now
from django.utils import timezone

from accounts.permissions import unknown_permissions


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra: object) -> User:
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra: object) -> User:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra: object) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self._create_user(email, password, **extra)

    def get_by_natural_key(self, username: str | None) -> User:
        return self.get(email__iexact=username or "")


role_name_validator = RegexValidator(
    r"^[a-z][a-z0-9_-]{1,63}$", "2-64 characters: lower-case letters, digits, '-' and '_', starting with a letter."
)


class Role(models.Model):
    """A named set of `resource:action` permissions. Default roles are `is_system` and read-only."""

    name = models.CharField(max_length=64, unique=True, validators=[role_name_validator])
    description = models.CharField(max_length=500, blank=True)
    permissions = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    is_system = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        unknown = unknown_permissions(list(self.permissions or []))
        if unknown:
            raise ValidationError({"permissions": [f"Unknown permission: {name}." for name in unknown]})
        self.permissions = sorted(set(self.permissions or []))


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField(unique=True)
    full_name = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False, help_text="May log in to the Django admin portal.")
    date_joined = models.DateTimeField(default=timezone.now)
    roles = models.ManyToManyField(Role, blank=True, related_name="users")

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        ordering = ["email"]
        constraints = [models.UniqueConstraint(models.functions.Lower("email"), name="user_email_ci_unique")]

    def __str__(self) -> str:
        return self.email

    def clean(self) -> None:
        super().clean()
        self.email = self.__class__.objects.normalize_email(self.email).lower()

    def effective_permissions(self) -> frozenset[str]:
        """Union of the user's roles' permissions, computed once per instance (i.e. per request)."""
        cached = getattr(self, "_effective_permissions", None)
        if cached is None:
            if not self.is_active:
                cached = frozenset()
            else:
                lists = Role.objects.filter(users=self).values_list("permissions", flat=True)
                cached = frozenset(name for names in lists for name in names)
            self._effective_permissions = cached
        return cached

    def has_platform_permission(self, name: str) -> bool:
        return name in self.effective_permissions()


class AuditOutcome(models.TextChoices):
    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"
    DENIED = "denied", "Denied"


class AuditLogQuerySet(models.QuerySet):
    def update(self, **kwargs: object) -> int:
        raise PermissionError("The audit log is append-only.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise PermissionError("The audit log is append-only.")


class AuditLog(models.Model):
    """One security-relevant event. Append-only: the model, the admin, the API and a database
    trigger (see migration 0002) all refuse updates and deletes."""

    created_at = models.DateTimeField(db_default=Now(), db_index=True, editable=False)
    action = models.CharField(max_length=64, db_index=True)
    outcome = models.CharField(max_length=16, choices=AuditOutcome.choices, default=AuditOutcome.SUCCESS)
    tenant = models.CharField(max_length=63, help_text="Schema name of the tenant the event belongs to.")
    actor_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    actor_email = models.CharField(max_length=254, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=500, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=300, blank=True)
    changes = models.JSONField(default=dict, blank=True, help_text='{"field": [before, after]}')
    metadata = models.JSONField(default=dict, blank=True)

    objects = AuditLogQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} {self.actor_email or '-'}"

    def save(self, *args: object, **kwargs: object) -> None:
        if self.pk is not None and not self._state.adding:
            raise PermissionError("The audit log is append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: object, **kwargs: object):
        raise PermissionError("The audit log is append-only.")
