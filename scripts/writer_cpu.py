"""PostgreSQL CPU per stored point of TelemetryWriter.write: a figure that survives a noisy machine.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/iiot_bench_storage \
        .venv/bin/python scripts/writer_cpu.py [--tenant benchstore] [--batch 24000] [--batches 14]

Wall-clock rates moved by 20-50 % within an hour on the bench machines while nothing else ran;
the CPU time of the writer's backend (/proc/PID/schedstat, nanoseconds on the CPU) per point moves far
less, so compare two versions of the write path with this, alternating runs. Uses the tenant of
scripts/bench_storage.py (run that once first) and a fresh hour after 2200 per run (1,000 devices x
4 metrics, points 50 ms apart per series, like the batches the ingest writes at 80 % load). The
first two batches are left out (partition creation, cold caches). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iiot.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenant", default="benchstore")
    parser.add_argument("--batch", type=int, default=24_000, help="points per batch (multiple of 4,000)")
    parser.add_argument("--batches", type=int, default=14)
    args = parser.parse_args()

    import django

    django.setup()
    from telemetry.storage import Point, TelemetryWriter

    per_series = max(1, args.batch // 4000)
    devices = [3_000_000 + index for index in range(1000)]
    # An hour of its own per run (runs a second apart differ), after any watermark: open hours, as live.
    base = datetime(2200, 1, 1, tzinfo=UTC) + timedelta(hours=int(time.time()) % (24 * 365 * 50))
    with TelemetryWriter() as writer:
        writer.ensure_partitions(args.tenant, [base.date()])
        conn = writer._connection()
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.commit()

        def backend_cpu() -> float:
            # schedstat's first field: nanoseconds on the CPU (stat's utime + stime are 10 ms ticks,
            # too coarse for batches of about 100 ms)
            return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9

        walls, cpus, points = [], [], 0
        for index in range(args.batches):
            start = base + timedelta(seconds=index * per_series * 0.05)
            batch = [
                Point(device, metric, start + timedelta(milliseconds=50 * step + device % 50), 20.0 + device % 17 + step * 0.1)
                for step in range(per_series) for device in devices for metric in (1, 2, 3, 4)
            ]  # fmt: skip
            cpu_before, began = backend_cpu(), time.perf_counter()
            result = writer.write(args.tenant, batch)
            if index >= 2:
                walls.append(time.perf_counter() - began)
                cpus.append(backend_cpu() - cpu_before)
                points += result.inserted
    print(json.dumps({
        "batch_points": per_series * 4000,
        "batches_measured": len(walls),
        "backend_cpu_us_per_point": round(sum(cpus) / points * 1e6, 2),
        "writer_points_per_s_median": round(per_series * 4000 / statistics.median(walls)),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
