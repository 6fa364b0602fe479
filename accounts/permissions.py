"""The permission catalogue (`resource:action`) and the default roles' matrix.

This module is the single source of truth for both: the README's roles matrix is generated from
it (`python manage.py roles_matrix`), provisioning syncs the default roles from it, and the API
refuses permission names that are not in it.
"""

from __future__ import annotations

PERMISSIONS: dict[str, str] = {
    "users:read": "List and view users",
    "users:write": "Create, change, deactivate and delete users; assign roles",
    "roles:read": "List and view roles",
    "roles:write": "Create, change and delete custom roles",
    "audit:read": "Read the audit log",
    "devices:read": "List and view devices, profiles and attributes",
    "devices:write": "Create, change and delete devices and profiles; rotate credentials",
    "devices:command": "Send commands to devices",
    "telemetry:read": "Query telemetry and analytics",
    "telemetry:write": "Write telemetry over the HTTP API",
    "telemetry:export": "Export telemetry ranges (CSV)",
    "rules:read": "List and view rules",
    "rules:write": "Create, change, delete and backtest rules",
    "alerts:read": "List and view alerts",
    "alerts:ack": "Acknowledge alerts and add notes",
    "alerts:resolve": "Resolve alerts",
    "notifications:read": "List notification channels and deliveries",
    "notifications:write": "Configure notification channels",
    "oncall:read": "View escalation policies and on-call schedules",
    "oncall:write": "Configure escalation policies and on-call schedules",
    "ml:read": "View models, scores and adaptive thresholds",
    "ml:write": "Train, publish and retire models",
    "ingest:read": "Read ingest rejections (dead letters)",
    "tenant:manage": "Change tenant settings, quotas and retention",
}

_READ_ONLY = ["devices:read", "telemetry:read", "rules:read", "alerts:read", "ml:read", "roles:read"]

DEFAULT_ROLES: dict[str, tuple[str, list[str]]] = {
    "admin": ("Full control of the tenant, including users, roles and the audit log.", list(PERMISSIONS)),
    "developer": (
        "Builds the plant's model: devices, rules, channels, models; no user administration.",
        [
            *_READ_ONLY,
            "devices:write",
            "devices:command",
            "telemetry:write",
            "telemetry:export",
            "rules:write",
            "alerts:ack",
            "alerts:resolve",
            "notifications:read",
            "notifications:write",
            "oncall:read",
            "ml:write",
            "ingest:read",
        ],
    ),
    "operator": (
        "Runs the plant: watches telemetry, handles alerts, sends commands.",
        [
            *_READ_ONLY,
            "devices:command",
            "telemetry:export",
            "alerts:ack",
            "alerts:resolve",
            "notifications:read",
            "oncall:read",
        ],
    ),
    "viewer": ("Read-only access to devices, telemetry, rules and alerts.", list(_READ_ONLY)),
}


def unknown_permissions(names: list[str]) -> list[str]:
    return sorted(set(names) - set(PERMISSIONS))


def roles_matrix_markdown() -> str:
    """The roles matrix as a Markdown table (rows: permissions, columns: default roles)."""
    roles = list(DEFAULT_ROLES)
    lines = ["| permission | " + " | ".join(roles) + " | what it allows |", "|---|" + "---|" * len(roles) + "---|"]
    for name, description in PERMISSIONS.items():
        marks = ["✓" if name in DEFAULT_ROLES[role][1] else "" for role in roles]
        lines.append(f"| `{name}` | " + " | ".join(marks) + f" | {description} |")
    return "\n".join(lines)
