"""Write the broker's files: mosquitto.conf from the shipped template and an initialised
dynamic-security.json holding the platform's admin and service accounts.

Used by `manage.py mqtt_broker_config` (and so `make run`) and by the test helper
`iiot.testing.mosquitto`, so tests run the broker exactly as shipped. Run it while that broker is
stopped: the plugin rewrites dynamic-security.json from memory on every change it makes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from django.conf import settings

TEMPLATE_PATH = Path(settings.BASE_DIR) / "deploy" / "mosquitto" / "mosquitto.conf"
PLUGIN_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
SERVICE_ROLE = "iiot-service"
# Mosquitto 2.0's own password hashing for dynsec clients (what `mosquitto_ctrl` writes).
_HASH_ITERATIONS = 101


class BrokerConfigError(Exception):
    pass


@dataclass(frozen=True)
class BrokerFiles:
    directory: Path
    config_file: Path
    dynsec_file: Path
    port: int


def find_plugin() -> str:
    configured = getattr(settings, "MQTT_DYNSEC_PLUGIN", "")
    for candidate in ([configured] if configured else []) + list(PLUGIN_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return candidate
    raise BrokerConfigError(
        "Mosquitto's dynamic security plugin was not found (install Debian's `mosquitto` package, "
        "or set MQTT_DYNSEC_PLUGIN to the path of mosquitto_dynamic_security.so)."
    )


def service_role_acls() -> list[dict[str, Any]]:
    """The ingest service: reads every tenant's device topics (shared or not), sends commands and shared attributes."""
    return [
        {"acltype": "subscribePattern", "topic": "$share/ingest/iiot/#", "priority": 0, "allow": True},
        {"acltype": "subscribePattern", "topic": "iiot/#", "priority": 0, "allow": True},
        {"acltype": "publishClientReceive", "topic": "iiot/#", "priority": 0, "allow": True},
        {"acltype": "publishClientSend", "topic": "iiot/+/+/commands", "priority": 0, "allow": True},
        {"acltype": "publishClientSend", "topic": "iiot/+/+/attributes/shared", "priority": 0, "allow": True},
    ]


def hash_password(password: str, salt: bytes | None = None) -> dict[str, Any]:
    """A dynsec client's password fields, as `mosquitto_ctrl dynsec init` writes them."""
    salt_b64 = base64.b64encode(salt or secrets.token_bytes(12)).decode()
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt_b64), _HASH_ITERATIONS)
    return {"password": base64.b64encode(digest).decode(), "salt": salt_b64, "iterations": _HASH_ITERATIONS}


def password_matches(client: dict[str, Any], password: str) -> bool:
    if not client.get("salt") or not client.get("password"):
        return False
    salt = base64.b64decode(client["salt"])
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(client.get("iterations") or _HASH_ITERATIONS))
    return secrets.compare_digest(base64.b64encode(digest).decode(), client["password"])


def render_config(*, port: int, directory: Path, bind_address: str = "127.0.0.1", plugin_path: str | None = None) -> str:
    template = Template(TEMPLATE_PATH.read_text(encoding="utf-8"))
    return template.substitute(
        user=pwd.getpwuid(os.geteuid()).pw_name,
        port=port,
        bind_address=bind_address,
        plugin_path=plugin_path or find_plugin(),
        dynsec_config_file=str(directory / "dynamic-security.json"),
        persistence_location=str(directory),
    )


def _init_dynsec(path: Path, admin_username: str, admin_password: str) -> None:
    ctrl = shutil.which("mosquitto_ctrl")
    if ctrl is None:
        raise BrokerConfigError("mosquitto_ctrl not found (Debian package `mosquitto-clients`).")
    result = subprocess.run([ctrl, "dynsec", "init", str(path), admin_username, admin_password], capture_output=True, text=True)
    if result.returncode != 0 or not path.is_file():
        raise BrokerConfigError(f"mosquitto_ctrl dynsec init failed: {(result.stderr or result.stdout).strip()}")


def _ensure_client(data: dict[str, Any], username: str, password: str, rolename: str, textname: str) -> bool:
    """Add or fix one client in the dynsec JSON; returns whether anything changed."""
    clients = data.setdefault("clients", [])
    client = next((c for c in clients if c.get("username") == username), None)
    changed = False
    if client is None:
        client = {"username": username, "textName": textname, "roles": []}
        clients.append(client)
        changed = True
    if not password_matches(client, password):
        client.update(hash_password(password))
        changed = True
    if client.pop("disabled", False):
        changed = True
    if not any(r.get("rolename") == rolename for r in client.setdefault("roles", [])):
        client["roles"].append({"rolename": rolename})
        changed = True
    return changed


def _ensure_role(data: dict[str, Any], rolename: str, acls: list[dict[str, Any]]) -> bool:
    roles = data.setdefault("roles", [])
    role = next((r for r in roles if r.get("rolename") == rolename), None)
    if role is None:
        roles.append({"rolename": rolename, "acls": acls})
        return True
    if role.get("acls") != acls:
        role["acls"] = acls
        return True
    return False


def write_broker_config(
    directory: Path | str,
    *,
    port: int,
    bind_address: str = "127.0.0.1",
    admin_username: str | None = None,
    admin_password: str | None = None,
    service_username: str | None = None,
    service_password: str | None = None,
) -> BrokerFiles:
    """Write DIR/mosquitto.conf and make DIR/dynamic-security.json hold the platform accounts.

    Idempotent: an existing dynamic-security.json keeps every device client and role; only the
    admin and service accounts are added or their passwords brought in line with the settings.
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    admin_username = admin_username or settings.MQTT_ADMIN_USERNAME
    admin_password = admin_password or settings.MQTT_ADMIN_PASSWORD
    service_username = service_username or settings.MQTT_SERVICE_USERNAME
    service_password = service_password or settings.MQTT_SERVICE_PASSWORD

    config_file = directory / "mosquitto.conf"
    rendered = render_config(port=port, directory=directory, bind_address=bind_address)
    if not config_file.is_file() or config_file.read_text(encoding="utf-8") != rendered:
        config_file.write_text(rendered, encoding="utf-8")

    dynsec_file = directory / "dynamic-security.json"
    if not dynsec_file.is_file():
        _init_dynsec(dynsec_file, admin_username, admin_password)
    data = json.loads(dynsec_file.read_text(encoding="utf-8"))
    changed = _ensure_client(data, admin_username, admin_password, "admin", "Platform dynsec admin")
    changed |= _ensure_role(data, SERVICE_ROLE, service_role_acls())
    changed |= _ensure_client(data, service_username, service_password, SERVICE_ROLE, "Platform service account (ingest, commands)")
    # Deny by default, receiving included: a client gets exactly what its role names.
    defaults = {"publishClientSend": False, "publishClientReceive": False, "subscribe": False, "unsubscribe": True}
    if data.get("defaultACLAccess") != defaults:
        data["defaultACLAccess"] = defaults
        changed = True
    if changed:
        tmp = dynsec_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.chmod(tmp, 0o600)
        tmp.replace(dynsec_file)
    return BrokerFiles(directory=directory, config_file=config_file, dynsec_file=dynsec_file, port=port)
