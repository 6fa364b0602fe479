"""Notifications end to end: email to a real SMTP server (aiosmtpd), signed webhooks to a local
HTTP server, the SSRF guard, retries with backoff, the 1 MB cap, the per-URL rate limit,
timeouts, live pushes through the channel layer, and which alert changes notify at all."""

from __future__ import annotations

import asyncio
import email
import ipaddress
from datetime import UTC, datetime
from email import policy

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django_tenants.utils import schema_context

from alerting import services, webhooks
from alerting.models import Alert, AlertEvent, NotificationChannel, NotificationDelivery
from alerting.tasks import deliver_notification, retry_countdown
from alerting.tests.conftest import fire, free_port, make_channel

pytestmark = pytest.mark.django_db


@pytest.fixture
def loopback_hooks(settings):
    """The guard's loopback exception, for tests that talk to the local receiver."""
    settings.WEBHOOK_ALLOW_LOOPBACK = True
    settings.WEBHOOK_MIN_INTERVAL_MS = 0
    settings.NOTIFICATION_MAX_RETRIES = 3
    return settings


def _raise_and_deliver(capture, device, channel, **kwargs):
    """raise_alert in alpha, commit callbacks run (tasks inline): the alert and its deliveries."""
    with schema_context("alpha"), capture(execute=True):
        alert, _ = fire("alpha", device=device, channel_ids=[channel.pk], **kwargs)
    with schema_context("alpha"):
        return alert, list(NotificationDelivery.objects.filter(alert=alert).order_by("id"))


def _webhook_channel(url: str, **fields) -> NotificationChannel:
    """A webhook row written directly (as if its host's DNS changed after validation)."""
    with schema_context("alpha"):
        return NotificationChannel.objects.create(
            name=fields.pop("name", f"raw-{url}")[:100], kind="webhook", config={"url": url}, secret="whsec_test", **fields
        )


# --- email --------------------------------------------------------------------------------------


def test_email_reaches_a_real_smtp_server_with_html_and_text(
    alpha, device, smtp_server, eager_tasks, django_capture_on_commit_callbacks
):
    channel = make_channel("alpha", "email", {"recipients": ["ops@example.com", "boss@example.com"], "subject_prefix": "Plant 1"})
    alert, deliveries = _raise_and_deliver(
        django_capture_on_commit_callbacks, device, channel, severity="critical", value=97.5, rule_name="Boiler too hot"
    )
    assert [(d.status, d.attempts) for d in deliveries] == [("succeeded", 1)]
    assert len(smtp_server.envelopes) == 1
    envelope = smtp_server.envelopes[0]
    assert sorted(envelope.rcpt_tos) == ["boss@example.com", "ops@example.com"]
    message = email.message_from_bytes(envelope.content, policy=policy.default)
    assert message["Subject"].startswith("[Plant 1 Critical] Boiler too hot on " + device.uid)
    assert message["X-IIoT-Delivery"] == str(deliveries[0].pk)
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    for part in (text, html):
        assert device.uid in part and "97.5" in part and "Boiler too hot" in part
        assert f"https://alpha.localhost/api/v1/alerts/{alert.pk}" in part
    assert "#b71c1c" in html and "<table" in html  # critical's colour
    assert "<" not in text
    with schema_context("alpha"):
        assert AlertEvent.objects.filter(alert=alert, kind="notification_sent").count() == 1


def test_email_test_send(alpha, smtp_server, eager_tasks, django_capture_on_commit_callbacks):
    channel = make_channel("alpha", "email", {"recipients": ["ops@example.com"]})
    with schema_context("alpha"), django_capture_on_commit_callbacks(execute=True):
        delivery = services.send_test_notification(actor=alpha.users["admin"], client=None, channel=channel)
    message = email.message_from_bytes(smtp_server.envelopes[0].content, policy=policy.default)
    assert "Test notification" in message["Subject"]
    assert "the channel works" in message.get_body(preferencelist=("plain",)).get_content()
    with schema_context("alpha"):
        assert NotificationDelivery.objects.get(pk=delivery.pk).status == "succeeded"


def test_email_to_an_unreachable_server_is_retried_then_failed(
    alpha, device, settings, eager_tasks, django_capture_on_commit_callbacks
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", free_port(), 2
    settings.NOTIFICATION_MAX_RETRIES = 2
    channel = make_channel("alpha", "email")
    alert, deliveries = _raise_and_deliver(django_capture_on_commit_callbacks, device, channel)
    assert [(d.status, d.attempts) for d in deliveries] == [("failed", 3)]
    assert "SMTP delivery failed" in deliveries[0].error
    with schema_context("alpha"):
        assert AlertEvent.objects.filter(alert=alert, kind="notification_failed").count() == 1


# --- webhooks: delivery and signature ------------------------------------------------------------


def test_webhook_is_signed_and_verified_by_the_receiver(
    alpha, device, receiver, loopback_hooks, eager_tasks, django_capture_on_commit_callbacks
):
    channel = make_channel("alpha", "webhook", {"url": receiver.url, "headers": {"X-Team": "ops"}})
    with schema_context("alpha"):
        secret = NotificationChannel.objects.get(pk=channel.pk).secret
    alert, deliveries = _raise_and_deliver(django_capture_on_commit_callbacks, device, channel, value=81.25)
    assert [(d.status, d.attempts, d.response_code) for d in deliveries] == [("succeeded", 1, 200)]
    assert deliveries[0].response_excerpt == '{"ok": true}'
    request = receiver.requests[0]
    assert request.path == "/hooks/iiot?team=ops"
    assert request.headers["Host"] == f"127.0.0.1:{receiver.server.server_address[1]}"
    assert request.headers["X-Team"] == "ops" and request.headers["Content-Type"] == "application/json"
    assert request.headers["X-IIoT-Event"] == "alert.triggered" and request.headers["X-IIoT-Delivery"] == str(deliveries[0].pk)
    assert request.headers["X-IIoT-Signature"].startswith("sha256=")
    assert webhooks.verify_signature(
        secret, request.headers["X-IIoT-Timestamp"], request.body, request.headers["X-IIoT-Signature"]
    )
    assert not webhooks.verify_signature(
        "whsec_wrong", request.headers["X-IIoT-Timestamp"], request.body, request.headers["X-IIoT-Signature"]
    )
    assert not webhooks.verify_signature(
        secret, request.headers["X-IIoT-Timestamp"], request.body + b" ", request.headers["X-IIoT-Signature"]
    )
    body = receiver.json()
    assert body["event"] == "alert.triggered" and body["tenant"] == "alpha"
    assert body["alert"]["id"] == alert.pk and body["alert"]["value"] == 81.25 and body["alert"]["device_uid"] == device.uid


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    import hashlib
    import hmac

    expected = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert webhooks.sign("k", 1700000000, b"{}") == f"sha256={expected}"
    assert not webhooks.verify_signature("k", "1700000000", b"{}", f"sha256={expected}")  # too old


# --- webhooks: the SSRF guard ---------------------------------------------------------------------

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "169.254.170.2",
    "169.254.1.1",
    "100.64.0.1",
    "100.127.255.254",
    "100.100.100.200",
    "0.0.0.0",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "198.18.0.1",
    "192.0.2.10",
    "[::1]",
    "[::]",
    "[fe80::1]",
    "[fc00::1]",
    "[fd12:3456::1]",
    "[fd00:ec2::254]",
    "[fec0::1]",
    "[ff02::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:10.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[::ffff:100.64.0.1]",
    "[64:ff9b::a00:1]",
    "[2002:a00:1::1]",
    "[2001:db8::1]",
    "2130706433",  # 127.0.0.1 written as one number
    "0x7f.1",  # and in hex
    "0177.0.0.1",  # and in octal
    "localhost",  # a name that resolves to loopback
]


@pytest.mark.parametrize("host", REFUSED)
def test_ssrf_guard_refuses(host, settings):
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    with pytest.raises(webhooks.WebhookRefused):
        webhooks.resolve_and_pin(f"http://{host}:8080/hook")


@pytest.mark.parametrize("host", ["93.184.216.34", "[2606:4700:4700::1111]", "8.8.8.8"])
def test_ssrf_guard_pins_public_addresses(host):
    target = webhooks.resolve_and_pin(f"https://{host}/hook?x=1")
    assert target.address == ipaddress.ip_address(host.strip("[]")) and target.path == "/hook?x=1" and target.port == 443


def test_loopback_exception_covers_loopback_only():
    assert webhooks.address_refusal(ipaddress.ip_address("127.0.0.1"), allow_loopback=True) is None
    assert webhooks.address_refusal(ipaddress.ip_address("::1"), allow_loopback=True) is None
    for other in ("10.0.0.1", "169.254.169.254", "fd00:ec2::254", "100.64.0.1", "::ffff:192.168.0.1"):
        assert webhooks.address_refusal(ipaddress.ip_address(other), allow_loopback=True), other


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "http:///nohost", "https://u:p@example.com/", "http://exa mple.com/", "javascript:alert(1)", ""]
)
def test_malformed_urls_are_refused(url):
    with pytest.raises(webhooks.WebhookRefused):
        webhooks.parse_webhook_url(url)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "169.254.169.254", "[::ffff:10.1.1.1]"])
def test_a_refused_address_fails_the_delivery_without_a_request(
    alpha, device, receiver, settings, host, eager_tasks, django_capture_on_commit_callbacks
):
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    port = receiver.server.server_address[1]
    channel = _webhook_channel(f"http://{host}:{port}/hook")
    _, deliveries = _raise_and_deliver(django_capture_on_commit_callbacks, device, channel)
    assert [(d.status, d.attempts) for d in deliveries] == [("failed", 1)]  # never retried
    assert deliveries[0].error.startswith("Refused:")
    assert receiver.requests == []


def test_redirects_are_not_followed_and_private_targets_named(
    alpha, device, receiver, loopback_hooks, eager_tasks, django_capture_on_commit_callbacks
):
    receiver.answer((302, {"Location": "http://10.0.0.5/internal"}))
    channel = make_channel("alpha", "webhook", {"url": receiver.url})
    _, deliveries = _raise_and_deliver(django_capture_on_commit_callbacks, device, channel)
    assert [(d.status, d.attempts, d.response_code) for d in deliveries] == [("failed", 1, 302)]
    assert "not followed" in deliveries[0].error and "10.0.0.5" in deliveries[0].error and "refused" in deliveries[0].error
    assert len(receiver.requests) == 1


# --- webhooks: retries, cap, rate limit, timeout ----------------------------------------------------


def test_server_errors_are_retried_until_success(
    alpha, device, receiver, loopback_hooks, eager_tasks, django_capture_on_commit_callbacks
):
    receiver.answer(500, 503)
    channel = make_channel("alpha", "webhook", {"url": receiver.url})
    alert, deliveries = _raise_and_deliver(django_capture_on_commit_callbacks, device, channel)
    assert [(d.status, d.attempts, d.response_code) for d in deliveries] == [("succeeded", 3, 200)]
    assert len(receiver.requests) == 3
    assert len({r.headers["X-IIoT-Delivery"] for r in receiver.requests}) == 1
    with schema_context("alpha"):
        assert list(AlertEvent.objects.filter(alert=alert, kind__startswith="notification").values_list("kind", flat=True)) == [
            "notification_sent"
        ]


def test_retries_are_bounded(alpha, device, receiver, loopback_hooks, eager_tasks, django_capture_on_commit_callbacks):
    receiver.answer(*[500] * 10)
    channel = make_channel("alpha", "webhook", {"url": receiver.url})
    alert, deliveries = _raise_and_deliver(django_capture_on_commit_callbacks, device, channel)
    assert [(d.status, d.attempts, d.response_code) for d in deliveries] == [("failed", 4, 500)]  # first try + 3 retries
    assert len(receiver.requests) == 4
    with schema_context("alpha"):
        assert AlertEvent.objects.get(alert=alert, kind="notification_failed").data["attempts"] == 4


def test_client_errors_are_not_retried(alpha, device, receiver, loopback_hooks, eager_tasks, django_capture_on_commit_callbacks):
    receiver.answer(404)
    channel = make_channel("alpha", "webhook", {"url": receiver.url})
    _, deliveries = _raise_and_deliver(django_capture_on_commit_callbacks, device, channel)
    assert [(d.status, d.attempts, d.response_code) for d in deliveries] == [("failed", 1, 404)]


def test_backoff_is_exponential(settings):
    settings.NOTIFICATION_RETRY_BACKOFF_S = 2.0
    assert [retry_countdown(n) for n in range(4)] == [2.0, 4.0, 8.0, 16.0]
    assert deliver_notification.acks_late is True


def test_payloads_over_one_megabyte_are_not_sent(
    alpha, device, receiver, loopback_hooks, eager_tasks, django_capture_on_commit_callbacks
):
    channel = make_channel("alpha", "webhook", {"url": receiver.url})
    _, deliveries = _raise_and_deliver(django_capture_on_commit_callbacks, device, channel, details={"blob": "x" * 1_050_000})
    assert [(d.status, d.attempts) for d in deliveries] == [("failed", 1)]
    assert "1048576-byte cap" in deliveries[0].error
    assert receiver.requests == []
    # just under the cap goes out
    _, deliveries = _raise_and_deliver(django_capture_on_commit_callbacks, device, channel, details={"blob": "x" * 1_000_000})
    assert [d.status for d in deliveries] == ["succeeded"] and len(receiver.requests[0].body) < 1_048_576


def test_one_request_per_second_per_url(alpha, device, receiver, loopback_hooks, eager_tasks, django_capture_on_commit_callbacks):
    loopback_hooks.WEBHOOK_MIN_INTERVAL_MS = 1000
    channel = make_channel("alpha", "webhook", {"url": receiver.url})
    other = make_channel("alpha", "webhook", {"url": receiver.url.replace("/hooks/iiot", "/other")})
    with schema_context("alpha"), django_capture_on_commit_callbacks(execute=True):
        for target in (channel, channel, other):
            services.send_test_notification(actor=None, client=None, channel=target)
    first, second, third = receiver.requests
    assert second.at - first.at >= 0.95  # the same URL waited for its slot
    assert third.path.startswith("/other") and third.at - second.at < 0.5  # another URL did not
    with schema_context("alpha"):
        assert set(NotificationDelivery.objects.filter(channel__in=[channel, other]).values_list("status", flat=True)) == {
            "succeeded"
        }


def test_rate_slot_is_per_tenant_and_refuses_when_the_wait_is_too_long(alpha):
    url = f"https://hooks.example.com/{datetime.now(UTC).timestamp()}"
    with schema_context("alpha"):
        webhooks.acquire_rate_slot(url, interval_ms=5000)
        with pytest.raises(webhooks.WebhookRateLimited):
            webhooks.acquire_rate_slot(url, interval_ms=5000, max_wait_s=0.2)
    with schema_context("beta"):
        webhooks.acquire_rate_slot(url, interval_ms=5000, max_wait_s=0)


def test_slow_receivers_time_out_and_are_retried(
    alpha, device, receiver, loopback_hooks, eager_tasks, django_capture_on_commit_callbacks
):
    loopback_hooks.WEBHOOK_TIMEOUT_S = 0.5
    loopback_hooks.NOTIFICATION_MAX_RETRIES = 1
    receiver.answer((200, {}, 2.0), (200, {}, 2.0))
    channel = make_channel("alpha", "webhook", {"url": receiver.url})
    _, deliveries = _raise_and_deliver(django_capture_on_commit_callbacks, device, channel)
    assert [(d.status, d.attempts) for d in deliveries] == [("failed", 2)]
    assert "timed out" in deliveries[0].error.lower()


# --- which changes notify -----------------------------------------------------------------------------


def test_only_new_and_escalated_alerts_notify(alpha, device, django_capture_on_commit_callbacks):
    channel = make_channel("alpha", "live")
    quiet = make_channel("alpha", "live", min_severity="critical")
    off = make_channel("alpha", "live", enabled=False)
    ids = [channel.pk, quiet.pk, off.pk]
    with schema_context("alpha"), django_capture_on_commit_callbacks() as callbacks:
        alert, _ = fire("alpha", rule_id=801, device=device, severity="minor", channel_ids=ids)
        fire("alpha", rule_id=801, device=device, severity="minor", channel_ids=ids)  # repeat: nothing
        fire("alpha", rule_id=801, device=device, severity="critical", channel_ids=ids)  # escalation
        rows = list(NotificationDelivery.objects.filter(alert=alert).order_by("id").values_list("channel_id", "event_kind"))
    assert rows == [(channel.pk, "triggered"), (channel.pk, "escalated"), (quiet.pk, "escalated")]
    assert callbacks  # enqueued on commit, not before


def test_nothing_leaves_for_a_rolled_back_change(alpha, device, django_capture_on_commit_callbacks):
    channel = make_channel("alpha", "live")
    with schema_context("alpha"), django_capture_on_commit_callbacks() as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            fire("alpha", rule_id=802, device=device, channel_ids=[channel.pk])
            raise RuntimeError("rolled back")
    assert callbacks == []


def test_stale_tasks_do_nothing(alpha, receiver, loopback_hooks):
    channel = make_channel("alpha", "webhook", {"url": receiver.url})
    with schema_context("alpha"):
        delivery = NotificationDelivery.objects.create(
            channel=channel,
            event_kind="test",
            payload={"event": "test"},
            status="succeeded",
            attempts=1,
            finished_at=datetime.now(UTC),
        )
        assert deliver_notification.apply(args=[delivery.pk]).get() is None
        assert deliver_notification.apply(args=[10**9]).get() is None
        assert NotificationDelivery.objects.get(pk=delivery.pk).attempts == 1
    assert receiver.requests == []


def test_disabled_channels_fail_queued_alert_deliveries(alpha, device, receiver, loopback_hooks):
    channel = make_channel("alpha", "webhook", {"url": receiver.url})
    with schema_context("alpha"):
        alert, _ = fire("alpha", device=device, channel_ids=[channel.pk])
        NotificationChannel.objects.filter(pk=channel.pk).update(enabled=False)
        delivery = NotificationDelivery.objects.get(alert=alert)
        assert deliver_notification.apply(args=[delivery.pk]).get()["status"] == "failed"
    assert receiver.requests == []


# --- live ----------------------------------------------------------------------------------------------


def _receive(layer, channel: str, timeout: float = 3.0):
    async def go():
        return await asyncio.wait_for(layer.receive(channel), timeout)

    return async_to_sync(go)()


@pytest.fixture
def listener():
    layer = get_channel_layer()
    joined: list[tuple[str, str]] = []

    def join(group: str) -> str:
        name = async_to_sync(layer.new_channel)()
        async_to_sync(layer.group_add)(group, name)
        joined.append((group, name))
        return name

    yield layer, join
    for group, name in joined:
        async_to_sync(layer.group_discard)(group, name)


def test_every_alert_event_is_pushed_to_the_tenant_group(alpha, device, listener, django_capture_on_commit_callbacks):
    layer, join = listener
    mine, theirs = join("alpha.alerts"), join("beta.alerts")
    with schema_context("alpha"), django_capture_on_commit_callbacks(execute=True):
        alert, _ = fire("alpha", rule_id=901, device=device, severity="major", value=88.0)
    message = _receive(layer, mine)
    assert message["type"] == "alert.event"
    event = message["event"]
    assert event["kind"] == "triggered" and event["alert"]["id"] == alert.pk and event["alert"]["severity"] == "major"
    assert event["alert"]["device_uid"] == device.uid and event["alert"]["value"] == 88.0 and event["at"]
    with schema_context("alpha"), django_capture_on_commit_callbacks(execute=True):
        services.acknowledge_alert(actor=alpha.users["operator"], client=None, alert_id=alert.pk)
        services.add_note(actor=alpha.users["operator"], client=None, alert_id=alert.pk, text="on it")
        services.clear_alert(rule_id=901, device_id=device.pk, observed_at=datetime.now(UTC))
    kinds = [_receive(layer, mine)["event"] for _ in range(3)]
    assert [(e["kind"], e["alert"]["state"]) for e in kinds] == [
        ("acknowledged", "acknowledged"),
        ("note", "acknowledged"),
        ("auto_resolved", "resolved"),
    ]
    assert kinds[0]["actor"] == alpha.email("operator")
    with pytest.raises(TimeoutError):
        _receive(layer, theirs, timeout=0.3)  # another tenant's dashboards hear nothing


def test_live_channel_pushes_the_notification(alpha, device, listener, eager_tasks, django_capture_on_commit_callbacks):
    layer, join = listener
    name = join("alpha.notifications")
    channel = make_channel("alpha", "live", name="Control room")
    _, deliveries = _raise_and_deliver(django_capture_on_commit_callbacks, device, channel)
    assert [d.status for d in deliveries] == ["succeeded"]
    message = _receive(layer, name)
    assert message["type"] == "alert.notification" and message["channel"] == "Control room"
    assert message["payload"]["alert"]["device_uid"] == device.uid


# --- TLS -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A private CA, a server certificate for 127.0.0.1 and one for another name (openssl CLI)."""
    import subprocess

    directory = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=IIoT test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    for name, san in (("good", "IP:127.0.0.1"), ("wrong", "DNS:other.example")):
        (directory / f"{name}.ext").write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        )
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.pem",
            "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
    return directory


@pytest.fixture
def tls_receiver(certificates):
    import ssl

    from alerting.tests.conftest import start_receiver, stop_receiver

    started = []

    def start(name: str):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificates / f"{name}.pem", certificates / f"{name}.key")
        hook = start_receiver(context)
        started.append(hook)
        return hook

    yield start
    for hook in started:
        stop_receiver(hook)


@pytest.mark.parametrize(
    ("certificate", "trust_ca", "expected"),
    [("good", True, "succeeded"), ("good", False, "failed"), ("wrong", True, "failed")],
    ids=["trusted", "untrusted-ca", "wrong-host"],
)
def test_tls_certificates_are_verified(
    alpha,
    device,
    certificates,
    tls_receiver,
    loopback_hooks,
    certificate,
    trust_ca,
    expected,
    eager_tasks,
    django_capture_on_commit_callbacks,
):
    loopback_hooks.WEBHOOK_CA_BUNDLE = str(certificates / "ca.pem") if trust_ca else ""
    hook = tls_receiver(certificate)
    channel = make_channel("alpha", "webhook", {"url": hook.url})
    _, deliveries = _raise_and_deliver(django_capture_on_commit_callbacks, device, channel)
    assert [(d.status, d.attempts) for d in deliveries] == [(expected, 1)], deliveries[0].error
    if expected == "failed":
        assert deliveries[0].error.startswith("TLS verification failed") and hook.requests == []
    else:
        assert hook.requests[0].headers["X-IIoT-Signature"].startswith("sha256=")


@pytest.mark.asyncio
async def test_live_push_from_an_event_loop_thread_is_scheduled_on_that_loop():
    layer = get_channel_layer()
    name = await layer.new_channel()
    await layer.group_add("alpha.alerts", name)
    try:
        services._push_live("alpha", {"type": "alert.event", "event": {"kind": "note"}})  # must not raise nor block
        message = await asyncio.wait_for(layer.receive(name), 3)
        assert message["event"] == {"kind": "note"}
    finally:
        await layer.group_discard("alpha.alerts", name)


def test_the_host_is_resolved_once_and_the_connection_pinned(
    alpha, device, receiver, loopback_hooks, monkeypatch, eager_tasks, django_capture_on_commit_callbacks
):
    """DNS rebinding: the name is looked up once, checked, and the socket goes to that address
    (nothing downstream resolves the name again)."""
    import socket

    real = socket.getaddrinfo
    lookups: list[str] = []

    def fake_getaddrinfo(host, *args, **kwargs):
        if host == "hooks.rebind.test":
            lookups.append(host)
            return real("127.0.0.1", *args, **kwargs) if len(lookups) == 1 else real("10.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    port = receiver.server.server_address[1]
    channel = _webhook_channel(f"http://hooks.rebind.test:{port}/hook")
    _, deliveries = _raise_and_deliver(django_capture_on_commit_callbacks, device, channel)
    assert [d.status for d in deliveries] == ["succeeded"], deliveries[0].error
    assert lookups == ["hooks.rebind.test"]
    assert receiver.requests[0].headers["Host"] == f"hooks.rebind.test:{port}"


def test_a_new_alert_carries_its_delivery_payload_in_the_same_statement(alpha, device, django_capture_on_commit_callbacks):
    """The opening statement writes each delivery's payload with the alert's own id, device and
    links, the same summary `alert_summary` gives of the stored alert."""
    from tenants.models import Domain

    channel = make_channel("alpha", "webhook")
    with schema_context("public"):
        domain = Domain.objects.filter(tenant__schema_name="alpha", is_primary=True).values_list("domain", flat=True).first()
    with schema_context("alpha"), django_capture_on_commit_callbacks():
        alert, created = fire("alpha", rule_id=803, device=device, severity="critical", channel_ids=[channel.pk],
                              details={"metric_id": 7})  # fmt: skip
        delivery = NotificationDelivery.objects.get(alert=alert)
        stored = Alert.objects.get(pk=alert.pk)
        expected = services.alert_summary(stored)
    assert created and delivery.status == "pending" and delivery.event_kind == "triggered"
    assert delivery.payload == {"event": "alert.triggered", "tenant": "alpha", "alert": expected}
    assert expected["id"] == alert.pk and expected["device_uid"] == device.uid and expected["details"] == {"metric_id": 7}
    if domain:
        assert expected["url"].endswith(f"/api/v1/alerts/{alert.pk}") and expected["device_url"].endswith(f"/devices/{device.pk}")


def test_opening_and_auto_resolving_are_one_statement_each(alpha, device):
    """The rule engine's path on a busy database: one round trip to open, one to clear (the
    search_path is not needed: names are schema-qualified)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def statements(ctx) -> list[str]:
        return [query["sql"] for query in ctx.captured_queries if not query["sql"].upper().startswith("SET ")]

    with schema_context("alpha"):
        with CaptureQueriesContext(connection) as opening:
            alert, created = fire("alpha", rule_id=804, device=device)
        with CaptureQueriesContext(connection) as clearing:
            cleared = services.clear_alert(rule_id=804, device_id=device.pk, observed_at=alert.first_seen_at, value=1.5)
        kinds = list(alert.events.order_by("id").values_list("kind", "data"))
    assert created and len(statements(opening)) == 1, statements(opening)
    assert cleared is not None and cleared.pk == alert.pk and cleared.state == "resolved" and cleared.auto_resolved
    assert len(statements(clearing)) == 1, statements(clearing)
    assert kinds == [("triggered", {"value": 80.0, "severity": "major"}), ("auto_resolved", {"value": 1.5, "from": "triggered"})]


def test_live_pushes_from_plain_threads_arrive_in_order(listener):
    """Synchronous code (a rule action worker) hands its pushes to one sender loop: they arrive,
    in the order they were made, without blocking the caller on Redis."""
    import threading

    layer, join = listener
    mine = join("alpha.alerts")

    def push() -> None:
        for n in range(20):
            services._push_live("alpha", {"type": "alert.event", "event": {"kind": "note", "n": n}})

    worker = threading.Thread(target=push)
    worker.start()
    worker.join(5)
    received = [_receive(layer, mine)["event"]["n"] for _ in range(20)]
    assert received == list(range(20))
