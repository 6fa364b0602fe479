"""The Grafana dashboards shipped in deploy/grafana/dashboards, and their per-tenant export.

The provisioned dashboards let the viewer pick the tenant (`$tenant`, a schema name, used in the
SQL as `"${tenant}".table`). `for_tenant()` turns one into a dashboard of a single tenant: the
variable becomes a hidden constant holding that schema, the uid and title get the tenant's slug
and name, so several tenants' copies can live in one Grafana (one folder or organisation each).
Dashboards without a `tenant` variable (Platform Health: Prometheus, platform-wide) are not
exported per tenant.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

DASHBOARD_DIR = Path(settings.BASE_DIR) / "deploy" / "grafana" / "dashboards"
DATASOURCES_FILE = Path(settings.BASE_DIR) / "deploy" / "grafana" / "provisioning" / "datasources" / "iiot.yaml"
TENANT_VARIABLE = "tenant"
# Grafana uids are at most 40 characters.
MAX_UID = 40


@dataclass(frozen=True)
class Dashboard:
    path: Path
    model: dict[str, Any]

    @property
    def uid(self) -> str:
        return self.model["uid"]

    @property
    def tenant_aware(self) -> bool:
        return any(v.get("name") == TENANT_VARIABLE for v in self.model.get("templating", {}).get("list", []))


def load_dashboards(directory: Path = DASHBOARD_DIR) -> list[Dashboard]:
    return [Dashboard(path=path, model=json.loads(path.read_text())) for path in sorted(directory.glob("*.json"))]


def for_tenant(model: dict[str, Any], *, schema: str, slug: str, name: str) -> dict[str, Any]:
    """A copy of `model` fixed to one tenant's schema."""
    fixed = copy.deepcopy(model)
    variables = fixed.setdefault("templating", {}).setdefault("list", [])
    for index, variable in enumerate(variables):
        if variable.get("name") == TENANT_VARIABLE:
            variables[index] = {
                "name": TENANT_VARIABLE,
                "label": "Tenant",
                "type": "constant",
                "query": schema,
                "current": {"selected": True, "text": schema, "value": schema},
                "options": [{"selected": True, "text": schema, "value": schema}],
                "hide": 2,
                "skipUrlSync": True,
            }
    suffix = f"-{slug}"
    fixed["uid"] = (fixed["uid"][: MAX_UID - len(suffix)] + suffix) if len(fixed["uid"]) + len(suffix) > MAX_UID else fixed["uid"] + suffix
    fixed["title"] = f"{fixed['title']} · {name}"
    fixed["tags"] = [*fixed.get("tags", []), f"tenant:{slug}"]
    fixed.pop("id", None)
    fixed["version"] = 1
    return fixed


def export_for_tenant(*, schema: str, slug: str, name: str, out: Path) -> list[Path]:
    """Write the tenant-aware dashboards fixed to one tenant into `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for dashboard in load_dashboards():
        if not dashboard.tenant_aware:
            continue
        target = out / dashboard.path.name
        target.write_text(json.dumps(for_tenant(dashboard.model, schema=schema, slug=slug, name=name), indent=2, ensure_ascii=False) + "\n")
        written.append(target)
    return written
