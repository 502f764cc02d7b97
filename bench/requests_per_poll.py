"""Benchmark 3: API requests per poll of an idle window, by endpoint, against the bound.

A simulated account with about TASKS tasks in the lookback window, on a manual clock that
does not move between polls (nothing changes). The real exporter polls it twice; the
second poll's requests are counted by purpose, from a recording transport in the exporter
and from the simulator's own request counter. The bound from the issue:

    ceil(rows / 200) page requests to list the window
    + one request per changed or active (pending, running) task

    .venv/bin/python bench/requests_per_poll.py [--tasks 5000] [--polls 2]
"""

from __future__ import annotations

import argparse

from simulated import (
    DAY,
    BenchExporter,
    Recorded,
    SimulatorProcess,
    pages_needed,
    quiet_logs,
    verdict,
)

# Requests made once per poll whatever the window holds: the balance, and the task lists
# (one page each while fewer than 100 tasks are live) that reveal running tasks.
FIXED = frozenset(
    {"usage/summary", "billing/credits", "tasks?status=active", "tasks?status=pending"}
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5_000, help="tasks in the lookback window")
    parser.add_argument("--polls", type=int, default=2, help="polls in all; the last is counted")
    args = parser.parse_args()
    quiet_logs()
    recorded = Recorded()
    with (
        SimulatorProcess(tasks_per_day=args.tasks, history=DAY) as sim,
        BenchExporter(sim, lookback=DAY, recorded=recorded) as bench,
    ):
        for _ in range(args.polls - 1):
            bench.poll()
        recorded.counts.clear()
        served_before = sim.requests()
        report, cpu, _ = bench.poll()
        served = sim.requests() - served_before
        live = sim.live_tasks()
    listed = report.rows + report.unchanged
    changed = report.runs_new + report.runs_updated
    pages = pages_needed(listed)
    bound = pages + changed + live
    counts = recorded.counts
    fixed = sum(n for kind, n in counts.items() if kind in FIXED)
    sent = sum(counts.values())
    print(
        f"window: {listed:,} rows ({sim.tasks:,} tasks generated), rows changed since the "
        f"last poll: {changed}, tasks pending or active: {live}"
    )
    print(f"{'request (poll ' + str(args.polls) + ')':34} {'count':>6}  kind")
    for kind, count in sorted(counts.items(), key=lambda item: (item[0] in FIXED, item[0])):
        what = "per poll, not per row or task" if kind in FIXED else "pages + per task"
        print(f"{kind:34} {count:6,}  {what}")
    print(f"{'total sent':34} {sent:6,}  (the simulator answered {sum(served.values()):,})")
    print(f"bound: {pages} pages + {changed} changed + {live} active tasks = {bound}")
    print(
        f"pages + per-task requests: {sent - fixed:5,} / bound {bound:,}   "
        f"{verdict(sent - fixed <= bound)}"
    )
    print(
        f"all requests:              {sent:5,} / bound {bound:,}   {verdict(sent <= bound)}"
        f"   ({fixed} fixed: account balance and live-task lists)"
    )
    print(f"CPU of that poll: {cpu * 1000:.0f} ms")


if __name__ == "__main__":
    main()
