"""Rule engine figures for `make bench`: alert latency and ingest throughput with rules.

    .venv/bin/python bench/rules_bench.py            # about 2-3 minutes
    .venv/bin/python bench/rules_bench.py --quick    # under a minute (fewer devices, shorter windows)

In a database of its own (iiot_bench_rules, dropped before and after), a broker configured as
shipped and tenant `bench` with N devices (1,000; quick: 300; 250 / 100 of them publish: the
others exist so that the rules span N devices without N broker clients), each with one enabled threshold
rule on its temperature (never met by the load: values 20-30), plus one rule on a probe device
(temperature > 100). Then, with `manage.py ingest` (2 processes):
(a) every rule disabled (the index empty): points stored in a window at a high offered rate;
(b) the same with the rules enabled -> ingest_with_rules_vs_without = (b) / (a); windows run
    (a), (b), (b), (a) (the second window of a pair runs slower) and the medians are compared;
(c) for 45 s (quick: 8) at 10,000 msg/s (quick: 5,000; at most 80 % of (b)'s rate) of background load the probe publishes every 100 ms,
    150 (fires: a new alert) then 20 four times (clears it); a poller reads the newest alert of
    the probe's rule -> publish-to-alert-stored alert_latency_p50_ms / alert_latency_p99_ms;
(d) one statistical rule per device added: one windowed evaluation of the tenant -> windowed_eval_ms
    (must stay well under RULES_WINDOW_INTERVAL_S).
Reuses bench/run.py's and bench/loadgen.py's helpers (imported, not copied). `run(quick)` runs
all this in a child process (its own Django settings) and returns the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "iiot_bench_rules"
# Probe firings before the latency window (rules just re-enabled), each waited for until it gives its alert.
WARM_UP_FIRINGS = 3
KEYS = ("alert_latency_p50_ms", "alert_latency_p99_ms", "ingest_with_rules_vs_without")


def run(quick: bool) -> dict:
    """The figures as a dict (keys KEYS, plus details); runs the bench in a child process."""
    args = [sys.executable, str(Path(__file__).resolve()), "--child"] + (["--quick"] if quick else [])
    try:
        done = subprocess.run(args, cwd=ROOT, capture_output=True, timeout=240 if quick else 420, check=False)
    except subprocess.TimeoutExpired:
        return {key: None for key in KEYS} | {"errors": {"rules": "timed out"}}
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {key: None for key in KEYS} | {"errors": {"rules": done.stderr.decode(errors="replace")[-1500:]}}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def _create_rules(probe_id: int, total_devices: int) -> int:
    from django_tenants.utils import schema_context

    from devices.models import Device
    from rules.models import Rule

    with schema_context("bench"):
        # Devices beyond the publishing ones (no credential needed: they never publish) so that the
        # rules span `total_devices` devices without provisioning broker clients for all of them.
        profile_id = Device.objects.values_list("profile_id", flat=True).first()
        have = Device.objects.count()
        Device.objects.bulk_create([Device(uid=f"bench-idle-{n:05d}", name=f"idle {n}", profile_id=profile_id)
                                    for n in range(max(0, total_devices - have))])  # fmt: skip
        rules = [
            Rule(name=f"hot {uid}", type="threshold", severity="major", target_kind="device", target_device_id=pk,
                 condition={"metric": "temperature", "op": "gt", "value": 1000.0, "clear_value": None, "for_s": 0},
                 actions={"raise_alert": True, "channel_ids": [], "command": None})
            for pk, uid in Device.objects.exclude(pk=probe_id).values_list("pk", "uid")
        ]  # fmt: skip
        probe_rule = Rule(name="probe", type="threshold", severity="critical", target_kind="device", target_device_id=probe_id,
                          condition={"metric": "temperature", "op": "gt", "value": 100.0, "clear_value": None, "for_s": 0},
                          actions={"raise_alert": True, "channel_ids": [], "command": None})  # fmt: skip
        probe_rule.full_clean()
        Rule.objects.bulk_create([*rules, probe_rule])
        return Rule.objects.get(name="probe").pk


def _child(quick: bool) -> dict:
    from bench import run as bench_run

    env = {**bench_run.BENCH_ENV, "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"}
    os.environ.update(env)
    bench_run.BENCH_ENV.update(env)  # count_points() and friends read the database URL from there
    os.chdir(ROOT)
    bench_run.admin_execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    bench_run.admin_execute(f"CREATE DATABASE {DB_NAME}")
    results: dict = {}
    errors: dict = {}
    try:
        bench_run.run_step([bench_run.PYTHON, "manage.py", "migrate_schemas", "--shared"], timeout=300)
        import django

        django.setup()
        _measure(quick, results, errors)
    except Exception as exc:  # noqa: BLE001
        errors["setup"] = repr(exc)
        traceback.print_exc()
    finally:
        for process in bench_run.STARTED:
            bench_run.stop(process, timeout=5)
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: BLE001, S110
            pass
        bench_run.admin_execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    if errors:
        results["errors"] = errors
    return results


def _start_ingest(broker, log_path: Path, rules_enabled: bool):
    from bench import run as bench_run

    env = {**os.environ, "MQTT_URL": broker.url, "MQTT_DEVICE_URL": broker.url,
           "MQTT_ADMIN_USERNAME": broker.admin_username, "MQTT_ADMIN_PASSWORD": broker.admin_password,
           "MQTT_SERVICE_USERNAME": broker.service_username, "MQTT_SERVICE_PASSWORD": broker.service_password,
           "RULES_STREAMING_ENABLED": "1" if rules_enabled else "0"}  # fmt: skip
    log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it
    process = bench_run.spawn([bench_run.PYTHON, "manage.py", "ingest", "--processes", "2", "--stats-interval", "10"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    log.close()
    return process


def _set_rules_enabled(enabled: bool) -> None:
    """Enable or disable every rule of the tenant and tell the ingest processes (as rules.services
    does after a commit); their indexes reload within a moment."""
    from django_tenants.utils import schema_context

    from rules.models import Rule
    from rules.services import rules_channel
    from telemetry.storage import redis_client

    with schema_context("bench"):
        Rule.objects.update(enabled=enabled)
    redis_client().publish(rules_channel("bench"), b"1")
    time.sleep(1.5)


def _throughput(broker, devices, rate: float, window: float) -> float:
    from bench import run as bench_run

    measured = bench_run.bench_ingest(broker, devices, rate, window, 30, qos=1)
    measured["load"].join(120)
    bench_run.wait_until_stable("bench", measured["before"] + measured["load"].stats.acked * 4, 60)
    return measured["stored"] / window


def _measure(quick: bool, results: dict, errors: dict) -> None:
    from bench import run as bench_run
    from iiot.testing.mosquitto import broker_settings, running_mosquitto

    n = 300 if quick else 1000  # devices, one rule each
    publishers = 100 if quick else 250  # of which publish (the load spreads over these)
    window = 4 if quick else 10
    rounds = 2
    rate = 30000.0
    latency_rate = 5000.0 if quick else 10000.0
    latency_s = 8 if quick else 45  # two firings a second: about 90 samples for the p99
    with running_mosquitto() as broker, broker_settings(broker):
        devices, probe, probe_id, metric_id = bench_run.provision(publishers - 1)
        rule_id = _create_rules(probe_id, n)
        results["publishing_devices"] = publishers
        results["rules"] = n
        log_path = Path(broker.directory) / "ingest.log"
        ingest = _start_ingest(broker, log_path, rules_enabled=True)
        try:
            bench_run.wait_for_ingest(broker, probe, probe_id, metric_id)
            # The same ingest processes, windows alternating without and with the rules (a busy
            # machine drifts; alternating and taking medians keeps the comparison fair).
            without, with_rules = [], []
            for number in range(rounds):
                order = ((False, without), (True, with_rules))
                # A window measured right after another one runs slower (the store is still busy):
                # the order alternates between rounds so that this falls on both sides equally.
                for enabled, into in order if number % 2 == 0 else order[::-1]:
                    _set_rules_enabled(enabled)
                    into.append(_throughput(broker, devices, rate, window))
            _set_rules_enabled(True)
            results["ingest_points_per_s_without_rules"] = round(statistics.median(without))
            results["ingest_points_per_s_with_rules"] = round(statistics.median(with_rules))
            results["ingest_with_rules_vs_without"] = round(statistics.median(with_rules) / statistics.median(without), 3)
            # Background load for the latency: the target rate, or 80 % of what the ingest just
            # sustained when this machine cannot take it (latency of a backlog says nothing).
            background = min(latency_rate, 0.8 * statistics.median(with_rules) / 4)
            results.update(_latency(broker, devices, probe, rule_id, background, latency_s))
            results.update(_windowed(probe_id))
        except Exception as exc:  # noqa: BLE001
            errors["rules"] = repr(exc)
            traceback.print_exc()
            tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
            print("ingest log tail:\n  " + "\n  ".join(tail), file=sys.stderr)
        finally:
            bench_run.stop(ingest, timeout=15)
            kept = ROOT / "var" / "bench" / "rules-ingest.log"  # for diagnosis, as bench/run.py keeps ingest.log
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_path, kept)


def _windowed(probe_id: int) -> dict:
    """One statistical rule per device (avg over 60 s) on top: time of one windowed evaluation of
    the tenant (one SQL statement over the points the load just stored), median of 3."""
    from django_tenants.utils import schema_context

    from devices.models import Device
    from rules import services
    from rules.models import Rule

    with schema_context("bench"):
        Rule.objects.bulk_create([
            Rule(name=f"avg {pk}", type="statistical", severity="minor", target_kind="device", target_device_id=pk,
                 condition={"metric": "temperature", "window_s": 60, "aggregate": "avg", "percentile": None, "op": "gt",
                            "value": 1000.0, "clear_value": None, "min_points": 1},
                 actions={"raise_alert": True, "channel_ids": [], "command": None})
            for pk in Device.objects.values_list("pk", flat=True)
        ])  # fmt: skip
    timings, series = [], 0
    for _ in range(3):
        run = services.evaluate_windowed_rules(schema="bench")
        timings.append(run.seconds * 1000)
        series = run.series
    return {"windowed_eval_ms": round(statistics.median(timings), 1), "windowed_series": series}


def _latency(broker, devices, probe, rule_id: int, rate: float, duration: float) -> dict:
    import psycopg

    from bench import loadgen
    from bench import run as bench_run

    class AlternatingProber(bench_run.Prober):
        """The probe device, publishing temperature 150 (fires) then 20 (clears) four times, every 100 ms."""

        sent = 0

        def publish(self) -> int:
            try:
                while self.sock.recv(65536):  # drain PUBACKs
                    pass
            except BlockingIOError:
                pass
            self.hot = self.sent % 5 == 0  # hot, then cold four times: every ingest process catches up
            self.sent += 1
            ts = max(int(time.time() * 1000), self.last_ts + 1)
            self.last_ts = ts
            self.packet_id = self.packet_id % 65535 + 1
            payload = b'{"ts":%d,"values":{"temperature":%d}}' % (ts, 150 if self.hot else 20)
            self.sock.setblocking(True)
            self.sock.sendall(loadgen.publish_packet(loadgen._utf8(self.device.topic), payload, 1, self.packet_id))
            self.sock.setblocking(False)
            return ts

    url = os.environ["DATABASE_URL"].replace("postgres://", "postgresql://")
    # Warm-up, not measured: the rules were just enabled again after the throughput rounds, and each
    # ingest process reloads its index in a thread while it may still drain those rounds' backlog.
    # A firing sent before its process has the rules is evaluated against none: the missed firing
    # of some runs (the first one, with no alert at all). Wait until firings give alerts.
    with AlternatingProber(broker, probe) as prober, psycopg.connect(url, autocommit=True) as conn:
        for _cycle in range(WARM_UP_FIRINGS):
            ts = prober.publish()
            deadline = time.monotonic() + 30
            while not conn.execute(
                "SELECT 1 FROM bench.alerting_alert WHERE rule_id = %s AND first_seen_at = to_timestamp(%s / 1000.0)", (rule_id, ts)
            ).fetchone():
                if time.monotonic() > deadline:
                    raise RuntimeError("warm-up: the probe's firing gave no alert within 30 s")
                time.sleep(0.01)
            for _cold in range(4):
                time.sleep(0.1)
                prober.publish()

    load = bench_run.LoadRun(devices, broker.host, broker.port, qos=1, duration_s=duration + 2, rate=rate, wait_acks_s=30)
    start = load.window()
    pending: dict[int, float] = {}
    firings: dict[int, int] = {}  # ts -> its number in the run (0: the first)
    latencies: list[float] = []
    lock = threading.Lock()
    publishing = threading.Event()
    publishing.set()

    def poller() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            give_up = None
            while True:
                with lock:
                    waiting = bool(pending)
                if not publishing.is_set():
                    give_up = give_up or time.perf_counter() + 5.0
                    if not waiting or time.perf_counter() > give_up:
                        return
                rows = conn.execute(
                    "SELECT (extract(epoch FROM first_seen_at) * 1000)::bigint FROM bench.alerting_alert WHERE rule_id = %s ORDER BY id DESC LIMIT 20",
                    (rule_id,),
                ).fetchall()
                now = time.perf_counter()
                with lock:
                    for (ts_ms,) in rows:
                        sent = pending.pop(int(ts_ms), None)
                        if sent is not None:
                            latencies.append((now - sent) * 1000)
                time.sleep(0.001)

    thread = threading.Thread(target=poller, daemon=True)
    thread.start()
    try:
        with AlternatingProber(broker, probe) as prober:
            tick = start + 1.0
            while tick < start + 1.0 + duration:
                bench_run.sleep_until(tick)
                sent_at = time.perf_counter()
                ts = prober.publish()
                if prober.hot:
                    with lock:
                        pending[ts] = sent_at
                        firings[ts] = len(firings)
                tick += 0.1
            publishing.clear()
            thread.join(10)
    finally:
        publishing.clear()
    load.join(120)
    if not latencies:
        raise RuntimeError("no probe firing reached the alerts table")
    # Where the time goes: publish -> the alert's transaction began (created_at is now() of that
    # transaction), i.e. broker, ingest, evaluation and the action queue; the rest is the
    # transaction, its commit and the poller.
    with psycopg.connect(url, autocommit=True) as conn:
        begun = [row[0] for row in conn.execute(
            "SELECT extract(epoch FROM created_at - first_seen_at) * 1000 FROM bench.alerting_alert WHERE rule_id = %s",
            (rule_id,),
        ).fetchall()]  # fmt: skip
        # A missed firing is not in the percentiles: say what became of it (the alert its point
        # landed in, if any: a firing folded into an alert still open from the previous one).
        missed = []
        for ts_ms in sorted(pending):
            row = conn.execute(
                """SELECT (extract(epoch FROM first_seen_at) * 1000)::bigint, (extract(epoch FROM last_seen_at) * 1000)::bigint,
                          count, state, (extract(epoch FROM resolved_at) * 1000)::bigint
                   FROM bench.alerting_alert WHERE rule_id = %s AND first_seen_at <= to_timestamp(%s / 1000.0)
                   ORDER BY first_seen_at DESC LIMIT 1""",
                (rule_id, ts_ms),
            ).fetchone()
            missed.append({"ts_ms": ts_ms, "firing": firings[ts_ms], "alert": None if row is None else dict(zip(
                ("first_seen_ms", "last_seen_ms", "count", "state", "resolved_ms"), row, strict=True))})  # fmt: skip
    return {
        "alert_begun_p50_ms": round(float(statistics.median(begun)), 1),
        "alert_begun_p99_ms": round(float(_percentile(begun, 0.99)), 1),
        "alert_latency_p50_ms": round(statistics.median(latencies), 1),
        "alert_latency_p99_ms": round(_percentile(latencies, 0.99), 1),
        "alert_latency_samples": len(latencies),
        "alert_latency_missed": len(pending),
        "alert_latency_missed_detail": missed,
        "alert_latency_background_msgs_per_s": rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    began = time.monotonic()
    if args.child:
        figures = _child(args.quick)
    else:
        figures = run(args.quick)
    figures = {key: figures.get(key) for key in KEYS} | {key: value for key, value in figures.items() if key not in KEYS}
    figures["rules_bench_seconds"] = round(time.monotonic() - began)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
