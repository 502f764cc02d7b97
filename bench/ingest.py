"""Benchmark 2: ingest, the first poll of a large window against merely decoding its JSON.

Serves a simulated account with about TASKS tasks in the lookback window from a child
process, fetches the raw /usage/streams pages of that window once and times json.loads
on them, then runs the real exporter's first poll (on a fresh ledger, --polls times; the
median counts) and reads the CPU the exporter's process spent on it (time.process_time:
poller, fetch threads, SQLite commit and the exposition render; the simulator's CPU is in
the child and not counted).

    .venv/bin/python bench/ingest.py [--tasks 20000] [--decode-repeats 3] [--polls 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import timedelta

import httpx
from simulated import DAY, PAGE_ROWS, BenchExporter, SimulatorProcess, quiet_logs, verdict

from exporter.client import STREAMS
from exporter.simulator import DEMO_API_KEY

TARGET_RATE = 5_000  # runs per CPU second
TARGET_RATIO = 2.0  # exporter CPU / decode CPU


def fetch_pages(sim: SimulatorProcess, lookback: float) -> list[bytes]:
    """The window's pages exactly as the poller asks for them, as raw bytes."""
    since = (sim.clock.now() - timedelta(seconds=lookback)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pages = []
    with httpx.Client(base_url=sim.url, headers={"X-Api-Key": DEMO_API_KEY}, timeout=60) as http:
        offset = 0
        while True:
            params = {"from": since, "limit": str(PAGE_ROWS), "offset": str(offset)}
            response = http.get(STREAMS, params=params)
            response.raise_for_status()
            pages.append(response.content)
            body = json.loads(response.content)
            offset += len(body["data"])
            if not body["data"] or not body["has_more"]:
                return pages


def decode_seconds(pages: list[bytes], repeats: int) -> tuple[float, int]:
    """Median CPU seconds to json.loads every page, and the number of rows decoded."""
    times, rows = [], 0
    for _ in range(repeats):
        started = time.process_time()
        rows = sum(len(json.loads(page)["data"]) for page in pages)
        times.append(time.process_time() - started)
    return statistics.median(times), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks in the lookback window")
    parser.add_argument("--decode-repeats", type=int, default=3)
    parser.add_argument("--polls", type=int, default=3, help="first polls, each on a new ledger")
    args = parser.parse_args()
    quiet_logs()
    # A one-day lookback over an account with TASKS tasks a day holds about TASKS tasks.
    with SimulatorProcess(tasks_per_day=args.tasks, history=DAY) as sim:
        pages = fetch_pages(sim, DAY)
        decode_cpu, rows = decode_seconds(pages, args.decode_repeats)
        polls = []  # each on a fresh ledger: the median of a noisy machine's figures
        for _ in range(args.polls):
            with BenchExporter(sim, lookback=DAY) as bench:
                polls.append(bench.poll())
        cpus = [cpu for _, cpu, _ in polls]
        report, cpu, wall = sorted(polls, key=lambda poll: poll[1])[len(polls) // 2]
    runs = report.runs_new + report.runs_updated
    rate, decode_rate = runs / cpu, rows / decode_cpu
    ratio = cpu / decode_cpu * (rows / runs if runs else 1.0)
    size = sum(len(page) for page in pages)
    print(
        f"window: {sim.tasks:,} tasks generated, {rows:,} rows in {len(pages)} pages, "
        f"{size / 1e6:.1f} MB of JSON ({size / max(rows, 1):,.0f} B/row)"
    )
    print(f"{'case':34} {'CPU s':>8} {'rows':>8} {'runs/CPU s':>11}  target")
    floor = "json.loads of the pages (floor)"
    print(f"{floor:34} {decode_cpu:8.2f} {rows:8,} {decode_rate:11,.0f}")
    print(
        f"{'exporter first poll':34} {cpu:8.2f} {runs:8,} {rate:11,.0f}  "
        f">= {TARGET_RATE:,}  {verdict(rate >= TARGET_RATE)}"
    )
    print(
        f"exporter / decode, per run:  {ratio:6.2f}x   (target <= {TARGET_RATIO:g}x)  "
        f"{verdict(ratio <= TARGET_RATIO)}"
    )
    print(
        f"first poll: median of {len(cpus)} ({', '.join(f'{c:.2f}' for c in cpus)} CPU s), "
        f"wall {wall:.1f} s, requests beyond the window pages: {report.task_requests}"
    )


if __name__ == "__main__":
    main()
