"""Run every benchmark of issue 6 in turn, each in its own process, and print its table.

One process per benchmark keeps each one's memory and CPU figures its own. The defaults
take two minutes on a quiet 2-core machine (six on a loaded one), most of it benchmark 6
at 100,000 tasks (the simulator serves its first poll's 105,000 rows); 6b, the old
every-poll full listing, stops at 10,000 tasks. --full runs every script at its own
defaults; --quick shrinks every size (about a minute; the figures are then not the
issue's).

    .venv/bin/python bench/run_all.py [--full | --quick] [--only ingest,poll_scaling]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS: list[tuple[str, str, list[str], list[str]]] = [
    # (script, what it measures, default arguments, --quick arguments); --full: none
    ("metrics_endpoint", "1. /metrics at large cardinality", [], ["--models", "20"]),
    ("ingest", "2. ingest of a 20,000-task window", [], ["--tasks", "5000"]),
    ("requests_per_poll", "3. API requests per poll, idle 5,000-task window", [], []),
    (
        "memory_startup",
        "4. memory and 5. start-up with a 100,000-run ledger",
        [],
        ["--runs", "20000", "--starts", "1", "--old-runs", "60000"],
    ),
    (
        "poll_scaling",
        "6. poll CPU at 1,000 / 10,000 / 100,000 tasks, 1% changed",
        ["--sizes", "1000,10000,100000", "--polls", "6"],
        ["--sizes", "1000,5000", "--polls", "5"],
    ),
    (
        "poll_scaling",
        "6b. the same with FULL_LIST_INTERVAL=0 (every poll lists the whole window)",
        ["--sizes", "1000,10000", "--full-list-interval", "0", "--polls", "2"],
        ["--sizes", "1000,5000", "--full-list-interval", "0", "--polls", "1"],
    ),
    (
        "server_load",
        "7. the HTTP server: 200 concurrent scrapes, 500 slow connections, a header flood",
        [],
        ["--scrapers", "50", "--slow", "100", "--seconds", "4", "--flood", "10"],
    ),
    ("shutdown", "8. time from SIGTERM to exit while the API hangs", [], []),
    ("sweep_cost", "9. pages a sweep costs, by tasks of history", [], ["--tasks", "10000"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="every script at its own defaults")
    size.add_argument("--quick", action="store_true", help="smaller sizes, about a minute")
    parser.add_argument("--only", default="", help="comma-separated script names to run")
    args = parser.parse_args()
    chosen = {name for name in args.only.split(",") if name}
    unknown = chosen - {name for name, *_ in BENCHMARKS}
    if unknown:
        parser.error(f"no such benchmark: {', '.join(sorted(unknown))}")
    failed = []
    started = time.perf_counter()
    for name, title, default, quick in BENCHMARKS:
        if chosen and name not in chosen:
            continue
        extra = (
            [a for a in default if not a.startswith("--sizes") and "," not in a]
            if args.full
            else quick
            if args.quick
            else default
        )
        print(f"\n== {title}  ({name}.py {' '.join(extra)})".rstrip(), flush=True)
        began = time.perf_counter()
        done = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *extra], check=False)
        print(f"-- {time.perf_counter() - began:.0f} s", flush=True)
        if done.returncode:
            failed.append(name)
    print(f"\nall benchmarks: {time.perf_counter() - started:.0f} s")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
