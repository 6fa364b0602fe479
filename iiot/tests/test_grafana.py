"""Grafana provisioning: the dashboards are valid models whose datasources resolve to the provisioned
ones; every PostgreSQL panel query (Grafana macros expanded here as Grafana expands them) runs
against a tenant schema filled through the real broker and ingest, and returns rows; the
Prometheus panels name metrics the platform defines; `export_grafana` fixes the tenant."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django_tenants.utils import schema_context

from iiot.observability.grafana import DASHBOARD_DIR, DATASOURCES_FILE, load_dashboards
from iiot.testing.mosquitto import mosquitto_fixture
from telemetry.tests.test_ingest_support import IngestProcess, Publisher, count_points, create_plant, delete_plant, wait_for

ROOT = Path(settings.BASE_DIR)
grafana_broker = mosquitto_fixture("module")
pytestmark = pytest.mark.timeout(180)

SEED_PANELS = {"iiot-device-overview": 6, "iiot-telemetry": 3, "iiot-alerts-rules": 6}
PG_TYPES = {"grafana-postgresql-datasource", "postgres"}


# --- Grafana's SQL macros, as its PostgreSQL datasource expands them ---------------------------------

INTERVALS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def interval_seconds(text: str) -> int:
    match = re.fullmatch(r"'?(\d+)([smhd])'?", text.strip())
    assert match, f"unsupported interval {text!r}"
    return int(match[1]) * INTERVALS[match[2]]


def grafana_interval(start: datetime, end: datetime, max_points: int = 1000) -> str:
    """Roughly Grafana's $__interval: the range over the panel's width, rounded to a nice step."""
    raw = (end - start).total_seconds() / max_points
    for step, text in ((1, "1s"), (10, "10s"), (30, "30s"), (60, "1m"), (300, "5m"), (600, "10m"), (1800, "30m"), (3600, "1h"), (86400, "1d")):
        if raw <= step:
            return text
    return "1d"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(sql: str, *, start: datetime, end: datetime, variables: dict[str, list[str] | str]) -> str:
    interval = grafana_interval(start, end)
    out = sql.replace("$__interval_ms", str(interval_seconds(interval) * 1000)).replace("$__interval", interval)
    out = out.replace("$__timeFrom()", f"'{_iso(start)}'").replace("$__timeTo()", f"'{_iso(end)}'")

    def time_filter(match: re.Match) -> str:
        return f"{match[1].strip()} BETWEEN '{_iso(start)}' AND '{_iso(end)}'"

    def time_group(match: re.Match) -> str:
        column, step = (part.strip() for part in match[2].split(",", 1))
        seconds = interval_seconds(step)
        expression = f"floor(extract(epoch from {column})/{seconds})*{seconds}"
        return f'{expression} AS "time"' if match[1] == "Alias" else expression

    out = re.sub(r"\$__timeFilter\(([^)]*)\)", time_filter, out)
    out = re.sub(r"\$__timeGroup(Alias)?\(([^)]*)\)", time_group, out)
    for name, value in variables.items():
        # Single values go in raw, multi-value variables as a list of quoted strings (Grafana's SQL rules).
        text = value if isinstance(value, str) else ",".join("'" + v.replace("'", "''") + "'" for v in value)
        out = out.replace("${" + name + "}", text)
        out = re.sub(r"\$" + name + r"\b", text, out)
    leftover = re.findall(r"\$\{?\w+", out)
    assert not leftover, f"unexpanded Grafana variables or macros {leftover} in: {sql}"
    return out


def run(sql: str) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def pg_targets(dashboard: dict) -> list[tuple[dict, dict]]:
    return [
        (panel, target)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        if (target.get("datasource") or panel["datasource"])["type"] in PG_TYPES
    ]


def variable_values(dashboard: dict, schema: str, start: datetime, end: datetime) -> dict[str, list[str] | str]:
    """Run the dashboard's own variable queries (in order) to get what Grafana would offer; select all."""
    values: dict[str, list[str] | str] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "constant":
            values[variable["name"]] = variable["query"]
            continue
        if variable["name"] == "tenant":
            rows = run(expand(variable["query"], start=start, end=end, variables=values))
            assert (schema,) in rows, rows
            values["tenant"] = schema
            continue
        rows = run(expand(variable["query"], start=start, end=end, variables=values))
        assert rows, f"variable {variable['name']} offers nothing"
        values[variable["name"]] = [str(row[1] if len(row) > 1 else row[0]) for row in rows]
    return values


# --- the files -----------------------------------------------------------------------------------------


def provisioned_datasources() -> dict[str, str]:
    config = yaml.safe_load(DATASOURCES_FILE.read_text())
    return {source["uid"]: source["type"] for source in config["datasources"]}


def test_dashboards_are_valid_grafana_models():
    datasources = provisioned_datasources()
    assert set(datasources.values()) >= {"grafana-postgresql-datasource", "prometheus"}
    dashboards = load_dashboards()
    assert {d.uid for d in dashboards} == {*SEED_PANELS, "iiot-platform-health"}
    assert len({d.uid for d in dashboards}) == len(dashboards)
    for dashboard in dashboards:
        model = dashboard.model
        assert model["title"] and model["schemaVersion"] >= 36 and 0 < len(model["uid"]) <= 40
        assert model["time"]["from"] and model["refresh"]
        if dashboard.uid in SEED_PANELS:
            assert len(model["panels"]) == SEED_PANELS[dashboard.uid], dashboard.uid
            assert dashboard.tenant_aware
        ids = [panel["id"] for panel in model["panels"]]
        assert len(set(ids)) == len(ids) and all(isinstance(i, int) for i in ids)
        cells: set[tuple[int, int]] = set()
        for panel in model["panels"]:
            grid = panel["gridPos"]
            assert {"h", "w", "x", "y"} <= set(grid) and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in cells, f"{dashboard.uid}: panel {panel['id']} overlaps another"
                    cells.add((x, y))
            assert panel["type"] in {"stat", "timeseries", "table", "piechart", "bargauge", "gauge"} and panel["title"]
            assert panel["targets"], panel["title"]
            refs = [target["refId"] for target in panel["targets"]]
            assert len(set(refs)) == len(refs)
            for source in [panel["datasource"], *(t.get("datasource") for t in panel["targets"] if t.get("datasource"))]:
                assert datasources.get(source["uid"]) == source["type"], f"{dashboard.uid}/{panel['title']}: {source}"
            for target in panel["targets"]:
                assert target.get("rawSql") or target.get("expr"), panel["title"]
        for variable in model.get("templating", {}).get("list", []):
            if "datasource" in variable:
                assert datasources.get(variable["datasource"]["uid"]) == variable["datasource"]["type"]


def test_postgres_panels_read_only_the_selected_tenant_schema():
    """Every table a tenant dashboard reads is qualified with the tenant variable (or is public.tenants_tenant)."""
    for dashboard in load_dashboards():
        for panel, target in pg_targets(dashboard.model):
            sql = target["rawSql"]
            assert not re.search(r"\b(insert|update|delete|drop|alter|create|truncate|grant)\b", sql, re.I), panel["title"]
            for table in re.findall(r"(?<!epoch )\b(?:FROM|JOIN)\s+([^\s(]+)", sql, re.I):
                assert table.startswith('"${tenant}".'), f"{dashboard.uid}/{panel['title']}: {table}"


def test_prometheus_panels_use_metrics_the_platform_defines():
    from prometheus_client import REGISTRY

    from iiot.observability.multiprocess import import_app_metrics

    import_app_metrics()
    from django_prometheus.middleware import Metrics

    Metrics.get_instance()  # django-prometheus creates its request metrics with the first middleware
    known = set(REGISTRY._names_to_collectors)  # every sample name, suffixes included
    known |= {"iiot_telemetry_partitions", "iiot_telemetry_table_bytes", "iiot_telemetry_rows_estimate"}
    health = next(d for d in load_dashboards() if d.uid == "iiot-platform-health")
    used = set()
    for panel in health.model["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\b(?:iiot|django)_[a-z0-9_]+", target["expr"]))
    assert used and used <= known, sorted(used - known)


def test_compose_mounts_the_provisioning_and_prometheus_scrapes_metrics_with_the_token():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana, prometheus = compose["services"]["grafana"], compose["services"]["prometheus"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    assert (ROOT / mounts["/etc/grafana/provisioning"]).resolve() == (ROOT / "deploy/grafana/provisioning").resolve()
    assert (ROOT / mounts["/var/lib/grafana/dashboards"]).resolve() == DASHBOARD_DIR.resolve()
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/iiot.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    job = next(job for job in scrape["scrape_configs"] if job["job_name"] == "iiot")
    assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"
    assert any("prometheus.yml" in volume for volume in prometheus["volumes"])
    assert "PROMETHEUS_MULTIPROC_DIR" in compose["x-app"]["environment"]


# --- the queries, on real data ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def filled(grafana_broker, platform, django_db_blocker, tmp_path_factory):
    """alpha: three devices; two send 4 metrics every 5 minutes for the last 2 hours through the
    broker and a real ingest process, one also reports online; the third never sends."""
    with django_db_blocker.unblock():
        plant = create_plant("alpha", 3, prefix=f"graf{uuid.uuid4().hex[:5]}")
        ingest = IngestProcess(grafana_broker, tmp_path_factory.mktemp("grafana-ingest"))
        ingest.start()
        publishers = [Publisher(grafana_broker, device) for device in plant.devices[:2]]
        try:
            now = datetime.now(UTC).replace(microsecond=0)
            infos = [publishers[0].publish(b"online", kind="status")]
            for step in range(24):
                ts = int((now - timedelta(minutes=5 * step)).timestamp() * 1000)
                for n, publisher in enumerate(publishers):
                    values = {"temperature": 20 + step % 7 + n, "humidity": 40 + step % 3, "pressure": 1.1 + n / 10, "vibration": 2.0 + step % 4}
                    infos.append(publisher.publish({"ts": ts, "values": values}))
            for info in infos:
                info.wait_for_publish(20)
            ids = [d.pk for d in plant.devices]
            assert wait_for(lambda: count_points("alpha", ids) == 24 * 4 * 2, 30), count_points("alpha", ids)
        finally:
            for publisher in publishers:
                publisher.close()
            ingest.terminate()
    yield plant
    with django_db_blocker.unblock():
        delete_plant(plant)


@pytest.fixture
def alerts_and_rules(filled, alpha):
    from alerting import services as alerting_services
    from rules.models import Rule

    device = filled.devices[0]
    with schema_context("alpha"):
        Rule.objects.create(
            name=f"Hot {device.uid}", type="threshold", severity="critical", target_kind="labels", target_labels={"line": "1"},
            condition={"metric": "temperature", "op": ">", "value": 80},
        )
        Rule.objects.create(
            name=f"Quiet {device.uid}", type="no_data", severity="warning", enabled=False, target_kind="labels", target_labels={"line": "1"},
            condition={"seconds": 600},
        )
        now = datetime.now(UTC)
        opened, _ = alerting_services.raise_alert(
            rule_id=None, rule_name="Hot", device_id=device.pk, severity="critical", message="temperature above 80", value=91.0,
            observed_at=now - timedelta(minutes=30),
        )
        alerting_services.raise_alert(
            rule_id=None, rule_name="Hot", device_id=device.pk, severity="critical", message="again", value=92.0, observed_at=now - timedelta(minutes=20),
        )
        second, _ = alerting_services.raise_alert(
            rule_id=None, rule_name="Vibration", device_id=filled.devices[1].pk, severity="minor", message="vibration", value=7.0,
            observed_at=now - timedelta(minutes=10),
        )
        alerting_services.acknowledge_alert(actor=None, client=None, alert_id=second.pk)
    return opened


PG_PANELS = [
    pytest.param(dashboard.uid, panel["id"], id=f"{dashboard.uid}:{panel['title']}")
    for dashboard in load_dashboards()
    for panel in dashboard.model["panels"]
    if (panel["datasource"] or {}).get("type") in PG_TYPES
]


@pytest.mark.django_db
@pytest.mark.parametrize(("uid", "panel_id"), PG_PANELS)
@pytest.mark.parametrize("span", [timedelta(hours=3), timedelta(days=7)], ids=["3h-1m-rollups", "7d-1h-rollups"])
def test_every_postgres_panel_query_returns_rows(filled, alerts_and_rules, uid, panel_id, span):
    dashboard = next(d.model for d in load_dashboards() if d.uid == uid)
    panel = next(p for p in dashboard["panels"] if p["id"] == panel_id)
    end = datetime.now(UTC)
    start = end - span
    variables = variable_values(dashboard, "alpha", start, end)
    for target in panel["targets"]:
        rows = run(expand(target["rawSql"], start=start, end=end, variables=variables))
        assert rows, f"{panel['title']} / {target['refId']} returned nothing"
        if target["format"] == "time_series":
            # Grafana needs a time column, in ascending order.
            with connection.cursor() as cursor:
                cursor.execute(expand(target["rawSql"], start=start, end=end, variables=variables))
                names = [column.name for column in cursor.description]
                times = [row[0] for row in cursor.fetchall()]
            assert names[0] == "time" and times == sorted(times)


@pytest.mark.django_db
def test_panels_show_what_was_ingested(filled, alerts_and_rules):
    """Spot checks of values: the panels compute the right things, not only something."""
    end = datetime.now(UTC)
    start = end - timedelta(hours=3)
    boards = {d.uid: d.model for d in load_dashboards()}

    def panel_rows(uid: str, title: str, ref: str = "A", variables: dict | None = None) -> list[tuple]:
        board = boards[uid]
        panel = next(p for p in board["panels"] if p["title"] == title)
        target = next(t for t in panel["targets"] if t["refId"] == ref)
        chosen = variables or variable_values(board, "alpha", start, end)
        return run(expand(target["rawSql"], start=start, end=end, variables=chosen))

    silent = [row[0] for row in panel_rows("iiot-device-overview", "Devices silent for 5 minutes or more")]
    assert filled.devices[2].uid in silent and filled.devices[0].uid not in silent
    points = sum(row[1] for row in panel_rows("iiot-device-overview", "Points received and reporting devices"))
    assert points >= 24 * 4 * 2  # other tests may have stored more in alpha meanwhile
    # Telemetry statistics for exactly the two sending devices and temperature.
    board = boards["iiot-telemetry"]
    variables = variable_values(board, "alpha", start, end)
    variables["device"] = [str(filled.devices[0].pk), str(filled.devices[1].pk)]
    variables["metric"] = [str(filled.metric_ids["temperature"])]
    stats = panel_rows("iiot-telemetry", "Statistics over the range", variables=variables)
    by_device = {row[0]: row for row in stats}
    assert set(by_device) == {filled.devices[0].uid, filled.devices[1].uid}
    first = by_device[filled.devices[0].uid]
    expected = [20 + step % 7 for step in range(24)]
    # Three hours cover all 24 points (2 hours of history).
    assert first[3] == 24 and first[4] == min(expected) and first[5] == max(expected)
    assert first[6] == pytest.approx(sum(expected) / 24)
    # Alerts: two open (one acknowledged), one critical; two firings folded into the "Hot" alert.
    (triggered, acknowledged, critical), = panel_rows("iiot-alerts-rules", "Open alerts")
    assert triggered >= 1 and acknowledged >= 1 and critical >= 1
    table = panel_rows("iiot-alerts-rules", "Open alert list")
    assert {(row[1], row[2], row[3]) for row in table} >= {("critical", "triggered", "Hot"), ("minor", "acknowledged", "Vibration")}
    assert [row[1] for row in table].index("critical") < [row[1] for row in table].index("minor")
    by_rule = {row[0]: row for row in panel_rows("iiot-alerts-rules", "Noisiest rules")}
    assert by_rule["Hot"][2] >= 2


# --- export_grafana ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_export_grafana_fixes_the_tenant(filled, alpha, beta, tmp_path, capsys):
    call_command("export_grafana", tenant="alpha", out=str(tmp_path / "alpha"))
    call_command("export_grafana", "--tenant", "beta", "--out", str(tmp_path / "beta"))
    assert "3 dashboards for alpha" in capsys.readouterr().out
    originals = {d.path.name: d.model for d in load_dashboards()}
    uids = set()
    for slug in ("alpha", "beta"):
        files = sorted(p.name for p in (tmp_path / slug).glob("*.json"))
        assert files == ["alerts-rules.json", "device-overview.json", "telemetry.json"]
        for name in files:
            model = json.loads((tmp_path / slug / name).read_text())
            original = originals[name]
            tenant = next(v for v in model["templating"]["list"] if v["name"] == "tenant")
            assert tenant["type"] == "constant" and tenant["query"] == slug and tenant["hide"] == 2
            assert model["uid"] == f"{original['uid']}-{slug}" and len(model["uid"]) <= 40
            assert slug.title() in model["title"] and f"tenant:{slug}" in model["tags"]
            assert [p["targets"] for p in model["panels"]] == [p["targets"] for p in original["panels"]]
            uids.add(model["uid"])
    assert len(uids) == 6
    # The exported queries run as they are, on their tenant's schema.
    model = json.loads((tmp_path / "alpha" / "device-overview.json").read_text())
    end = datetime.now(UTC)
    variables = variable_values(model, "alpha", end - timedelta(hours=1), end)
    assert variables["tenant"] == "alpha"
    panel = next(p for p in model["panels"] if p["title"] == "Devices")
    assert run(expand(panel["targets"][0]["rawSql"], start=end - timedelta(hours=1), end=end, variables=variables))[0][0] >= 3


@pytest.mark.django_db
def test_export_grafana_unknown_tenant(platform, tmp_path):
    with pytest.raises(CommandError, match="nope"):
        call_command("export_grafana", tenant="nope", out=str(tmp_path))
    with pytest.raises(CommandError):
        call_command("export_grafana", tenant="public", out=str(tmp_path))
