"""Outbound webhook requests with the seed's protections.

1. SSRF guard: the host is resolved once, every address it resolves to is checked, and the
   connection goes to that checked address (pinned), so a second DNS answer cannot point it
   elsewhere. Refused: private, loopback, link-local, CGNAT (100.64/10), multicast, reserved,
   unspecified and cloud-metadata addresses, IPv4 and IPv6, including IPv4 embedded in IPv6
   (mapped, 6to4, NAT64, Teredo). Loopback is allowed only with settings.WEBHOOK_ALLOW_LOOPBACK
   (tests that run a local receiver).
2. Redirects are never followed: a 3xx answer is a failed delivery.
3. HMAC-SHA256 signature over "{timestamp}.{body}" (X-IIoT-Timestamp, X-IIoT-Signature).
4. TLS certificates and host names verified (against the original host name, not the pinned IP).
5. At most one request per WEBHOOK_MIN_INTERVAL_MS per URL and tenant (Redis).
6. Payloads over WEBHOOK_MAX_PAYLOAD_BYTES are refused before anything is sent.
7. Retries with exponential backoff are the Celery task's (alerting.tasks).
8. One timeout (WEBHOOK_TIMEOUT_S) for connect plus read.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from django.conf import settings
from django.db import connection

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CLOUD_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
    }
)
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
RESPONSE_EXCERPT_BYTES = 2000


class WebhookRefused(Exception):
    """The request must not be made (SSRF guard, size cap, bad URL): retrying will not help."""


class WebhookRateLimited(Exception):
    """The URL's one-request-per-interval slot did not free up in time."""


@dataclass(frozen=True)
class PinnedTarget:
    scheme: str
    host: str  # as written in the URL (used for Host, SNI and certificate checks)
    port: int
    address: IPAddress  # the checked address the connection goes to
    path: str  # path and query

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class WebhookResponse:
    status: int
    excerpt: str
    location: str


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64 or address in NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why a webhook must not be sent to this address (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = address_refusal(embedded, allow_loopback=allow_loopback)
            return f"embeds {embedded}, which is {reason}" if reason else None
    if address in CLOUD_METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in CGNAT:
        return "a carrier-grade NAT address (100.64.0.0/10)"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if not address.is_global:
        return "not a globally routable address"
    return None


def parse_webhook_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path): the URL's parts, or WebhookRefused saying what is wrong."""
    if not isinstance(url, str) or not url or len(url) > 2000:
        raise WebhookRefused("The URL must be a string of 1-2000 characters.")
    if any(ord(ch) < 33 for ch in url):
        raise WebhookRefused("The URL must not contain spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"The URL is malformed ({exc}).") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookRefused("Only http:// and https:// URLs are allowed.")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("Credentials in the URL are not allowed; use the signature to authenticate.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise WebhookRefused("The URL has no host.")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return scheme, host, port or (443 if scheme == "https" else 80), path


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url_statically(url: str) -> None:
    """Save-time check (no DNS): a malformed URL or a refused literal address is an error now."""
    _, host, _, _ = parse_webhook_url(url)
    address = literal_address(host)
    if address is not None:
        reason = address_refusal(address, allow_loopback=settings.WEBHOOK_ALLOW_LOOPBACK)
        if reason:
            raise WebhookRefused(f"{address} is {reason}.")
    elif host.lower() == "localhost" or host.lower().endswith(".localhost"):
        if not settings.WEBHOOK_ALLOW_LOOPBACK:
            raise WebhookRefused(f"{host} is a loopback name.")


def resolve_and_pin(url: str, *, allow_loopback: bool | None = None) -> PinnedTarget:
    """Resolve the URL's host once; refuse it when any address it resolves to is refused."""
    allow_loopback = settings.WEBHOOK_ALLOW_LOOPBACK if allow_loopback is None else allow_loopback
    scheme, host, port, path = parse_webhook_url(url)
    address = literal_address(host)
    if address is not None:
        addresses = [address]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise OSError(f"Could not resolve {host}: {exc}") from exc
        addresses = []
        for info in infos:
            candidate = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if candidate not in addresses:
                addresses.append(candidate)
        if not addresses:
            raise OSError(f"{host} resolved to no address.")
    for candidate in addresses:
        reason = address_refusal(candidate, allow_loopback=allow_loopback)
        if reason:
            shown = host if host == str(candidate) else f"{host} ({candidate})"
            raise WebhookRefused(f"Refused: {shown} is {reason}.")
    return PinnedTarget(scheme=scheme, host=host, port=port, address=addresses[0], path=path)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance_s: int = 300) -> bool:
    """What a receiver does (documented for integrators, used by the tests)."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(time.time() - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature or "")


def acquire_rate_slot(url: str, *, interval_ms: int | None = None, max_wait_s: float | None = None) -> None:
    """Block until this tenant may call the URL again (one request per interval), or raise."""
    from telemetry.storage import redis_client

    interval_ms = settings.WEBHOOK_MIN_INTERVAL_MS if interval_ms is None else interval_ms
    if interval_ms <= 0:
        return
    max_wait_s = settings.WEBHOOK_RATE_WAIT_S if max_wait_s is None else max_wait_s
    key = f"{connection.schema_name}:alerting:webhook-slot:{hashlib.sha256(url.encode()).hexdigest()[:40]}"
    client = redis_client()
    deadline = time.monotonic() + max_wait_s
    while True:
        if client.set(key, b"1", nx=True, px=interval_ms):
            return
        remaining_ms = client.pttl(key)
        wait_s = max(remaining_ms, 1) / 1000 if remaining_ms and remaining_ms > 0 else 0.001
        if time.monotonic() + wait_s > deadline:
            raise WebhookRateLimited(f"At most one request per {interval_ms} ms to this URL; the slot did not free up in time.")
        time.sleep(wait_s)


def post(target: PinnedTarget, body: bytes, headers: dict[str, str], *, timeout_s: float | None = None) -> WebhookResponse:
    """POST to the pinned address: TLS verified against the URL's host, no redirects, one timeout."""
    timeout = urllib3.Timeout(total=settings.WEBHOOK_TIMEOUT_S if timeout_s is None else timeout_s)
    address = str(target.address)
    if target.scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            address,
            target.port,
            timeout=timeout,
            retries=False,
            maxsize=1,
            cert_reqs="CERT_REQUIRED",
            ca_certs=settings.WEBHOOK_CA_BUNDLE or None,  # None: the system's trust store
            server_hostname=target.host,
            assert_hostname=target.host,
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, target.port, timeout=timeout, retries=False, maxsize=1)
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={**headers, "Host": target.host_header},
            redirect=False,
            retries=False,
            assert_same_host=False,
            preload_content=False,
        )
        try:
            excerpt = response.read(RESPONSE_EXCERPT_BYTES, decode_content=True)
        finally:
            response.release_conn()
        return WebhookResponse(
            status=response.status,
            excerpt=excerpt.decode("utf-8", "replace"),
            location=response.headers.get("Location", ""),
        )
    finally:
        pool.close()
