"""Browser tests: Playwright for Python driving Debian's headless Chromium (/usr/bin/chromium, no
browser download) against the real ASGI app (uvicorn subprocess on a free port, `alpha.localhost`,
which Chromium resolves to loopback), the real ingest (`manage.py ingest` subprocess) and a real
broker. Screenshots of each page go to test-artifacts/ at the repository root."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.conf import settings

from conftest import PASSWORD
from iiot.testing.mosquitto import mosquitto_fixture
from telemetry.tests.test_ingest_support import IngestProcess, Publisher, create_plant, delete_plant, ingest_env

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(settings.BASE_DIR)
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"),
    pytest.mark.skipif(not (ROOT / "node_modules" / "uplot").is_dir(), reason="front-end packages not installed (npm ci)"),
]

browser_broker = mosquitto_fixture("module")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def live_env(broker) -> dict[str, str]:
    channel_layer = settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]
    return {"CHANNEL_LAYER_URL": channel_layer, "LIVE_REDIS_URL": settings.LIVE_REDIS_URL}


@pytest.fixture(scope="module")
def plant(browser_broker, platform, django_db_blocker):
    with django_db_blocker.unblock():
        created = create_plant("alpha", 3, prefix=f"web{uuid.uuid4().hex[:5]}")
    yield created
    with django_db_blocker.unblock():
        delete_plant(created)


@pytest.fixture(scope="module")
def hot_rule(plant, django_db_blocker):
    """A committed threshold rule on the plant's profile (created before the ingest starts)."""
    from django_tenants.utils import schema_context

    from devices.models import Device
    from rules import services
    from rules.models import Rule

    with django_db_blocker.unblock(), schema_context("alpha"):
        rule = services.create_rule(actor=None, client=None, name=f"{plant.devices[0].uid} overheating", type="threshold",
                                    severity="critical", target_kind="device",
                                    target_device=Device.objects.get(pk=plant.devices[2].pk),
                                    condition={"metric": "temperature", "op": "gt", "value": 150})  # fmt: skip
    yield rule
    with django_db_blocker.unblock(), schema_context("alpha"):
        from alerting.models import Alert

        Alert.objects.filter(rule_id=rule.pk).delete()
        Rule.objects.filter(pk=rule.pk).delete()


@pytest.fixture(scope="module")
def web(browser_broker, plant, tmp_path_factory):
    """uvicorn serving iiot.asgi on a free port, with the test database and Redis."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("web") / "uvicorn.log"
    env = ingest_env(browser_broker, LOG_LEVEL="WARNING", **live_env(browser_broker))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "iiot.asgi:application", "--host", "127.0.0.1", "--port", str(port),
             "--lifespan", "off", "--no-access-log"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", headers={"Host": "localhost"})
            if urllib.request.urlopen(request, timeout=2).status == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"uvicorn did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    yield f"http://alpha.localhost:{port}"
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def ingest(browser_broker, plant, hot_rule, tmp_path_factory):
    process = IngestProcess(browser_broker, tmp_path_factory.mktemp("ingest"), **live_env(browser_broker))
    try:
        process.start()
        yield process
    finally:
        process.kill()


@pytest.fixture(scope="module")
def browser(web, plant):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread (greenlets), which Django's async
    # guard takes for an async context: the test process's own ORM use (fixtures, the per-test
    # transaction) is plain synchronous code, so the guard is lifted while the browser runs.
    saved = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            yield chromium
            chromium.close()
    finally:
        if saved is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = saved


@pytest.fixture
def open_page(browser, web):
    """open_page(role, width=1280) -> a logged-in page; page errors fail the test."""
    contexts, errors = [], []

    def open_(role: str, width: int = 1280, height: int = 900):
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{web}/login/")
        page.fill("#id_username", f"{role}@alpha.example.com")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{web}/")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, errors


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_login_and_fleet_shows_the_devices(open_page, web, plant):
    page = open_page("operator")
    screenshot(page, "home")
    page.click("nav >> text=Fleet")
    page.wait_for_url(f"{web}/devices/")
    prefix = plant.devices[0].uid.rsplit("-", 1)[0]
    page.fill("#id_q", prefix)  # htmx filters as you type
    page.wait_for_function(f"document.querySelectorAll('#fleet-table tr.device-row').length === {len(plant.devices)}")
    uids = page.locator("#fleet-table tr.device-row .mono").all_inner_texts()
    assert sorted(uids) == sorted(d.uid for d in plant.devices)
    page.wait_for_function(f"location.search.includes('{prefix}')")  # the filter is in the address bar
    page.wait_for_selector("#live-indicator.on")
    screenshot(page, "fleet")


def test_point_published_over_mqtt_appears_on_the_device_chart_within_2_s(open_page, web, plant, ingest, browser_broker):
    device = plant.devices[0]
    publisher = Publisher(browser_broker, device)
    try:
        page = open_page("viewer")
        page.goto(f"{web}/devices/{device.pk}/")
        page.wait_for_selector("#live-indicator.on")
        page.wait_for_function("window.IIoTCharts && window.IIoTCharts.temperature && document.getElementById('chart-source').textContent")
        page.wait_for_timeout(300)  # the subscription reaches the server
        value = 40 + (uuid.uuid4().int % 10_000) / 1000
        published = time.monotonic()
        publisher.publish({"ts": int(datetime.now(UTC).timestamp() * 1000), "values": {"temperature": value}}).wait_for_publish(5)
        page.wait_for_function(f"window.IIoTCharts.temperature.data[1].includes({value})", timeout=2000)
        elapsed = time.monotonic() - published
        assert elapsed < 2.0
        latest = page.locator('figure[data-metric="temperature"] [data-latest]').inner_text()
        assert latest == str(round(value * 100) / 100).rstrip("0").rstrip(".") or float(latest) == pytest.approx(value, abs=0.01)
        screenshot(page, "device")
        # a range preset and a zoom reload the chart through the telemetry API
        page.click("button[data-range='7d']")
        page.wait_for_function("window.IIoTCharts.temperature.scales.x.min < Date.now() / 1000 - 6 * 86400")
        page.click("button[data-range='1h']")
        page.wait_for_function("window.IIoTCharts.temperature.scales.x.min > Date.now() / 1000 - 3700")
        # drag-to-zoom (the select hook): a narrower range is fetched, no preset stays pressed
        page.evaluate("window.IIoTCharts.temperature.setSelect({left: 10, width: 60, top: 0, height: 10})")
        page.wait_for_function("(s => s.max - s.min < 1800)(window.IIoTCharts.temperature.scales.x)")
        assert page.locator(".presets button[aria-pressed='true']").count() == 0
    finally:
        publisher.close()


def test_viewer_sees_no_write_controls_operator_does(open_page, web, plant):
    device = plant.devices[1]
    viewer = open_page("viewer")
    viewer.goto(f"{web}/devices/{device.pk}/")
    assert viewer.locator("[data-write]").count() == 0
    assert viewer.locator("form.command-form").count() == 0
    screenshot(viewer, "device-viewer")
    operator = open_page("operator")
    operator.goto(f"{web}/devices/{device.pk}/")
    operator.fill("#id_name", "reboot")
    operator.fill("#id_params", '{"delay": 1}')
    operator.click("form.command-form button[type=submit]")
    operator.wait_for_selector("#commands td.mono:has-text('reboot')")
    operator.fill("#id_name", "reboot")  # the form was reset after the send (name is required)
    operator.fill("#id_params", "{broken")
    operator.click("form.command-form button[type=submit]")
    operator.wait_for_selector("#commands .field-error:has-text('Not valid JSON')")


def test_pages_at_390_px_have_no_horizontal_scroll(open_page, web, plant):
    page = open_page("operator", width=390, height=844)
    for path, name in (("/devices/", "fleet-390"), (f"/devices/{plant.devices[0].pk}/", "device-390")):
        page.goto(f"{web}{path}")
        page.wait_for_selector("#live-indicator.on")
        assert no_horizontal_scroll(page), f"{path} scrolls horizontally at 390 px"
        screenshot(page, name)


def test_rule_fires_and_the_alert_appears_live_then_is_acknowledged_and_resolved(open_page, web, plant, ingest, hot_rule, browser_broker):
    device = plant.devices[2]
    publisher = Publisher(browser_broker, device)
    try:
        page = open_page("operator")
        page.goto(f"{web}/alerts/")
        page.wait_for_selector("#live-indicator.on")
        page.wait_for_timeout(300)  # the alert subscription reaches the server
        publisher.publish({"ts": int(datetime.now(UTC).timestamp() * 1000), "values": {"temperature": 180.0}}).wait_for_publish(5)
        row = page.locator(f"#alert-rows tr.alert-row:has-text('{hot_rule.name}')")
        row.wait_for(timeout=5000)  # arrives live: no reload
        assert "Critical" in row.inner_text()
        screenshot(page, "alerts")
        row.locator("button[data-action='acknowledge']").click()
        page.wait_for_selector(f"#alert-rows tr.alert-row[data-state='acknowledged']:has-text('{hot_rule.name}')")
        page.locator(f"#alert-rows tr.alert-row:has-text('{hot_rule.name}') button[data-action='resolve']").click()
        page.wait_for_selector(f"#alert-rows tr.alert-row[data-state='resolved']:has-text('{hot_rule.name}')")
        screenshot(page, "alerts-resolved")
        viewer = open_page("viewer")
        viewer.goto(f"{web}/alerts/?state=all")
        assert viewer.locator(f"tr.alert-row:has-text('{hot_rule.name}')").count() == 1
        assert viewer.locator("[data-write]").count() == 0
        viewer.goto(f"{web}/rules/")
        assert viewer.locator("[data-write]").count() == 0
        screenshot(viewer, "rules-viewer")
    finally:
        publisher.close()


def test_rules_page_backtest_preview_and_390_px(open_page, web, plant, hot_rule):
    page = open_page("developer", width=390, height=844)
    page.goto(f"{web}/rules/{hot_rule.pk}/")
    page.click("button[hx-post$='/rules/backtest']")
    page.wait_for_selector("#backtest [data-backtest] canvas")
    assert no_horizontal_scroll(page)
    screenshot(page, "rule-backtest-390")
    page.goto(f"{web}/alerts/?state=all")
    assert no_horizontal_scroll(page)
    screenshot(page, "alerts-390")
