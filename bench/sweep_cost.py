"""Benchmark 9: what a sweep costs, in requests, by how many tasks of history it lists.

A simulated account (its own process, over loopback) whose tasks of the last
SWEEP_LOOKBACK (30 days) number 10,000 and then 100,000; a sweep lists them back from the
start of the window, a day at a time, as exporter.poll.sweep does, with an empty ledger
(no fingerprint to skip a row by, every run new: the worst case). A sweep's requests are
its pages and one task-details request per task with runs it finds dated before the
baseline. Prints both, the polls a sweep spreads over (about Timing.sweep_requests a
poll) and whether the sweep's budget (Timing.sweep_budget) cuts it short.

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


def sweep_cost(url: str, now: float, timing: Timing) -> tuple[int, int, int, int]:
    """Pages, rows, tasks and polls of a sweep of [now - sweep_lookback, now - lookback)."""
    pages = rows = 0
    tasks: set[str] = set()
    with NeoClient(url, ("api_key", DEMO_API_KEY)) as client:
        until = now - timing.lookback
        while until > now - timing.sweep_lookback:
            since = max(now - timing.sweep_lookback, until - SLICE)
            listing = client.list_stream_usage(
                since=datetime.fromtimestamp(since, UTC), until=datetime.fromtimestamp(until, UTC)
            )
            day = {row.task_id for row in listing.rows} - tasks
            tasks |= day
            pages += listing.pages
            rows += len(listing.rows)
            until = since
    requests = pages + len(tasks)
    polls = math.ceil(min(requests, timing.sweep_budget) / timing.sweep_requests)
    return pages, rows, len(tasks), polls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    quiet_logs()
    timing = Timing(DAY)
    days = timing.sweep_lookback / DAY
    print(
        f"{'tasks in 30 days':>16} {'rows':>8} {'pages':>6} {'details':>8} {'requests':>9} "
        f"{'polls':>6} {'budget':>7} {'s':>6}"
    )
    for tasks in args.tasks:
        with SimulatorProcess(tasks_per_day=tasks / days, history=timing.sweep_lookback) as sim:
            started = time.monotonic()
            pages, rows, found, polls = sweep_cost(sim.url, sim.clock.now().timestamp(), timing)
            spent = time.monotonic() - started
        requests = pages + found
        cut = "cut" if requests > timing.sweep_budget else "within"
        print(
            f"{tasks:>16,} {rows:>8,} {pages:>6,} {found:>8,} {requests:>9,} {polls:>6} "
            f"{cut:>7} {spent:>6.1f}"
        )


if __name__ == "__main__":
    main()
