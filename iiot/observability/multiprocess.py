"""prometheus_client multiprocess mode: every process writes its metric values to memory-mapped
files in `PROMETHEUS_MULTIPROC_DIR`; the web process's /metrics reads and sums all of them.

Why this and not one endpoint per process: the platform runs N web, ingest and worker processes
(Celery prefork children included) that come and go; one scrape target that sees them all needs
no service discovery and survives a worker child being recycled (its counters stay in its file).

- The directory is emptied when the platform starts (scripts/run.sh; in docker-compose by the
  one-shot `migrate` service, before any process starts), never while processes run.
- Files are named by a process identifier `<host>-<pid>` (not the bare pid) so that containers
  sharing one directory (docker-compose mounts one volume into web, ingest, worker and beat)
  never write into each other's files.
- A process that exits normally removes its `live*` gauge files (`mark_process_dead`), so a
  gauge such as `iiot_ingest_broker_connected` counts live processes only. Counters and
  histograms of dead processes stay: totals never go backwards.

`configure()` must run before the first metric object is created: `iiot/__init__.py` calls it, and
every process (manage.py, uvicorn, celery) imports the `iiot` package first.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import socket

logger = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
# Apps that define their own metric modules; imported so that a single-process /metrics lists them
# too (in multiprocess mode whatever any process recorded is collected anyway).
APP_METRIC_MODULES = ("rules.metrics", "alerting.metrics", "analytics.metrics", "telemetry.metrics", "devices.metrics")

_configured_identifier: str | None = None


def process_identifier() -> str:
    host = socket.gethostname().replace("_", "-") or "host"
    return f"{host}-{os.getpid()}"


def directory() -> str | None:
    path = os.environ.get(ENV) or os.environ.get(ENV.lower())
    return path or None


def enabled() -> bool:
    """Whether this process writes its metrics to the multiprocess directory."""
    from prometheus_client import values

    return getattr(values.ValueClass, "_multiprocess", False)


def configure() -> None:
    """Switch prometheus_client to multiprocess values named `<host>-<pid>` when the directory is set."""
    global _configured_identifier
    path = directory()
    if not path or _configured_identifier is not None:
        return
    os.makedirs(path, exist_ok=True)
    from prometheus_client import values

    host = socket.gethostname().replace("_", "-") or "host"
    values.ValueClass = values.MultiProcessValue(lambda: f"{host}-{os.getpid()}")
    _configured_identifier = process_identifier()
    atexit.register(mark_dead)


def mark_dead(identifier: str | None = None) -> None:
    """Remove a process's live-gauge files (this process by default; a Celery pool child by pid)."""
    path = directory()
    if not path:
        return
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(identifier or process_identifier(), path)
    except OSError:  # the directory was cleaned meanwhile
        pass


def import_app_metrics() -> None:
    for module in APP_METRIC_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                logger.exception("metrics module failed to import", extra={"module": module})
        except Exception:
            # A broken metrics module in one app must not stop every process from starting.
            logger.exception("metrics module failed to import", extra={"module": module})
