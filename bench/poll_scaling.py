"""Benchmark 6: poll CPU as the window grows while the share that changes stays at 1%.

For each SIZE, a simulated account with about SIZE tasks in a one-day lookback window is
served from a child process. The real exporter makes its first poll (ingest), then the
manual clock advances by CHANGED of the lookback between polls, so that about that share
of the window's runs is new or grown, and the exporter polls again (one warm-up poll, then
--polls timed ones); last, one more poll without advancing the clock (idle window).

By default (FULL_LIST_INTERVAL=1h) most polls list only runs started in the last two
hours, and every hour one lists the whole window. The two kinds are timed apart:
  - poll CPU: CPU of the exporter's process per steady-state poll between full listings,
    with the rows changed and the requests made (medians over those polls);
  - idle: the same poll when nothing changed;
  - full listing: CPU of a poll that lists the whole window (mean), the part of the cost
    that grows with the window; "per s" spreads it over its interval;
  - changed x ingest: the changed runs times the first poll's CPU per run, i.e. what the
    poll would cost if its cost grew only with what changed (target: within 2x).
With --full-list-interval 0 every poll lists the whole window (the old behaviour).

Also printed: the exporter process's peak resident set so far (VmHWM; sizes run in
increasing order, so each row's peak is that size's), which the first poll sets.

100,000 tasks takes several minutes here, most of it the first poll (ingest of the
whole window, served by the simulator at about 1 ms a row); --sizes 1000,10000 skips it.

    .venv/bin/python bench/poll_scaling.py [--sizes 1000,10000,100000] [--changed 0.01]
        [--full-list-interval 3600] [--polls 8]
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
        steady: list[tuple[float, int, int, int]] = []  # cpu, rows, changed, requests
        full: list[float] = []
        for number in range(polls + 1):  # the first steady poll warms up
            sim.advance(changed * DAY * CALIBRATION)
            recorded.counts.clear()
            report, cpu, _ = bench.poll()
            if number == 0:
                continue
            if report.full_listing and full_every:
                full.append(cpu)
                continue
            steady.append(
                (
                    cpu,
                    report.rows + report.unchanged,
                    report.runs_new + report.runs_updated,
                    sum(recorded.counts.values()),
                )
            )
        _, idle_cpu, _ = bench.poll()
    status = Path("/proc/self/status").read_text()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    cpus, rows, changes, requests = zip(*steady, strict=True)
    return {
        "peak_mb": peak / 1024,
        "size": size,
        "per_run": first_cpu / max(first.runs_new + first.runs_updated, 1),
        "cpu": statistics.median(cpus),
        "idle": idle_cpu,
        "full": statistics.mean(full) if full else float("nan"),
        "rows": statistics.median(rows),
        "changed": statistics.median(changes),
        "requests": statistics.median(requests),
        "window": first.rows + first.unchanged,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="tasks in the window")
    parser.add_argument("--changed", type=float, default=0.01, help="share changed per poll")
    parser.add_argument("--polls", type=int, default=8, help="polls timed after a warm-up")
    parser.add_argument(
        "--full-list-interval",
        type=float,
        default=3600.0,
        help="seconds between full listings (FULL_LIST_INTERVAL; 0: every poll)",
    )
    args = parser.parse_args()
    every = args.full_list_interval
    print(
        f"FULL_LIST_INTERVAL={every:g}s: "
        + ("most polls list recent starts only" if every else "every poll lists the window")
    )
    quiet_logs()
    sizes = [int(size) for size in args.sizes.split(",")]
    results = []
    print(
        f"{'tasks':>8} {'window':>8} {'listed':>7} {'changed':>12} {'requests':>8} "
        f"{'poll CPU ms':>11} {'idle ms':>8} {'changed x ingest':>16} {'ratio':>6}  target"
        f"       {'full listing ms':>15} {'per s':>6} {'peak RSS MB':>11}"
    )
    for size in sizes:
        r = measure(size, args.changed, args.polls, every)
        results.append(r)
        floor = r["changed"] * r["per_run"]
        ratio = r["cpu"] / floor if floor else float("inf")
        share = f"{r['changed']:,.0f} {r['changed'] / max(r['window'], 1):.1%}"
        spread = r["full"] / every * 1000 if every else float("nan")
        print(
            f"{r['size']:8,} {r['window']:8,.0f} {r['rows']:7,.0f} {share:>12} "
            f"{r['requests']:8,.0f} {r['cpu'] * 1000:11,.0f} {r['idle'] * 1000:8,.0f} "
            f"{floor * 1000:16,.0f} {ratio:5.1f}x  <= {TARGET_RATIO:g}x "
            f"{verdict(ratio <= TARGET_RATIO)}  {r['full'] * 1000:15,.0f} {spread:6.1f} "
            f"{r['peak_mb']:11,.0f}",
            flush=True,
        )
    small, large = results[0], results[-1]
    if len(results) > 1:
        print(
            f"{small['size']:,} -> {large['size']:,} tasks: window x"
            f"{large['window'] / max(small['window'], 1):.0f}, changed x"
            f"{large['changed'] / max(small['changed'], 1):.0f}, poll CPU x"
            f"{large['cpu'] / small['cpu']:.0f}, idle-window CPU x"
            f"{large['idle'] / small['idle']:.0f}"
        )
    if every:
        print(
            "full listing: CPU of the hourly poll that lists the whole window; per s: that "
            "CPU in ms spread over FULL_LIST_INTERVAL"
        )


if __name__ == "__main__":
    main()
