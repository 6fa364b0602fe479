"""The platform's hold on Mosquitto: device identities and topic ACLs through the dynamic
security plugin, and QoS 1 publishing with the service account.

Each device is a dynsec client named `{tenant}/{device_uid}` whose password is its credential
secret, with a role of its own that names its topics literally (no `%u` patterns: usernames
contain '/'). The plugin is driven by JSON commands published to `$CONTROL/dynamic-security/v1`
as the admin user; answers come back on `.../response`. Admin operations are rare (a credential
issued, a device disabled), so each call opens a short-lived connection.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from django.conf import settings

logger = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
# Commands per control message: large syncs are split so one answer stays small.
BATCH_SIZE = 200

ROLE_EXISTS = "Role already exists"
CLIENT_EXISTS = "Client already exists"
CLIENT_NOT_FOUND = "Client not found"
ROLE_NOT_FOUND = "Role not found"
ACL_EXISTS = "ACL with this topic already exists"


class BrokerUnavailable(Exception):
    """The broker could not be reached, refused the platform's account, or did not answer in time."""


class BrokerCommandError(Exception):
    """The dynamic security plugin refused a command."""

    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"{command}: {error}")
        self.command = command
        self.error = error


@dataclass(frozen=True)
class DeviceTopics:
    telemetry: str
    attributes: str
    status: str
    commands: str
    commands_response: str
    shared_attributes: str

    def as_dict(self) -> dict[str, str]:
        return {
            "telemetry": self.telemetry,
            "attributes": self.attributes,
            "status": self.status,
            "commands": self.commands,
            "commands_response": self.commands_response,
            "shared_attributes": self.shared_attributes,
        }


def device_topics(tenant: str, device_uid: str) -> DeviceTopics:
    base = f"iiot/{tenant}/{device_uid}"
    return DeviceTopics(
        telemetry=f"{base}/telemetry",
        attributes=f"{base}/attributes",
        status=f"{base}/status",
        commands=f"{base}/commands",
        commands_response=f"{base}/commands/response",
        # To the device, retained: the whole set of shared attributes, sent again on every change,
        # so a device that (re)connects and subscribes gets its current configuration at once.
        shared_attributes=f"{base}/attributes/shared",
    )


def device_username(tenant: str, device_uid: str) -> str:
    return f"{tenant}/{device_uid}"


def device_role_name(tenant: str, device_uid: str) -> str:
    return f"device:{tenant}/{device_uid}"


def device_role_acls(tenant: str, device_uid: str) -> list[dict[str, Any]]:
    """Exactly the device's own topics: publish its data, subscribe to (and receive) its commands
    and its shared attributes."""
    topics = device_topics(tenant, device_uid)
    publish = [topics.telemetry, topics.attributes, topics.status, topics.commands_response]
    acls = [{"acltype": "publishClientSend", "topic": topic, "priority": 0, "allow": True} for topic in publish]
    for topic in (topics.commands, topics.shared_attributes):
        acls.append({"acltype": "subscribeLiteral", "topic": topic, "priority": 0, "allow": True})
        acls.append({"acltype": "publishClientReceive", "topic": topic, "priority": 0, "allow": True})
    return acls


def _add_acl_commands(rolename: str, acls: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """addRoleACL for each ACL: brings a role created by an older release up to date (an ACL the
    role already has is answered with ACL_EXISTS, which callers tolerate)."""
    return [{"command": "addRoleACL", "rolename": rolename, **acl} for acl in acls]


def parse_username(username: str) -> tuple[str, str] | None:
    """`tenant/uid` -> (tenant, uid); None for the platform's own accounts."""
    tenant, sep, uid = username.partition("/")
    return (tenant, uid) if sep and tenant and uid else None


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        tls = parts.scheme in ("mqtts", "ssl")
        return cls(host=parts.hostname or "127.0.0.1", port=parts.port or (8883 if tls else 1883), tls=tls)


class _Session:
    """One connected paho client with blocking helpers (connect, subscribe, publish, wait)."""

    def __init__(self, *, username: str, password: str, url: str | None = None, timeout: float | None = None, prefix: str) -> None:
        self.address = BrokerAddress.from_url(url or settings.MQTT_URL)
        self.timeout = timeout if timeout is not None else settings.MQTT_TIMEOUT_SECONDS
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{prefix}-{uuid.uuid4().hex[:12]}", protocol=mqtt.MQTTv311
        )
        self.client.username_pw_set(username, password)
        self.client.connect_timeout = self.timeout
        if self.address.tls:
            self.client.tls_set()
        self._connected = threading.Event()
        self._connect_reason: str | None = None
        self._subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connect_reason = None if not reason_code.is_failure else str(reason_code)
        self._connected.set()

    def open(self) -> None:
        try:
            self.client.connect(self.address.host, self.address.port, keepalive=30)
        except OSError as exc:
            raise BrokerUnavailable(f"MQTT broker at {self.address.host}:{self.address.port} is unreachable ({exc}).") from exc
        self.client.loop_start()
        if not self._connected.wait(self.timeout):
            self.close()
            raise BrokerUnavailable(f"MQTT broker at {self.address.host}:{self.address.port} did not answer the connection.")
        if self._connect_reason is not None:
            self.close()
            raise BrokerUnavailable(f"MQTT broker refused the platform account: {self._connect_reason}.")

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, qos)
        if not self._subscribed.wait(self.timeout):
            raise BrokerUnavailable(f"MQTT broker did not acknowledge the subscription to {topic}.")

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


class DynsecClient:
    """Admin connection to the dynamic security plugin.

        with DynsecClient() as dynsec:
            dynsec.execute([{"command": "disableClient", "username": "acme/pump-1"}])
    """

    def __init__(self, *, url: str | None = None, username: str | None = None, password: str | None = None, timeout: float | None = None):
        self._session = _Session(
            url=url,
            username=username or settings.MQTT_ADMIN_USERNAME,
            password=password or settings.MQTT_ADMIN_PASSWORD,
            timeout=timeout,
            prefix="iiot-dynsec",
        )
        self._lock = threading.Lock()
        self._responses: dict[str, dict[str, Any]] = {}
        self._arrived = threading.Condition(self._lock)
        self._session.client.on_message = self._on_message

    def _on_message(self, client, userdata, message) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        with self._arrived:
            for response in body.get("responses", []):
                correlation = response.get("correlationData")
                if correlation is not None:
                    self._responses[correlation] = response
            self._arrived.notify_all()

    def __enter__(self) -> DynsecClient:
        self._session.open()
        try:
            self._session.subscribe(RESPONSE_TOPIC)
        except BrokerUnavailable:
            self._session.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._session.close()

    def execute(self, commands: Sequence[dict[str, Any]], *, tolerate: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Run commands in order; raise BrokerCommandError on the first refusal not in `tolerate`."""
        allowed = set(tolerate)
        results: list[dict[str, Any]] = []
        for start in range(0, len(commands), BATCH_SIZE):
            batch = []
            for command in commands[start : start + BATCH_SIZE]:
                batch.append({**command, "correlationData": uuid.uuid4().hex})
            info = self._session.client.publish(CONTROL_TOPIC, json.dumps({"commands": batch}), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise BrokerUnavailable(f"Could not send to the broker ({mqtt.error_string(info.rc)}).")
            wanted = [command["correlationData"] for command in batch]
            with self._arrived:
                if not self._arrived.wait_for(lambda wanted=wanted: all(c in self._responses for c in wanted), self._session.timeout):
                    raise BrokerUnavailable("The broker's dynamic security plugin did not answer in time.")
                answers = [self._responses.pop(c) for c in wanted]
            for command, answer in zip(batch, answers, strict=True):
                error = answer.get("error")
                if error and error not in allowed:
                    raise BrokerCommandError(command["command"], error)
                results.append(answer)
        return results


# --- Device identities ------------------------------------------------------------------------


def push_device_credential(*, tenant: str, device_uid: str, password: str, enabled: bool = True) -> None:
    """Create or update the device's broker identity with `password`; cuts off older sessions."""
    username = device_username(tenant, device_uid)
    role = device_role_name(tenant, device_uid)
    with DynsecClient() as dynsec:
        created = dynsec.execute(
            [
                {"command": "createRole", "rolename": role, "acls": device_role_acls(tenant, device_uid)},
                {"command": "createClient", "username": username, "password": password, "roles": [{"rolename": role}]},
            ],
            tolerate=[ROLE_EXISTS, CLIENT_EXISTS],
        )
        if created[0].get("error") == ROLE_EXISTS:  # a role from an older release gains the newer ACLs
            dynsec.execute(_add_acl_commands(role, device_role_acls(tenant, device_uid)), tolerate=[ACL_EXISTS])
        commands: list[dict[str, Any]] = []
        if created[1].get("error") == CLIENT_EXISTS:  # rotation: a new password, the role made sure of
            client = dynsec.execute([{"command": "getClient", "username": username}])[0].get("data", {}).get("client", {})
            if not any(r.get("rolename") == role for r in client.get("roles", [])):
                commands.append({"command": "addClientRole", "username": username, "rolename": role})
            commands.append({"command": "setClientPassword", "username": username, "password": password})
            # Disabling kicks every connection made with the previous password.
            commands.append({"command": "disableClient", "username": username})
        if enabled:
            commands.append({"command": "enableClient", "username": username})
        else:
            commands.append({"command": "disableClient", "username": username})
        dynsec.execute(commands)


def set_devices_enabled(devices: Iterable[tuple[str, str]], *, enabled: bool, dynsec: DynsecClient | None = None) -> None:
    """Enable or disable (and so disconnect) the broker clients of (tenant, uid) pairs; unknown ones are skipped."""
    commands = [{"command": "enableClient" if enabled else "disableClient", "username": device_username(t, u)} for t, u in devices]
    if not commands:
        return
    if dynsec is not None:
        dynsec.execute(commands, tolerate=[CLIENT_NOT_FOUND])
        return
    with DynsecClient() as client:
        client.execute(commands, tolerate=[CLIENT_NOT_FOUND])


def remove_devices(devices: Iterable[tuple[str, str]], *, dynsec: DynsecClient | None = None) -> None:
    """Delete the broker clients (disconnecting them) and roles of (tenant, uid) pairs."""
    commands: list[dict[str, Any]] = []
    for tenant, uid in devices:
        commands.append({"command": "deleteClient", "username": device_username(tenant, uid)})
        commands.append({"command": "deleteRole", "rolename": device_role_name(tenant, uid)})
    if not commands:
        return
    if dynsec is not None:
        dynsec.execute(commands, tolerate=[CLIENT_NOT_FOUND, ROLE_NOT_FOUND])
        return
    with DynsecClient() as client:
        client.execute(commands, tolerate=[CLIENT_NOT_FOUND, ROLE_NOT_FOUND])


def ensure_device_roles(devices: Iterable[tuple[str, str]], *, dynsec: DynsecClient) -> None:
    """Create missing device roles (their ACLs follow from tenant and uid alone)."""
    commands: list[dict[str, Any]] = []
    for tenant, uid in devices:
        role, acls = device_role_name(tenant, uid), device_role_acls(tenant, uid)
        commands.append({"command": "createRole", "rolename": role, "acls": acls})
        commands.extend(_add_acl_commands(role, acls))
    dynsec.execute(commands, tolerate=[ROLE_EXISTS, ACL_EXISTS])


@dataclass(frozen=True)
class BrokerClientInfo:
    username: str
    disabled: bool


def list_device_clients(*, dynsec: DynsecClient) -> list[BrokerClientInfo]:
    """Every device client the broker knows (the platform's own accounts left out)."""
    usernames: list[str] = []
    offset = 0
    while True:
        answer = dynsec.execute([{"command": "listClients", "verbose": False, "count": 1000, "offset": offset}])[0]
        page = answer.get("data", {}).get("clients", [])
        usernames.extend(name if isinstance(name, str) else name.get("username", "") for name in page)
        total = answer.get("data", {}).get("totalCount", len(usernames))
        offset += len(page)
        if not page or offset >= total:
            break
    device_names = [name for name in usernames if parse_username(name)]
    infos: list[BrokerClientInfo] = []
    for start in range(0, len(device_names), BATCH_SIZE):
        chunk = device_names[start : start + BATCH_SIZE]
        answers = dynsec.execute([{"command": "getClient", "username": name} for name in chunk], tolerate=[CLIENT_NOT_FOUND])
        for name, answer in zip(chunk, answers, strict=True):
            client = answer.get("data", {}).get("client")
            if client is not None:
                infos.append(BrokerClientInfo(username=name, disabled=bool(client.get("disabled"))))
    return infos


def ensure_service_account(*, dynsec: DynsecClient) -> None:
    """The ingest service's account and role, with the password from the settings."""
    from devices.broker_config import SERVICE_ROLE, service_role_acls

    username = settings.MQTT_SERVICE_USERNAME
    password = settings.MQTT_SERVICE_PASSWORD
    created = dynsec.execute(
        [
            {"command": "createRole", "rolename": SERVICE_ROLE, "acls": service_role_acls()},
            {"command": "createClient", "username": username, "password": password, "roles": [{"rolename": SERVICE_ROLE}]},
        ],
        tolerate=[ROLE_EXISTS, CLIENT_EXISTS],
    )
    commands: list[dict[str, Any]] = []
    if created[0].get("error") == ROLE_EXISTS:
        dynsec.execute(_add_acl_commands(SERVICE_ROLE, service_role_acls()), tolerate=[ACL_EXISTS])
    if created[1].get("error") == CLIENT_EXISTS:
        client = dynsec.execute([{"command": "getClient", "username": username}])[0].get("data", {}).get("client", {})
        if not any(r.get("rolename") == SERVICE_ROLE for r in client.get("roles", [])):
            commands.append({"command": "addClientRole", "username": username, "rolename": SERVICE_ROLE})
        commands.append({"command": "setClientPassword", "username": username, "password": password})
    commands.append({"command": "enableClient", "username": username})
    dynsec.execute(commands)


# --- Publishing as the service account ----------------------------------------------------------


def publish_qos1(topic: str, payload: bytes | str, *, timeout: float | None = None, retain: bool = False) -> None:
    """Publish one message at QoS 1 with the service account; returns once the broker sent PUBACK."""
    session = _Session(
        username=settings.MQTT_SERVICE_USERNAME, password=settings.MQTT_SERVICE_PASSWORD, timeout=timeout, prefix="iiot-publisher"
    )
    session.open()
    try:
        info = session.client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(session.timeout)
        except (RuntimeError, ValueError) as exc:
            raise BrokerUnavailable(f"Could not publish to {topic}: {exc}") from exc
        if not info.is_published():
            raise BrokerUnavailable(f"The broker did not acknowledge the message to {topic} in time.")
    finally:
        session.close()
