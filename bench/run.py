"""`make bench`: ingest and storage figures on this machine; the last line is one JSON object.

    .venv/bin/python bench/run.py            # about 15-20 minutes with every part
    .venv/bin/python bench/run.py --quick    # about 6 minutes (shorter windows, less data)
    .venv/bin/python bench/run.py --parts "" # ingest and storage only

Everything runs on 127.0.0.1 in a database of its own (iiot_bench, dropped before and after):
1. storage figures from scripts/bench_storage.py (bytes_per_point, query_30d_ms, latest_1000_ms,
   writer_points_per_s);
2. a broker configured as shipped (iiot.testing.mosquitto), tenant `bench` with N devices and their
   credentials; bench/loadgen.py offers a fixed rate and
   (a) a do-nothing `mosquitto_sub` (QoS 1) counts what it receives -> mosquitto_sub_msgs_per_s;
   (b) `manage.py ingest` at QoS 1: points stored within the window -> ingest_points_per_s, then
       points_lost = acknowledged messages x 4 - points finally stored; ingest_rss_mb (process tree);
   (c) at 80 % of (b)'s rate for 30 s (quick: 10), a probe device publishes every 100 ms;
       publish-to-latest-in-Redis latency p50/p99. It starts on emptied tables after a CHECKPOINT,
       so that it measures the steady state at that load, not the database's recovery from (b)'s
       overload (the vacuum of millions of new rows, a checkpoint);
   (d) the same at QoS 0 -> ingest_qos0_points_per_s.
3. then, each in a child process with a database and broker of its own (`--parts`):
   rules (bench/rules_bench.py: alert_latency_p50_ms/p99_ms, ingest_with_rules_vs_without),
   ws (bench/ws_bench.py: ws_clients, ws_latency_p50_ms/p99_ms, ws_clients_dropped, web_rss_mb),
   analytics (bench/analytics_bench.py: analytics_30d_p95_ms, analytics_1h_p95_ms, analytics_points),
   pages (bench/pages_bench.py: server time of the operator pages and the admin with 1,000 devices,
   page_<name>_p95_ms and pages_slowest_p95_ms).
A failed part prints its error and reports its keys as null.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "iiot_bench"
TENANT = "bench"
METRICS = ("temperature", "humidity", "pressure", "vibration")
BENCH_ENV = {
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
    "IIOT_ENV_FILE": "/nonexistent",
    "SECRET_KEY": "bench",
    "DEBUG": "0",
    "IIOT_STATIC_MANIFEST": "0",
    "REDIS_URL": "redis://127.0.0.1:6379/7",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/6",
    "LOG_LEVEL": "WARNING",
    "DJANGO_SETTINGS_MODULE": "iiot.settings",
}
PARTS = {"rules": "rules_bench", "ws": "ws_bench", "analytics": "analytics_bench", "pages": "pages_bench"}
KEYS = (
    "ingest_points_per_s", "ingest_qos0_points_per_s", "ingest_msgs_per_s", "mosquitto_sub_msgs_per_s",
    "ingest_vs_mosquitto_sub", "ingest_latency_p50_ms", "ingest_latency_p99_ms", "points_lost", "ingest_rss_mb",
    "bytes_per_point", "query_30d_ms", "latest_1000_ms", "writer_points_per_s",
    "alert_latency_p50_ms", "alert_latency_p99_ms", "ingest_with_rules_vs_without",
    "ws_clients", "ws_latency_p50_ms", "ws_latency_p99_ms", "ws_clients_dropped", "web_rss_mb",
    "analytics_30d_p95_ms", "analytics_1h_p95_ms", "analytics_points",
    "pages_slowest_p95_ms",
)  # fmt: skip
PYTHON = sys.executable


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- Processes ------------------------------------------------------------------------------------

STARTED: list[subprocess.Popen] = []


def spawn(args: list[str], **kwargs) -> subprocess.Popen:
    """A child in a process group of its own (killed with its children by stop())."""
    process = subprocess.Popen(args, start_new_session=True, **kwargs)
    STARTED.append(process)
    return process


def stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:  # whatever is left of the group (spawned workers)
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        pass


def run_step(args: list[str], timeout: float) -> str:
    process = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(process)
        raise RuntimeError(f"{' '.join(args[:3])} timed out after {timeout} s") from None
    finally:
        stop(process)
    if process.returncode:
        raise RuntimeError(f"{' '.join(args[:3])} exited with {process.returncode}: {err.decode(errors='replace')[-2000:]}")
    return out.decode(errors="replace")


def tree_rss_mb(pid: int) -> float:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total_kb, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            with open(f"/proc/{current}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
        except OSError:
            pass
    return round(total_kb / 1024, 1)


# --- Database -------------------------------------------------------------------------------------


def admin_execute(statement: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=10) as conn:
        conn.execute(statement)


def count_points(schema: str) -> int:
    import psycopg

    with psycopg.connect(BENCH_ENV["DATABASE_URL"].replace("postgres://", "postgresql://"), autocommit=True) as conn:
        return conn.execute(f'SELECT count(*) FROM "{schema}".telemetry_point').fetchone()[0]


def truncate_points(schema: str, *, settle: bool = False) -> None:
    """Empty the points (with `settle`, the rollups too, then a CHECKPOINT): the next phase starts
    from a steady database, not in the vacuum and checkpoint that the previous overload left."""
    import psycopg

    with psycopg.connect(BENCH_ENV["DATABASE_URL"].replace("postgres://", "postgresql://"), autocommit=True) as conn:
        if settle:
            conn.execute(f'TRUNCATE "{schema}".telemetry_point, "{schema}".telemetry_rollup_1m, "{schema}".telemetry_rollup_1h_sealed')
            conn.execute("CHECKPOINT")
        else:
            conn.execute(f'TRUNCATE "{schema}".telemetry_point')


# --- Load -----------------------------------------------------------------------------------------


class LoadRun:
    """bench.loadgen.run_load in a process of its own (forked), so that the load generator's work
    never holds the GIL of the process whose probes and pollers time the latencies; `stats` is its
    final Stats once joined. Timestamps are time.perf_counter() (CLOCK_MONOTONIC: one clock for
    all processes of the machine)."""

    def __init__(self, devices, host: str, port: int, *, qos: int, duration_s: float, rate: float, wait_acks_s: float) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self.stats = None
        self.error: str | None = None
        self._started = context.Value("d", 0.0)
        self._results, child_end = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_load_child, args=(child_end, self._started, devices, host, port, qos, duration_s, rate, wait_acks_s),
            name="loadgen", daemon=True,
        )  # fmt: skip
        self.process.start()
        child_end.close()

    def window(self, timeout: float = 120.0) -> float:
        """Wait until the publishing has started; returns its start (perf_counter time)."""
        deadline = time.monotonic() + timeout
        while not self._started.value:
            if not self.process.is_alive():
                self._collect(0)
                raise RuntimeError(f"load generator ended before publishing: {self.error}")
            if time.monotonic() > deadline:
                raise RuntimeError("load generator did not start")
            time.sleep(0.01)
        return self._started.value

    def join(self, timeout: float) -> None:
        self._collect(timeout)
        self.process.join(5)
        if self.stats is None and self.error is None:
            raise RuntimeError("load generator did not finish")
        if self.error is not None:
            raise RuntimeError(f"load generator failed: {self.error}")

    def _collect(self, timeout: float) -> None:
        if self.stats is None and self.error is None and self._results.poll(timeout):
            kind, value = self._results.recv()
            if kind == "stats":
                from bench import loadgen

                self.stats = loadgen.Stats(**value)
            else:
                self.error = value


def _load_child(results, started, devices, host: str, port: int, qos: int, duration_s: float, rate: float, wait_acks_s: float) -> None:
    """The LoadRun process: runs the load, reports its start as soon as it has one, then its Stats."""
    import dataclasses

    from bench import loadgen

    class _Stats(loadgen.Stats):
        def __setattr__(self, name, value) -> None:
            super().__setattr__(name, value)
            if name == "started" and value:
                started.value = value

    loadgen.Stats = _Stats
    try:
        stats = asyncio.run(loadgen.run_load(devices, host, port, qos=qos, duration_s=duration_s,
                                             rate_msgs_per_s=rate, wait_acks_s=wait_acks_s))  # fmt: skip
        results.send(("stats", dataclasses.asdict(stats)))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        results.send(("error", repr(exc)))


def sleep_until(moment: float) -> None:
    while (left := moment - time.perf_counter()) > 0:
        time.sleep(min(left, 0.05))


# --- Benchmarks -----------------------------------------------------------------------------------


def bench_storage(quick: bool) -> dict:
    args = [PYTHON, "scripts/bench_storage.py"]
    if quick:
        args += ["--days", "7", "--runs", "5"]
    out = run_step(args, timeout=240 if quick else 420)
    figures = json.loads(out.strip().splitlines()[-1])
    return {key: figures.get(key) for key in ("bytes_per_point", "query_30d_ms", "latest_1000_ms", "writer_points_per_s")}


def provision(count: int):
    from django_tenants.utils import schema_context

    from bench.loadgen import Device as LoadDevice
    from devices import services
    from devices.models import Device
    from telemetry.models import Metric
    from tenants.services import ensure_public_tenant, provision_tenant

    ensure_public_tenant("localhost")
    provision_tenant(actor=None, client=None, slug=TENANT, name="Ingest bench", domain=f"{TENANT}.localhost",
                     admin_email=f"admin@{TENANT}.example.com", admin_password="Bench-Password-2026!")  # fmt: skip
    loads = []
    with schema_context(TENANT):
        profile = services.create_profile(actor=None, client=None, name="bench",
                                          metrics=[{"name": name} for name in METRICS])  # fmt: skip
        for number in range(count + 1):  # the last one is the latency probe
            uid = f"bench-{number:05d}" if number < count else "bench-probe"
            device = services.create_device(actor=None, client=None, uid=uid, name=uid, profile=profile)
            issued = services.issue_credential(actor=None, client=None, device=device)
            loads.append(LoadDevice(uid=uid, username=issued.username, password=issued.secret, topic=issued.topics.telemetry))
        probe_id = Device.objects.get(uid="bench-probe").pk
        metric_id = Metric.objects.get(name="temperature").pk
    return loads[:-1], loads[-1], probe_id, metric_id


def bench_mosquitto_sub(broker, devices, rate: float, duration: float) -> dict:
    binary = shutil.which("mosquitto_sub")
    if not binary:
        raise RuntimeError("mosquitto_sub not found")
    # One byte per message into a file: the count is the file's size, and counting costs this
    # process (which runs the load generator) nothing.
    out_path = Path(broker.directory) / "mosquitto_sub.out"
    with open(out_path, "wb") as out:
        process = spawn([binary, "-h", broker.host, "-p", str(broker.port), "-u", broker.service_username,
                         "-P", broker.service_password, "-t", f"iiot/{TENANT}/+/telemetry", "-q", "1", "-F", ".", "-N"],
                        stdout=out, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(1.0)  # subscribed
        if process.poll() is not None:
            raise RuntimeError(f"mosquitto_sub exited with {process.returncode}")
        load = LoadRun(devices, broker.host, broker.port, qos=1, duration_s=duration, rate=rate, wait_acks_s=5)
        start = load.window()
        first = out_path.stat().st_size
        sleep_until(start + duration)
        last = out_path.stat().st_size
        load.join(60)
        return {"mosquitto_sub_msgs_per_s": round((last - first) / duration), "mosquitto_sub_offered": load.stats.sent}
    finally:
        stop(process)
        out_path.unlink(missing_ok=True)


def wait_for_ingest(broker, probe, probe_id: int, metric_id: int, timeout: float = 60.0) -> None:
    """Publish probe messages until one reaches the latest values (the ingest is subscribed)."""
    from telemetry.storage import read_latest

    deadline = time.monotonic() + timeout
    with Prober(broker, probe) as prober:
        while time.monotonic() < deadline:
            sent = prober.publish()
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                got = read_latest(TENANT, [probe_id]).get(probe_id, {}).get(metric_id)
                if got is not None and int(got[0].timestamp() * 1000) >= sent:
                    return
                time.sleep(0.05)
    raise RuntimeError(f"the ingest stored nothing within {timeout} s")


class Prober:
    """One blocking MQTT connection for the probe device: QoS 1 publishes with ts = send time."""

    def __init__(self, broker, device) -> None:
        self.broker, self.device = broker, device
        self.packet_id = 0
        self.last_ts = 0

    def __enter__(self) -> Prober:
        from bench.loadgen import connect_packet

        self.sock = socket.create_connection((self.broker.host, self.broker.port), timeout=10)
        self.sock.sendall(connect_packet(f"bench-probe-{os.getpid()}", self.device.username, self.device.password))
        connack = self.sock.recv(4)
        if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"probe CONNACK refused: {connack!r}")
        self.sock.setblocking(False)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(b"\xe0\x00")
        except OSError:
            pass
        self.sock.close()

    def publish(self) -> int:
        from bench.loadgen import _utf8, publish_packet

        try:
            while self.sock.recv(65536):  # drain PUBACKs
                pass
        except BlockingIOError:
            pass
        ts = max(int(time.time() * 1000), self.last_ts + 1)
        self.last_ts = ts
        self.packet_id = self.packet_id % 65535 + 1
        payload = b'{"ts":%d,"values":{"temperature":21.5,"humidity":50,"pressure":1.0,"vibration":0.5}}' % ts
        self.sock.setblocking(True)
        self.sock.sendall(publish_packet(_utf8(self.device.topic), payload, 1, self.packet_id))
        self.sock.setblocking(False)
        return ts


def bench_ingest(broker, devices, rate: float, duration: float, drain_s: float, qos: int) -> dict:
    before = count_points(TENANT)
    load = LoadRun(devices, broker.host, broker.port, qos=qos, duration_s=duration, rate=rate, wait_acks_s=drain_s)
    start = load.window()
    sleep_until(start + duration)
    stored = count_points(TENANT) - before
    return {"stored": stored, "load": load, "before": before}


def bench_latency(broker, devices, probe, probe_id: int, metric_id: int, rate: float, duration: float) -> dict:
    """The probe publishes every 100 ms (ts = send time); a poller thread reads the latest values
    and stamps every pending message whose ts the stored latest ts has reached."""
    from telemetry.storage import read_latest

    load = LoadRun(devices, broker.host, broker.port, qos=1, duration_s=duration, rate=rate, wait_acks_s=30)
    start = load.window()
    pending: list[tuple[int, float]] = []
    latencies: list[float] = []
    lock = threading.Lock()
    publishing = threading.Event()
    publishing.set()
    poll_error: list[BaseException] = []

    def poller() -> None:
        give_up = None
        try:
            while True:
                with lock:
                    waiting = bool(pending)
                if not publishing.is_set() and not waiting:
                    return
                if not publishing.is_set():
                    give_up = give_up or time.perf_counter() + 10.0
                    if time.perf_counter() > give_up:
                        return
                got = read_latest(TENANT, [probe_id]).get(probe_id, {}).get(metric_id)
                now = time.perf_counter()
                if got is not None:
                    seen = int(got[0].timestamp() * 1000)
                    with lock:
                        while pending and pending[0][0] <= seen:
                            latencies.append((now - pending.pop(0)[1]) * 1000)
                time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001
            poll_error.append(exc)

    thread = threading.Thread(target=poller, daemon=True)
    thread.start()
    try:
        with Prober(broker, probe) as prober:
            tick = start
            while tick < start + duration:
                sleep_until(tick)
                with lock:
                    pending.append((prober.publish(), time.perf_counter()))
                tick += 0.1
            publishing.clear()
            thread.join(15)
    finally:
        publishing.clear()
    load.join(120)
    if poll_error:
        raise RuntimeError(f"latency poller failed: {poll_error[0]!r}")
    if not latencies:
        raise RuntimeError("no probe message reached the latest values")
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]
    return {
        "ingest_latency_p50_ms": round(statistics.median(latencies), 1),
        "ingest_latency_p99_ms": round(p99, 1),
        "latency_samples": len(latencies),
        "latency_missed": len(pending),
    }


def wait_until_stable(schema: str, expected: int, bound_s: float) -> int:
    deadline = time.monotonic() + bound_s
    previous, stable_since = -1, time.monotonic()
    while True:
        current = count_points(schema)
        if current >= expected:
            return current
        if current != previous:
            previous, stable_since = current, time.monotonic()
        elif time.monotonic() - stable_since > 5:
            return current
        if time.monotonic() > deadline:
            return current
        time.sleep(1)


def ingest_part(args, results: dict, errors: dict) -> None:
    import django

    django.setup()
    from iiot.testing.mosquitto import broker_settings, running_mosquitto

    rate, n = args.rate, args.devices
    sub_window = 10 if args.quick else 20
    window = 15 if args.quick else 60
    drain = 60 if args.quick else 180
    with running_mosquitto() as broker, broker_settings(broker):
        log(f"broker on {broker.port}; provisioning tenant {TENANT} with {n} devices")
        began = time.monotonic()
        with contextlib.redirect_stdout(io.StringIO()):  # the tenant's migrations
            devices, probe, probe_id, metric_id = provision(n)
        log(f"provisioned in {time.monotonic() - began:.1f} s")

        phases = set(args.ingest_phases.split(","))
        if "sub" in phases:
            try:
                log(f"(a) mosquitto_sub baseline: {rate:.0f} msg/s offered for {sub_window} s")
                results.update(bench_mosquitto_sub(broker, devices, rate, sub_window))
            except Exception as exc:  # noqa: BLE001
                errors["mosquitto_sub"] = repr(exc)
                traceback.print_exc()

        # INFO, as in production: the per-flush and stats lines (kept in var/bench/ingest.log).
        env = {**os.environ, "LOG_LEVEL": "INFO", "MQTT_URL": broker.url, "MQTT_DEVICE_URL": broker.url,
               "MQTT_ADMIN_USERNAME": broker.admin_username, "MQTT_ADMIN_PASSWORD": broker.admin_password,
               "MQTT_SERVICE_USERNAME": broker.service_username, "MQTT_SERVICE_PASSWORD": broker.service_password}  # fmt: skip
        ingest_log = open(Path(broker.directory) / "ingest.log", "wb")  # noqa: SIM115
        ingest = spawn([PYTHON, "manage.py", "ingest", "--processes", str(args.processes), "--stats-interval", "10"],
                       cwd=ROOT, env=env, stdout=ingest_log, stderr=subprocess.STDOUT)  # fmt: skip
        measured_rate = None
        try:
            wait_for_ingest(broker, probe, probe_id, metric_id)
            log(f"ingest subscribed (pid {ingest.pid}, {args.processes} processes)")

            if "qos1" in phases:
                try:
                    log(f"(b) ingest QoS 1: {rate:.0f} msg/s offered for {window} s")
                    run = bench_ingest(broker, devices, rate, window, drain, qos=1)
                    results["ingest_rss_mb"] = tree_rss_mb(ingest.pid)
                    results["ingest_points_per_s"] = round(run["stored"] / window)
                    results["ingest_msgs_per_s"] = round(run["stored"] / 4 / window)
                    measured_rate = run["stored"] / 4 / window
                    run["load"].join(drain + 60)
                    stats = run["load"].stats
                    final = wait_until_stable(TENANT, run["before"] + stats.acked * 4, drain) - run["before"]
                    results["points_lost"] = stats.acked * 4 - final
                    results["qos1_offered_msgs"] = stats.sent
                    results["qos1_acked_msgs"] = stats.acked
                    results["qos1_stored_points"] = final
                    if stats.connect_failures:
                        results["qos1_connect_failures"] = stats.connect_failures
                except Exception as exc:  # noqa: BLE001
                    errors["ingest_qos1"] = repr(exc)
                    traceback.print_exc()

            if "latency" in phases:
                try:
                    latency_rate = 0.8 * (measured_rate or rate / 2)
                    latency_s = 10 if args.quick else 30
                    truncate_points(TENANT, settle=True)
                    log(f"(c) latency at {latency_rate:.0f} msg/s for {latency_s} s")
                    results.update(bench_latency(broker, devices, probe, probe_id, metric_id, latency_rate, latency_s))
                except Exception as exc:  # noqa: BLE001
                    errors["latency"] = repr(exc)
                    traceback.print_exc()

            if "qos0" in phases:
                try:
                    wait_until_stable(TENANT, 1 << 62, 60)
                    truncate_points(TENANT)
                    log(f"(d) ingest QoS 0: {rate:.0f} msg/s offered for {window} s")
                    run = bench_ingest(broker, devices, rate, window, drain, qos=0)
                    results["ingest_qos0_points_per_s"] = round(run["stored"] / window)
                    run["load"].join(120)
                    results["qos0_offered_msgs"] = run["load"].stats.sent
                except Exception as exc:  # noqa: BLE001
                    errors["ingest_qos0"] = repr(exc)
                    traceback.print_exc()
        finally:
            stop(ingest, timeout=15)
            ingest_log.close()
            kept = ROOT / "var" / "bench" / "ingest.log"  # its stats lines (every 10 s), for diagnosis
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(broker.directory) / "ingest.log", kept)
            tail = (Path(broker.directory) / "ingest.log").read_text(errors="replace").strip().splitlines()[-15:]
            if tail and (errors or ingest.returncode not in (0, -signal.SIGTERM)):
                log(f"ingest exited with {ingest.returncode}; its log's tail:\n  " + "\n  ".join(tail))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter windows (about 2 minutes)")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=60000.0, help="offered messages/s (4 points each)")
    parser.add_argument("--processes", type=int, default=2, help="ingest worker processes")
    parser.add_argument("--skip-storage", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument(
        "--ingest-phases", default="sub,qos1,latency,qos0",
        help="ingest phases to run: sub (mosquitto_sub baseline), qos1, latency, qos0 (for diagnosis; "
             "latency at 80 %% of qos1's measured rate, or of half the offered rate without qos1)",
    )  # fmt: skip
    parser.add_argument(
        "--parts", default="rules,ws,analytics,pages",
        help="later parts, each in a database of its own: rules (bench/rules_bench.py), ws (bench/ws_bench.py), "
             "analytics (bench/analytics_bench.py), pages (bench/pages_bench.py); empty for none",
    )  # fmt: skip
    args = parser.parse_args()

    os.environ.update(BENCH_ENV)
    os.chdir(ROOT)
    results: dict = {}
    errors: dict = {}
    began = time.monotonic()
    try:
        admin_execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        admin_execute(f"CREATE DATABASE {DB_NAME}")
        log("migrating the shared schema")
        run_step([PYTHON, "manage.py", "migrate_schemas", "--shared"], timeout=300)

        if not args.skip_storage:
            try:
                log("storage figures (scripts/bench_storage.py)")
                results.update(bench_storage(args.quick))
            except Exception as exc:  # noqa: BLE001
                errors["storage"] = repr(exc)
                traceback.print_exc()

        if not args.skip_ingest:
            try:
                ingest_part(args, results, errors)
            except Exception as exc:  # noqa: BLE001
                errors["ingest"] = repr(exc)
                traceback.print_exc()
    except Exception as exc:  # noqa: BLE001
        errors["setup"] = repr(exc)
        traceback.print_exc()
    finally:
        for process in STARTED:
            stop(process, timeout=5)
        STARTED.clear()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: BLE001, S110
            pass
        try:
            admin_execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        except Exception as exc:  # noqa: BLE001
            errors["cleanup"] = repr(exc)

    # The later parts run in child processes with databases of their own.
    for part in filter(None, (name.strip() for name in args.parts.split(","))):
        module = PARTS.get(part)
        if module is None:
            errors[part] = f"unknown part {part!r} (known: {', '.join(PARTS)})"
            continue
        log(f"{part} figures (bench/{module}.py)")
        try:
            results.update(importlib.import_module(f"bench.{module}").run(args.quick))
        except Exception as exc:  # noqa: BLE001
            errors[part] = repr(exc)
            traceback.print_exc()

    msgs, sub = results.get("ingest_msgs_per_s"), results.get("mosquitto_sub_msgs_per_s")
    results["ingest_vs_mosquitto_sub"] = round(msgs / sub, 3) if msgs is not None and sub else None
    figures = {key: results.get(key) for key in KEYS}
    figures.update({key: value for key, value in results.items() if key not in figures})
    if errors:
        figures["errors"] = errors
    figures["bench_seconds"] = round(time.monotonic() - began)

    print()
    print(f"{'figure':32} value")
    for key, value in figures.items():
        if key != "errors":
            print(f"{key:32} {value if value is not None else 'null (failed)'}")
    for part, error in errors.items():
        print(f"error in {part}: {error}")
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
