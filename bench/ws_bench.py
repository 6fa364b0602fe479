"""WebSocket fan-out benchmark: 1,000 concurrent clients on ONE uvicorn web process, each
subscribed to one device, while bench/loadgen.py offers 5,000 MQTT messages/s (4 metrics each, so
each device sends 5 messages a second) through the real ingest (`manage.py ingest`), whose
live-updates hook publishes to Redis.

    .venv/bin/python bench/ws_bench.py            # ~1.5 minutes, last line one JSON object
    .venv/bin/python bench/ws_bench.py --quick    # shorter measuring window
    .venv/bin/python bench/ws_bench.py --rate 5   # clients ask for 5 frames/s instead of 10

    from bench import ws_bench; ws_bench.run(quick=True) -> dict

Figures:
    ws_clients          clients connected and subscribed when the load started
    ws_latency_p50_ms   publish-to-client latency of the values frames carry: for each device
    ws_latency_p99_ms   update in a telemetry frame, the client's receive time minus the timestamp
                        of the newest value it carries (the loadgen stamps each message with its
                        send time just before writing it). Values replaced before a frame went out
                        (coalescing) are not counted: the frame carries the newest.
    ws_clients_dropped  clients whose connection closed during the run (ws_drop_reasons: why)
    web_rss_mb          RSS of the web process (with its children) at the end of the window
Diagnostics: ws_client_rate (frames/s each client asked for), ws_ingest_lag_*_ms (how old the
newest value of a pub/sub message is when the ingest publishes it), ws_pubsub_delivery_*_ms
(publish to arrival at a plain subscriber in the clients' process), clients_loop_lag_p99_ms (how
late the clients' event loop runs: if high, the latencies are the clients' own), *_cpu_pct (share
of one core over the window).

What the latency includes, and what it does not:
- Each client subscribes with `rate` 10 (LIVE_MAX_RATE; --rate to change). A device sending 5
  values a second to a client that accepts 5 frames a second (the default rate) sits exactly at
  the coalescing limit: the frame pacer then holds values back by up to one interval (200 ms) by
  design, and the figure measures the rate limit, not the pipeline. Run with --rate 5 to see that.
- The load generator shares this 2-core machine (~70% of a core) and runs at a lower priority
  (nice LOADGEN_NICE) so that the ingest, the web process and the clients get the CPU when they
  need it, as devices on their own hardware would; ws_offered_msgs_per_s shows that it still keeps
  the rate. Its scheduling delays before stamping a message are outside the latency.
- The clients (websockets on uvloop, frames parsed with orjson) run in a process of their own; they
  would otherwise compete with the load generator for one core and for the GIL.

Everything runs on 127.0.0.1 in a database of its own (iiot_wsbench, dropped before and after),
with a broker of its own; the work is done in a child process with its own Django settings, so
`run()` can be called from bench/run.py whatever that process has configured. WS_BENCH_LOGS=<dir>
keeps the web and ingest logs there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "iiot_wsbench"
PYTHON = sys.executable
CLIENTS = 1000
RATE = 5000.0
LOADGEN_NICE = 10
RATE_PER_CLIENT = 10.0  # frames/s asked by each client (LIVE_MAX_RATE): see the module docstring
KEYS = ("ws_clients", "ws_latency_p50_ms", "ws_latency_p99_ms", "ws_clients_dropped", "web_rss_mb")


def log(message: str) -> None:
    print(f"[ws-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def bench_env() -> dict[str, str]:
    from bench.run import BENCH_ENV

    env = dict(BENCH_ENV)
    env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
    env.pop("CHANNEL_LAYER_URL", None)
    return env


def run(quick: bool = False, rate: float | None = None) -> dict:
    """Run the benchmark in a child process; returns the figures (None for a failed part, plus
    `errors` when something failed)."""
    env = {**os.environ, **bench_env()}
    env.pop("CHANNEL_LAYER_URL", None)
    env.pop("LIVE_REDIS_URL", None)
    args = [PYTHON, str(Path(__file__).resolve()), "--child"] + (["--quick"] if quick else [])
    args += ["--rate", str(rate or RATE_PER_CLIENT)]
    try:
        completed = subprocess.run(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, timeout=300, check=False)
        lines = completed.stdout.decode(errors="replace").strip().splitlines()
        return json.loads(lines[-1]) if lines else {key: None for key in KEYS} | {"errors": {"ws": "no output"}}
    except Exception as exc:  # noqa: BLE001 - reported in the figures
        return {key: None for key in KEYS} | {"errors": {"ws": repr(exc)}}


# --- the clients' process -------------------------------------------------------------------------


async def clients_main(url: str, host: str, token: str, uids: list[str], seconds: float, warmup: float, rate: float) -> None:
    import gc

    import orjson
    import websockets

    latencies: list[float] = []
    frames = 0
    dropped = 0
    subscribed = 0
    measure_from = 0.0
    done = asyncio.Event()
    reasons: dict[str, int] = {}
    loop_lag: list[float] = []

    async def lag_monitor() -> None:  # how late this process's event loop runs (CPU starvation)
        while not done.is_set():
            began = time.perf_counter()
            await asyncio.sleep(0.01)
            if measure_from and time.time() * 1000 >= measure_from:
                loop_lag.append((time.perf_counter() - began - 0.01) * 1000)

    async def client(uid: str) -> None:
        nonlocal frames, dropped, subscribed
        try:
            async with websockets.connect(url, additional_headers={"Host": host}, subprotocols=["bearer", token],
                                          open_timeout=60, max_queue=None, ping_interval=None) as ws:  # fmt: skip
                await ws.recv()  # welcome
                await ws.send(json.dumps({"type": "subscribe", "devices": [uid], "rate": rate}))
                while (answer := json.loads(await ws.recv())).get("type") == "ping":
                    await ws.send('{"type": "pong"}')
                if answer.get("type") != "subscribed":
                    raise RuntimeError(f"subscribe refused: {answer}")
                subscribed += 1
                while not done.is_set():
                    try:
                        async with asyncio.timeout(1.0):  # no task per frame (unlike wait_for)
                            raw = await ws.recv()
                    except TimeoutError:
                        continue
                    now_ms = time.time() * 1000
                    frame = orjson.loads(raw)
                    kind = frame.get("type")
                    if kind == "telemetry":
                        frames += 1
                        if measure_from and now_ms >= measure_from:
                            for update in frame["updates"]:
                                newest = max(ts for ts, _value in update["values"].values())
                                latencies.append(now_ms - newest)
                    elif kind == "ping":
                        await ws.send('{"type": "pong"}')
        except Exception as exc:  # noqa: BLE001 - counted
            if not done.is_set():
                dropped += 1
                closed = getattr(exc, "rcvd", None)
                reason = f"{closed.code} {closed.reason}" if closed is not None else type(exc).__name__
                reasons[reason] = reasons.get(reason, 0) + 1
                if dropped <= 3:
                    print(f"client {uid} dropped at {time.strftime('%H:%M:%S')}: {exc!r}", file=sys.stderr, flush=True)

    probe = PubSubProbe(tenant_of(host))
    tasks = [asyncio.create_task(lag_monitor())]
    for start in range(0, len(uids), 100):  # connect in waves
        tasks += [asyncio.create_task(client(uid)) for uid in uids[start : start + 100]]
        await asyncio.sleep(0.3)
    deadline = time.monotonic() + 120
    while subscribed + dropped < len(uids) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    # Long-lived objects (modules, connections) out of the collector's sight; the per-frame garbage
    # dies young: no full collection stalls this loop (and the latencies) during the window.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    probe_task = asyncio.create_task(probe.run())
    print(json.dumps({"ready": subscribed, "dropped_at_connect": dropped}), flush=True)
    # The parent starts the load now; values sent during the warm-up are not measured.
    measure_from = time.time() * 1000 + warmup * 1000
    await asyncio.sleep(seconds)
    alive = subscribed - dropped
    done.set()
    probe_task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))] if latencies else None
    print(json.dumps({
        "ws_clients": subscribed,
        "ws_clients_dropped": dropped,
        "ws_clients_alive": alive,
        "ws_frames": frames,
        "ws_latency_samples": len(latencies),
        "ws_latency_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "ws_latency_p99_ms": round(p99, 1) if p99 is not None else None,
        "clients_loop_lag_p99_ms": round(sorted(loop_lag)[int(0.99 * (len(loop_lag) - 1))], 1) if loop_lag else None,
        "ws_drop_reasons": reasons,
        **probe.figures(),
    }), flush=True)  # fmt: skip


# --- the benchmark (child process) ----------------------------------------------------------------


def provision(count: int) -> list:
    """Tenant `bench` with `count` devices and their broker identities, in bulk (creating them one by
    one through the services costs ~0.2 s each, most of the time budget): rows by bulk_create, the
    broker's clients and roles in one dynamic-security session."""
    import secrets

    from django_tenants.utils import schema_context

    from bench import run as bench_run
    from bench.loadgen import Device as LoadDevice
    from devices import broker, services
    from devices.models import Device, DeviceCredential
    from tenants.services import ensure_public_tenant, provision_tenant

    tenant = bench_run.TENANT
    ensure_public_tenant("localhost")
    provision_tenant(actor=None, client=None, slug=tenant, name="WebSocket bench", domain=f"{tenant}.localhost",
                     admin_email=f"admin@{tenant}.example.com", admin_password="Bench-Password-2026!")  # fmt: skip
    loads, commands = [], []
    with schema_context(tenant):
        profile = services.create_profile(actor=None, client=None, name="bench", metrics=[{"name": n} for n in bench_run.METRICS])
        devices = Device.objects.bulk_create(
            Device(uid=f"bench-{number:05d}", name=f"bench {number}", profile=profile) for number in range(count)
        )
        secrets_by_pk = {device.pk: secrets.token_urlsafe(32) for device in devices}
        DeviceCredential.objects.bulk_create(
            DeviceCredential(device=device, secret_hash=services.hash_secret(secrets_by_pk[device.pk]), secret_prefix=secrets_by_pk[device.pk][:6])
            for device in devices
        )
    for device in devices:
        username, role = broker.device_username(tenant, device.uid), broker.device_role_name(tenant, device.uid)
        commands += [
            {"command": "createRole", "rolename": role, "acls": broker.device_role_acls(tenant, device.uid)},
            {"command": "createClient", "username": username, "password": secrets_by_pk[device.pk], "roles": [{"rolename": role}]},
        ]
        loads.append(LoadDevice(uid=device.uid, username=username, password=secrets_by_pk[device.pk],
                                topic=broker.device_topics(tenant, device.uid).telemetry))  # fmt: skip
    with broker.DynsecClient(timeout=120) as dynsec:  # the plugin saves its file after each command
        for start in range(0, len(commands), 100):
            dynsec.execute(commands[start : start + 100])
    return loads


def child(quick: bool, rate: float) -> None:
    from bench import run as bench_run

    window = 25 if quick else 60
    warmup = 5
    results: dict = {}
    errors: dict = {}
    began = time.monotonic()
    os.chdir(ROOT)
    try:
        bench_run.admin_execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        bench_run.admin_execute(f"CREATE DATABASE {DB_NAME}")
        log("migrating the shared schema")
        bench_run.run_step([PYTHON, "manage.py", "migrate_schemas", "--shared"], timeout=300)
        import django

        django.setup()
        from django_tenants.utils import schema_context

        from iiot.testing.mosquitto import broker_settings, running_mosquitto

        with running_mosquitto() as broker, broker_settings(broker):
            import contextlib
            import io

            log(f"provisioning tenant {bench_run.TENANT} with {CLIENTS} devices")
            with contextlib.redirect_stdout(io.StringIO()):
                devices = provision(CLIENTS)
            from accounts.models import User
            from accounts.services import issue_tokens

            with schema_context(bench_run.TENANT):
                token = issue_tokens(User.objects.get(email=f"admin@{bench_run.TENANT}.example.com"))["access"]
            log(f"provisioned in {time.monotonic() - began:.0f} s since start")

            env = {**os.environ, "MQTT_URL": broker.url, "MQTT_DEVICE_URL": broker.url,
                   "MQTT_ADMIN_USERNAME": broker.admin_username, "MQTT_ADMIN_PASSWORD": broker.admin_password,
                   "MQTT_SERVICE_USERNAME": broker.service_username, "MQTT_SERVICE_PASSWORD": broker.service_password}  # fmt: skip
            port = broker_free_port()
            web_log = open(Path(broker.directory) / "web.log", "wb")  # noqa: SIM115
            web = bench_run.spawn([PYTHON, "-m", "uvicorn", "iiot.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                                   "--lifespan", "off", "--no-access-log", "--log-level", "warning"],
                                  cwd=ROOT, env=env, stdout=web_log, stderr=subprocess.STDOUT)  # fmt: skip
            ingest_log = open(Path(broker.directory) / "ingest.log", "wb")  # noqa: SIM115
            ingest = bench_run.spawn([PYTHON, "manage.py", "ingest", "--processes", "1", "--stats-interval", "30"],
                                     cwd=ROOT, env=env, stdout=ingest_log, stderr=subprocess.STDOUT)  # fmt: skip
            try:
                wait_http(port)
                log(f"web on {port} (pid {web.pid}); ingest pid {ingest.pid}; connecting {CLIENTS} clients")
                clients = bench_run.spawn(
                    [PYTHON, str(Path(__file__).resolve()), "--clients", f"ws://127.0.0.1:{port}/ws/v1/live",
                     "--host", f"{bench_run.TENANT}.localhost", "--seconds", str(window + 3), "--warmup", str(warmup),
                     "--rate", str(rate)],
                    cwd=ROOT, env={**env, "WS_BENCH_TOKEN": token}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                )  # fmt: skip
                clients.stdin.write(("\n".join(d.uid for d in devices) + "\n").encode())
                clients.stdin.close()
                ready = json.loads(clients.stdout.readline() or b"{}")
                log(f"clients ready: {ready}; loadgen {RATE:.0f} msg/s for {window} s")
                load = bench_run.LoadRun(devices, broker.host, broker.port, qos=1, duration_s=window, rate=RATE, wait_acks_s=20)
                load.window()
                # The simulator shares this 2-core machine with what it measures (it uses ~70% of a
                # core): at a lower priority it leaves the CPU to the ingest, the web process and the
                # clients when they need it, as devices on their own hardware would. Its messages are
                # stamped just before they are written, so its own scheduling delays stay out of the
                # latency; ws_offered_msgs_per_s shows it still keeps the rate.
                with contextlib.suppress(OSError, AttributeError):
                    os.setpriority(os.PRIO_PROCESS, load.thread.native_id, LOADGEN_NICE)
                watched = {"web": web.pid, "ingest": ingest.pid, "clients": clients.pid, "bench": os.getpid()}
                cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items()}
                time.sleep(window - 2)
                for name, pid in watched.items():  # share of one core over the window
                    results[f"{name}_cpu_pct"] = round(100 * (cpu_seconds(pid) - cpu_before[name]) / (window - 2))
                results["web_rss_mb"] = bench_run.tree_rss_mb(web.pid)
                results["ingest_rss_mb_during_ws"] = bench_run.tree_rss_mb(ingest.pid)
                load.join(90)
                out = clients.stdout.read().decode(errors="replace").strip().splitlines()
                clients.wait(30)
                if not out:
                    raise RuntimeError("the clients' process printed no result")
                results.update(json.loads(out[-1]))
                results["ws_client_rate"] = rate
                results["ws_offered_msgs"] = load.stats.sent
                results["ws_offered_msgs_per_s"] = round(load.stats.sent / window)
            finally:
                bench_run.stop(web)
                bench_run.stop(ingest)
                web_log.close()
                ingest_log.close()
                if os.environ.get("WS_BENCH_LOGS"):  # a folder to keep the web and ingest logs in
                    import shutil

                    for name in ("web.log", "ingest.log"):
                        shutil.copy(Path(broker.directory) / name, Path(os.environ["WS_BENCH_LOGS"]) / name)
                if errors or not results.get("ws_clients"):
                    for name in ("web.log", "ingest.log"):
                        tail = (Path(broker.directory) / name).read_text(errors="replace").strip().splitlines()[-10:]
                        log(f"{name} tail:\n  " + "\n  ".join(tail))
    except Exception as exc:  # noqa: BLE001
        errors["ws"] = repr(exc)
        traceback.print_exc(file=sys.stderr)
    finally:
        for process in bench_run.STARTED:
            bench_run.stop(process, timeout=5)
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: BLE001, S110
            pass
        try:
            bench_run.admin_execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        except Exception as exc:  # noqa: BLE001
            errors["cleanup"] = repr(exc)
    figures = {key: results.get(key) for key in KEYS}
    figures.update({key: value for key, value in results.items() if key not in figures})
    if errors:
        figures["errors"] = errors
    figures["ws_bench_seconds"] = round(time.monotonic() - began)
    print(json.dumps(figures), flush=True)


def tenant_of(host: str) -> str:
    return host.split(".", 1)[0]


class PubSubProbe:
    """Diagnostics, in the clients' process (the bench's own process runs the load generator, whose
    thread holds the GIL most of the time): a plain Redis subscriber on the tenant's live channel
    measures how old the newest value of each message is when the ingest publishes it (ingest lag)
    and how long the message takes to arrive (pub/sub delivery, as a web process would see it)."""

    def __init__(self, schema: str) -> None:
        import django

        django.setup()
        from django.conf import settings

        from iiot.live.streaming import live_channel

        self.url, self.channel = settings.LIVE_REDIS_URL, live_channel(schema)
        self.ingest_lag: list[float] = []
        self.delivery: list[float] = []

    async def run(self) -> None:
        import orjson
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.channel)
        try:
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                now = time.time() * 1000
                body = orjson.loads(message["data"])
                self.delivery.append(now - body["sent"])
                newest = max(ts for metrics in body["devices"].values() for ts, _value in metrics.values())
                self.ingest_lag.append(body["sent"] - newest)
        finally:
            await pubsub.aclose()
            await client.aclose()

    def figures(self) -> dict:
        out = {}
        for name, values in (("ingest_lag", self.ingest_lag), ("pubsub_delivery", self.delivery)):
            if values:
                values.sort()
                out[f"ws_{name}_p50_ms"] = round(statistics.median(values), 1)
                out[f"ws_{name}_p99_ms"] = round(values[int(0.99 * (len(values) - 1))], 1)
        return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (no children), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def broker_free_port() -> int:
    from iiot.testing.mosquitto import free_port

    return free_port()


def wait_http(port: int, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", headers={"Host": "localhost"})
            if urllib.request.urlopen(request, timeout=2).status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the web process did not answer /healthz")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clients", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=30, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=RATE_PER_CLIENT,
                        help=f"telemetry frames/s each client subscribes with (default {RATE_PER_CLIENT:g})")  # fmt: skip
    args = parser.parse_args()
    if args.clients:
        uids = [line.strip() for line in sys.stdin if line.strip()]
        import uvloop

        uvloop.run(clients_main(args.clients, args.host, os.environ["WS_BENCH_TOKEN"], uids, args.seconds, args.warmup, args.rate))
    elif args.child:
        child(args.quick, args.rate)
    else:
        figures = run(args.quick, args.rate)
        for key, value in figures.items():
            if key != "errors":
                print(f"{key:32} {value if value is not None else 'null (failed)'}")
        for part, error in (figures.get("errors") or {}).items():
            print(f"error in {part}: {error}")
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
