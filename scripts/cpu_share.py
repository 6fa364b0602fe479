"""CPU share per process group (PostgreSQL, Mosquitto, ingest, bench/load generator, Redis, other)
over N seconds, read from /proc: where a benchmark's two cores go.

    python3 scripts/cpu_share.py 30      # e.g. during `make bench`'s ingest phase (b)

Percentages are of one core (two saturated cores add up to about 200 %).
"""

from __future__ import annotations

import collections
import os
import sys
import time

GROUPS = (  # first match wins
    ("postgres", "postgres"),
    ("mosquitto_sub", "mosquitto_sub"),
    ("mosquitto", "mosquitto"),
    ("ingest", "ingest"),
    ("bench", "bench/loadgen"),
    ("redis", "redis"),
)


def snapshot() -> dict[str, tuple[int, str]]:
    """pid -> (user + system clock ticks, command line)."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as stat_file:
                stat = stat_file.read()
            with open(f"/proc/{pid}/cmdline") as cmd_file:
                command = cmd_file.read().replace("\0", " ")[:160]
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[pid] = (int(fields[11]) + int(fields[12]), command or stat.split("(", 1)[1].split(")", 1)[0])
    return out


def group_of(command: str) -> str:
    return next((name for needle, name in GROUPS if needle in command), "other: " + command[:40])


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    ticks = os.sysconf("SC_CLK_TCK")
    before = snapshot()
    time.sleep(seconds)
    shares: collections.Counter[str] = collections.Counter()
    for pid, (used, command) in snapshot().items():
        shares[group_of(command)] += (used - before.get(pid, (0, ""))[0]) / ticks / seconds * 100
    for name, share in shares.most_common(12):
        if share > 0.5:
            print(f"{name:40} {share:6.1f} %")


if __name__ == "__main__":
    main()
