"""`python manage.py ingest`: the MQTT ingest service (see telemetry/transports/mqtt.py).

    python manage.py ingest                    # one process, client id ingest-<host>-0
    python manage.py ingest --processes 2      # two worker processes (ids -0, this one, and -1)
    python manage.py ingest --instance 3       # when a supervisor starts the command N times
    python manage.py ingest --retire 1         # instance 1 is stopped for good: empty and end its session

All processes join the shared subscription group `ingest`, so the broker splits the stream
between them. Each instance must keep its number across restarts (its persistent session, and
what the broker queued for it, are keyed by the client id). SIGTERM or SIGINT: the pending
batches are written and acknowledged, then the process exits.

Scaling down: the broker keeps queueing a share of the stream for the persistent session of an
instance that is not running (until the session expires, INGEST_SESSION_EXPIRY_S). After stopping
an instance for good, `--retire N` stores what its session holds and deletes the session
(telemetry/transports/mqtt.py, "Retiring an instance"); it exits when done.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from django.core.management.base import BaseCommand, CommandError

logger = logging.getLogger("telemetry.ingest")


def load_streaming_hooks() -> list:
    """settings.INGEST_STREAMING_HOOKS: dotted paths of factories `() -> hook | None`, called once
    per ingest process (a factory may start its own background thread or task)."""
    from django.conf import settings
    from django.utils.module_loading import import_string

    hooks = []
    for path in settings.INGEST_STREAMING_HOOKS:
        hook = import_string(path)()
        if hook is not None:
            hooks.append(hook)
    return hooks


# Collector thresholds for the ingest (CPython's default is 700, 10, 10): the hot path allocates
# several containers per message (Outcome, lists, point tuples), so at 40k messages a second the
# default runs about 60 young collections and a full one every few seconds. Offline, 48k
# messages through data_received + submit: 8.6 us per message by default, 6.6 with this and
# gc.freeze(), i.e. a fifth of the ingest's Python time was the collector.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Freeze what start-up allocated (Django, the registry, the rules index: never garbage, yet
    scanned by every full collection, a pause of tens of ms on the event loop) and collect the
    young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_instance(
    instance: int,
    url: str | None,
    stats_interval: float,
    group: str = "ingest",
    on_signal: Callable[[], None] | None = None,
    *,
    retire: bool = False,
) -> dict:
    """Run one ingest instance until stopped (or, with `retire`, until its session is emptied and
    deleted). Returns its stats, with `session_present` and `retired`."""
    from telemetry.pipeline import Pipeline
    from telemetry.registry import Registry
    from telemetry.transports.base import IngestService
    from telemetry.transports.mqtt import MqttTransport, default_client_id

    async def main() -> None:
        registry = Registry()
        registry.start()
        service = IngestService(Pipeline(registry), hooks=load_streaming_hooks())
        transport = MqttTransport(service, url=url, client_id=default_client_id(instance, group), group=group, retire=retire)
        service.metrics.watch(transport)  # iiot_ingest_broker_connected follows transport.connected
        loop = asyncio.get_running_loop()

        def stop() -> None:
            if on_signal is not None:
                on_signal()
            transport.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)

        async def report() -> None:
            previous, started = 0, time.monotonic()
            while True:
                await asyncio.sleep(stats_interval)
                written = service.stats.points_written
                elapsed, started = time.monotonic() - started, time.monotonic()
                logger.info(
                    "ingest stats",
                    extra={**service.stats.as_dict(), "points_per_s": round((written - previous) / elapsed), "pending": service.pending_points},
                )
                previous = written

        reporter = asyncio.create_task(report())
        tune_gc()
        try:
            await transport.run()
        finally:
            reporter.cancel()
            registry.stop()
            logger.info("ingest stopped", extra=service.stats.as_dict())
        if retire:
            logger.info(
                "ingest instance retired" if transport.retired else "ingest instance not retired: its session stays",
                extra={"client_id": transport.client_id, "session_present": transport.session_present, **service.stats.as_dict()},
            )
        return {**service.stats.as_dict(), "session_present": transport.session_present, "retired": transport.retired}

    return asyncio.run(main())


def stop_with_parent(parent_pid: int) -> None:
    """Have the kernel send this process SIGTERM when its parent dies (Linux PR_SET_PDEATHSIG),
    so a SIGKILLed `ingest --processes N` leaves no orphan worker behind: an orphan would keep
    its MQTT session and, when the command is restarted, fight the new instance of the same
    client id (each takeover disconnects the other). SIGTERM is the graceful stop: the orphan
    writes and acknowledges what it holds, then exits."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: the parent's SIGTERM forwarding still applies
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _child(instance: int, url: str | None, stats_interval: float, group: str, parent_pid: int) -> None:
    stop_with_parent(parent_pid)
    import django

    django.setup()
    run_instance(instance, url, stats_interval, group)


def _child_main() -> None:
    """Entry point of a worker process (`python -c`, see `start_worker`): its arguments as JSON."""
    _child(*json.loads(sys.argv[1]))


def start_worker(instance: int, url: str | None, stats_interval: float, group: str) -> subprocess.Popen:
    """Start instance `instance` as a fresh interpreter running `_child`. Not multiprocessing's
    spawn: that also starts its resource tracker, a third Python process (12 MB) this command
    never needs. The child runs from the project's directory with this process's environment
    (DJANGO_SETTINGS_MODULE included) and shares its stdout and stderr."""
    from django.conf import settings

    arguments = json.dumps([instance, url, stats_interval, group, os.getpid()])
    code = "from telemetry.management.commands.ingest import _child_main; _child_main()"
    return subprocess.Popen([sys.executable, "-c", code, arguments], cwd=settings.BASE_DIR)


class Command(BaseCommand):
    help = "Receive device messages from MQTT, validate them and store them (shared subscription)."
    # No system checks: they import every URLconf, view and admin (about 80 MB) that this worker
    # never uses (`manage.py check` and the web process run them).
    requires_system_checks: list = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("--processes", type=int, default=1, help="Worker processes to start (default 1).")
        parser.add_argument("--instance", type=int, default=int(os.environ.get("INGEST_INSTANCE", "0")),
                            help="Number of the first instance (client id ingest-<host>-<n>); default $INGEST_INSTANCE or 0.")
        parser.add_argument("--url", default=None, help="Broker URL (default settings.MQTT_URL).")
        parser.add_argument("--group", default="ingest", help="Shared subscription group (default ingest; another group gets its own copy of the stream).")
        parser.add_argument("--stats-interval", type=float, default=30.0, help="Seconds between stats log lines.")
        parser.add_argument(
            "--retire", type=int, nargs="+", metavar="N", default=None,
            help="Retire these stopped instances: store what their persistent sessions hold, delete the sessions, exit.",
        )  # fmt: skip

    def handle(self, *args, **options) -> None:
        count, first = max(1, options["processes"]), options["instance"]
        url, interval, group = options["url"], options["stats_interval"], options["group"]
        if options["retire"] is not None:
            self.retire(options["retire"], url, interval, group)
            return
        # This process is the first instance; the others are child processes. No idle supervisor:
        # each process holds a Django (~80 MB), so one fewer matters to the ingest's footprint.
        children = [start_worker(first + n, url, interval, group) for n in range(1, count)]

        def forward() -> None:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)

        try:
            run_instance(first, url, interval, group, on_signal=forward)
        finally:
            forward()
            for child in children:
                child.wait()

    def retire(self, instances: list[int], url: str | None, interval: float, group: str) -> None:
        """One instance after the other, in this process. Stopped (SIGTERM) before one is done: exit
        1, that session stays unsubscribed with what is left, the later ones untouched."""
        from telemetry.transports.mqtt import default_client_id

        for instance in instances:
            stats = run_instance(instance, url, interval, group, retire=True)
            client_id = default_client_id(instance, group)
            if not stats["retired"]:
                raise CommandError(f"{client_id}: stopped before its session was emptied; run --retire {instance} again")
            if stats["session_present"]:
                self.stdout.write(
                    f"{client_id}: session emptied and deleted ({stats['messages']} messages, {stats['points_written']} points stored)"
                )
            else:
                self.stdout.write(f"{client_id}: no session at the broker, nothing to retire")
