"""Benchmark 6: poll CPU as the window grows while the share that changes stays at 1%.

For each SIZE, a simulated account with about SIZE tasks in a one-day lookback window is
served from a child process. The real exporter makes its first poll (ingest), then the
manual clock advances by CHANGED of the lookback between polls, so that about that share
of the window's runs is new or grown, and the exporter polls again (one warm-up poll, then
--polls timed ones); last, one more poll without advancing the clock (idle window).
Printed per size: CPU of the exporter's process per steady-state poll, the rows changed
and the requests made (means over the timed polls), and two yardsticks:
  - idle: the same poll when nothing changed, i.e. what looking at the window costs;
  - changed x ingest: the changed runs times the first poll's CPU per run, i.e. what
    the poll would cost if its cost grew only with what changed (target: within 2x).

Also printed: the exporter process's peak resident set so far (VmHWM; sizes run in
increasing order, so each row's peak is that size's), which the first poll sets.

100,000 tasks takes about five minutes here, most of it the first poll (ingest of the
whole window, served by the simulator at about 1 ms a row); --sizes 1000,10000 skips it.

    .venv/bin/python bench/poll_scaling.py [--sizes 1000,10000,100000] [--changed 0.01]
        [--full-list-interval 3600 --polls 10]   # list the whole window hourly only
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

from simulated import DAY, BenchExporter, Recorded, SimulatorProcess, quiet_logs, verdict

# The window's own churn (settling rows, continued tasks) adds to the share of new rows
# an advance of the clock brings: measured once with the simulator's seeds.
CALIBRATION = 0.85
TARGET_RATIO = 2.0  # steady poll CPU / (changed runs x first-poll CPU per run)


def measure(size: int, changed: float, polls: int, full_every: float) -> dict[str, float]:
    recorded = Recorded()
    with (
        SimulatorProcess(tasks_per_day=size, history=DAY) as sim,
        BenchExporter(sim, lookback=DAY, recorded=recorded, full_list_interval=full_every) as bench,
    ):
        first, first_cpu, _ = bench.poll()
        cpus, rows, changes, requests = [], [], [], []
        for _ in range(polls + 1):  # the first steady poll warms up
            sim.advance(changed * DAY * CALIBRATION)
            recorded.counts.clear()
            report, cpu, _ = bench.poll()
            cpus.append(cpu)
            rows.append(report.rows + report.unchanged)
            changes.append(report.runs_new + report.runs_updated)
            requests.append(sum(recorded.counts.values()))
        _, idle_cpu, _ = bench.poll()
    status = Path("/proc/self/status").read_text()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    return {
        "peak_mb": peak / 1024,
        "size": size,
        "per_run": first_cpu / max(first.runs_new + first.runs_updated, 1),
        # The mean, not the median: with FULL_LIST_INTERVAL the occasional full listing
        # is part of the cost, spread over the polls between.
        "cpu": statistics.mean(cpus[1:]),
        "idle": idle_cpu,
        "rows": statistics.median(rows[1:]),
        "changed": statistics.median(changes[1:]),
        "requests": statistics.median(requests[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="tasks in the window")
    parser.add_argument("--changed", type=float, default=0.01, help="share changed per poll")
    parser.add_argument("--polls", type=int, default=2, help="steady-state polls timed")
    parser.add_argument(
        "--full-list-interval",
        type=float,
        default=0.0,
        help="seconds between full listings (FULL_LIST_INTERVAL; 0: every poll)",
    )
    args = parser.parse_args()
    if args.full_list_interval:
        print(f"FULL_LIST_INTERVAL={args.full_list_interval:g}s: cost averaged over the polls")
    quiet_logs()
    sizes = [int(size) for size in args.sizes.split(",")]
    results = []
    print(
        f"{'tasks':>8} {'rows':>8} {'changed':>14} {'requests':>8} {'poll CPU ms':>11} "
        f"{'idle ms':>8} {'changed x ingest ms':>19} {'ratio':>6}  target      {'peak RSS MB':>11}"
    )
    for size in sizes:
        r = measure(size, args.changed, args.polls, args.full_list_interval)
        results.append(r)
        floor = r["changed"] * r["per_run"]
        ratio = r["cpu"] / floor if floor else float("inf")
        share = f"{r['changed']:,.0f} {r['changed'] / max(r['rows'], 1):.1%}"
        print(
            f"{r['size']:8,} {r['rows']:8,.0f} {share:>14} {r['requests']:8,.0f} "
            f"{r['cpu'] * 1000:11,.0f} {r['idle'] * 1000:8,.0f} {floor * 1000:19,.0f} "
            f"{ratio:5.1f}x  <= {TARGET_RATIO:g}x {verdict(ratio <= TARGET_RATIO)}  "
            f"{r['peak_mb']:11,.0f}",
            flush=True,
        )
    small, large = results[0], results[-1]
    if len(results) > 1:
        print(
            f"{small['size']:,} -> {large['size']:,} tasks: window x"
            f"{large['rows'] / max(small['rows'], 1):.0f}, changed x"
            f"{large['changed'] / max(small['changed'], 1):.0f}, poll CPU x"
            f"{large['cpu'] / small['cpu']:.0f}, idle-window CPU x"
            f"{large['idle'] / small['idle']:.0f}"
        )


if __name__ == "__main__":
    main()
