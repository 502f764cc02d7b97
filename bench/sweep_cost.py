"""Benchmark 9: what a sweep costs, in usage pages, by how many tasks of history it lists.

A simulated account (its own process, over loopback) whose tasks of the last
SWEEP_LOOKBACK (30 days) number 10,000 and then 100,000; a sweep lists them back from the
start of the window, a day at a time, as exporter.poll.sweep does, with an empty ledger
(no fingerprint to skip a row by: every row is read, the worst case). Prints the pages
requested, the polls a sweep spreads over (Timing.sweep_pages a poll) and whether the
sweep's budget (Timing.sweep_budget) cuts it short.

    .venv/bin/python bench/sweep_cost.py [--tasks 10000 100000]
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import UTC, datetime

from simulated import DAY, SimulatorProcess, quiet_logs

from exporter.client import NeoClient
from exporter.poll.sweep import SLICE
from exporter.poll.timing import Timing
from exporter.simulator import DEMO_API_KEY


def sweep_pages(url: str, now: float, timing: Timing) -> tuple[int, int]:
    """Pages and rows of a sweep of [now - sweep_lookback, now - lookback)."""
    pages = rows = 0
    with NeoClient(url, ("api_key", DEMO_API_KEY)) as client:
        until = now - timing.lookback
        while until > now - timing.sweep_lookback:
            since = max(now - timing.sweep_lookback, until - SLICE)
            listing = client.list_stream_usage(
                since=datetime.fromtimestamp(since, UTC), until=datetime.fromtimestamp(until, UTC)
            )
            pages += listing.pages
            rows += len(listing.rows)
            until = since
    return pages, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    quiet_logs()
    timing = Timing(DAY)
    days = timing.sweep_lookback / DAY
    print(f"{'tasks in 30 days':>16} {'rows':>8} {'pages':>6} {'polls':>6} {'budget':>7} {'s':>6}")
    for tasks in args.tasks:
        with SimulatorProcess(tasks_per_day=tasks / days, history=timing.sweep_lookback) as sim:
            started = time.monotonic()
            pages, rows = sweep_pages(sim.url, sim.clock.now().timestamp(), timing)
            spent = time.monotonic() - started
        polls = math.ceil(min(pages, timing.sweep_budget) / timing.sweep_pages)
        cut = "cut" if pages > timing.sweep_budget else "within"
        print(f"{tasks:>16,} {rows:>8,} {pages:>6,} {polls:>6} {cut:>7} {spent:>6.1f}")


if __name__ == "__main__":
    main()
