#!/usr/bin/env python3
"""Check that the services the platform needs answer: PostgreSQL, Redis, the Celery broker, MQTT.

Reads the same variables as iiot/settings.py, with the same defaults: the process environment
first, then `.env` (or the file named by IIOT_ENV_FILE). For each service that does not answer it
prints which one, at which URL, and how to start it on this kind of Debian machine, then exits 1.

Standalone on purpose (no Django import): it must give a clear answer before anything else runs.
With the venv's redis and psycopg it speaks each protocol; without them it falls back to a TCP
connect.

    python scripts/check_services.py                    # check, exit 1 if anything is down
    python scripts/check_services.py --create-database  # also create DATABASE_URL's database
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_SECONDS = 3.0

DEFAULTS = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/iiot",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/1",
    "MQTT_URL": "mqtt://127.0.0.1:1884",
}

START_COMMANDS = {
    "postgres": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "redis": 'redis-server --daemonize yes --bind 127.0.0.1 --port {port} --save "" --appendonly no',
    "mqtt": "make run (its Procfile starts the platform's broker: mosquitto -c var/mosquitto/mosquitto.conf)",
    "amqp": "rabbitmq-server -detached",
}
DEFAULT_PORTS = {"postgres": 5432, "redis": 6379, "mqtt": 1884, "amqp": 5672}
DYNSEC_PLUGINS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}


class ServiceDown(Exception):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped, `export ` and surrounding quotes dropped."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        if key:
            values[key] = value
    return values


def load_config() -> dict[str, str]:
    """Like django-environ in settings.py: the process environment wins over the .env file."""
    env_file = Path(os.environ.get("IIOT_ENV_FILE") or ROOT / ".env")
    from_file = read_env_file(env_file)
    return {key: os.environ.get(key) or from_file.get(key) or default for key, default in DEFAULTS.items()}


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return unquote(parts.hostname or "127.0.0.1"), parts.port or default_port


def tcp_connect(url: str, default_port: int) -> None:
    host, port = host_port(url, default_port)
    try:
        with socket.create_connection((host, port), TIMEOUT_SECONDS):
            pass
    except OSError as exc:
        raise ServiceDown(f"no TCP connection to {host}:{port} ({exc})") from exc


# --- probes -----------------------------------------------------------------------------------


def _postgres_conninfo(url: str, dbname: str | None = None) -> str:
    parts = urlsplit(url)
    if dbname is not None:
        parts = parts._replace(path="/" + dbname)
    return parts._replace(scheme="postgresql").geturl()


def check_postgres(url: str, create_database: bool) -> str:
    """Connect to the configured database; a missing database means the server is up."""
    try:
        import psycopg
    except ImportError:
        tcp_connect(url, 5432)
        return "TCP port open (psycopg not installed, database not checked)"
    dbname = unquote(urlsplit(url).path.lstrip("/")) or "postgres"
    try:
        with psycopg.connect(_postgres_conninfo(url), connect_timeout=int(TIMEOUT_SECONDS)) as conn:
            conn.execute("SELECT 1")
        return f"database {dbname} answers"
    except psycopg.OperationalError as exc:
        message = str(exc)
        if f'database "{dbname}" does not exist' not in message:
            raise ServiceDown(message.strip().splitlines()[0]) from exc
    if not create_database:
        return f"server answers; database {dbname} does not exist yet (make migrate creates it)"
    from psycopg import sql

    last_error: Exception | None = None
    for maintenance_db in ("postgres", "template1"):
        try:
            with psycopg.connect(
                _postgres_conninfo(url, maintenance_db), connect_timeout=int(TIMEOUT_SECONDS), autocommit=True
            ) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            return f"database {dbname} created"
        except psycopg.errors.DuplicateDatabase:
            return f"database {dbname} answers"
        except psycopg.Error as exc:
            last_error = exc
    raise ServiceDown(f"server answers but database {dbname} could not be created: {last_error}")


def check_redis(url: str) -> str:
    try:
        import redis
    except ImportError:
        tcp_connect(url, 6379)
        return "TCP port open (redis-py not installed, PING not sent)"
    client = redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT_SECONDS, socket_timeout=TIMEOUT_SECONDS)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ServiceDown(str(exc)) from exc
    finally:
        client.close()
    return "PING answered"


def check_broker(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):
        return check_redis(url)
    if scheme in ("amqp", "amqps", "pyamqp"):
        tcp_connect(url, 5672)
        return "TCP port open"
    raise ServiceDown(f"cannot probe a broker with scheme {scheme!r}")


def check_mqtt(url: str) -> str:
    """A local broker is the platform's own (`make run` starts it, the tests start theirs): what
    must be there beforehand is Mosquitto with its dynamic security plugin. A remote one must answer."""
    host, _port = host_port(url, DEFAULT_PORTS["mqtt"])
    try:
        tcp_connect(url, 8883 if urlsplit(url).scheme in ("mqtts", "ssl") else DEFAULT_PORTS["mqtt"])
        return "TCP port open"
    except ServiceDown:
        if host not in LOCAL_HOSTS:
            raise
    import shutil

    missing = [name for name in ("mosquitto", "mosquitto_ctrl") if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists()]
    if not any(Path(path).is_file() for path in DYNSEC_PLUGINS):
        missing.append("mosquitto_dynamic_security.so")
    if missing:
        raise ServiceDown(f"not running, and {', '.join(missing)} not installed (apt-get install mosquitto mosquitto-clients)")
    return "not running yet: Mosquitto and its dynamic security plugin are installed (make run starts the broker)"


# --- report -----------------------------------------------------------------------------------


def how_to_start(kind: str, url: str, variable: str) -> str:
    host, port = host_port(url, DEFAULT_PORTS.get(kind, 0))
    if host not in LOCAL_HOSTS or kind not in START_COMMANDS:
        return f"make sure it runs at {host}:{port}, or point {variable} (environment or .env) at one that does"
    hint = f"start it with:  {START_COMMANDS[kind].format(port=port)}"
    if "{port}" not in START_COMMANDS[kind] and port != DEFAULT_PORTS[kind]:
        hint += f"\n      (that starts it on its configured port; {variable} expects port {port})"
    return hint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--create-database", action="store_true", help="create DATABASE_URL's database if it is missing")
    parser.add_argument("--quiet", action="store_true", help="print only what is down")
    args = parser.parse_args(argv)

    config = load_config()
    broker_url = config["CELERY_BROKER_URL"]
    broker_kind = "redis" if urlsplit(broker_url).scheme in ("redis", "rediss") else "amqp"
    checks: list[tuple[str, str, str, str, Callable[[], str]]] = [
        (
            "PostgreSQL",
            "postgres",
            "DATABASE_URL",
            config["DATABASE_URL"],
            lambda: check_postgres(config["DATABASE_URL"], args.create_database),
        ),
        ("Redis (cache, channel layer)", "redis", "REDIS_URL", config["REDIS_URL"], lambda: check_redis(config["REDIS_URL"])),
        ("Celery broker", broker_kind, "CELERY_BROKER_URL", broker_url, lambda: check_broker(broker_url)),
        ("MQTT broker (Mosquitto)", "mqtt", "MQTT_URL", config["MQTT_URL"], lambda: check_mqtt(config["MQTT_URL"])),
    ]

    down = 0
    for label, kind, variable, url, probe in checks:
        try:
            detail = probe()
        except ServiceDown as exc:
            down += 1
            print(f"DOWN  {label} at {redact(url)} ({variable}): {exc}", file=sys.stderr, flush=True)
            print(f"      {how_to_start(kind, url, variable)}", file=sys.stderr, flush=True)
            continue
        if not args.quiet:
            print(f"ok    {label} at {redact(url)}: {detail}", flush=True)
    if down:
        print(f"{down} service(s) down: start them and run this again.", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
