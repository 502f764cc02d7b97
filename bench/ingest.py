"""Benchmark 2: ingest, the first poll of a large window against merely decoding its JSON.

Serves a simulated account with about TASKS tasks in the lookback window from a child
process and fetches the raw /usage/streams pages of that window once. Then, ROUNDS
times, side by side: the real exporter's first poll on a fresh ledger, whose CPU is read
from the exporter's process (time.process_time: poller, fetch threads, SQLite commit and
the exposition render; the simulator's CPU is in the child and not counted), bracketed
by json.loads of every page just before and just after it. Each round compares the poll
with the mean of its two brackets, taken seconds apart, so that a machine whose speed
drifts (a shared VM) moves both alike; the median round counts. One decode and one poll
run first, uncounted: a fresh process and an idle CPU make the first of each slower
(the heap grows, the clock rises), and that would skew a round either way.

Also printed, as a second reference: the skeleton every design of this exporter pays
before any accounting, that is the real client listing the window (HTTP, decode, paging)
and one ledger row per run written in one transaction, as the ledger writes them. What
the first poll costs beyond it is the accounting: run states, histograms, tasks, render.

    .venv/bin/python bench/ingest.py [--tasks 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
from simulated import DAY, PAGE_ROWS, BenchExporter, SimulatorProcess, quiet_logs, verdict

from exporter.accounting import run_key
from exporter.client import STREAMS, NeoClient
from exporter.ledger import RUN_COLUMNS, SCHEMA
from exporter.models import TaskUsage
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


def decode_seconds(pages: list[bytes]) -> tuple[float, int]:
    """CPU seconds to json.loads every page, and the number of rows decoded.

    Without the cyclic garbage collector, as the exporter polls. With it, the floor
    swings twofold from round to round (its collections walk whatever the heap holds),
    and a higher floor would flatter the ratio."""
    gc.collect()
    gc.disable()
    try:
        started = time.process_time()
        rows = sum(len(json.loads(page)["data"]) for page in pages)
        return time.process_time() - started, rows
    finally:
        gc.enable()


def _skeleton_row(row: TaskUsage, fingerprint: int | None) -> tuple[object, ...]:
    """A usage row as a ledger row, its values taken as they are: no accounting."""
    history = row.tool_call_history or ()
    return (
        run_key(row), row.task_id, row.created_at.timestamp(), row.model, row.status, 0, 1,
        0, 0, 0, row.step_count, row.tool_calls, row.agent_triggers, row.llm_time_ms or 0,
        row.tool_time_ms or 0, row.total_execution_ms or 0, "{}", f"[[0,{len(history)}]]",
        fingerprint, None, None,
    )  # fmt: skip


def skeleton_seconds(sim: SimulatorProcess, lookback: float) -> float:
    """CPU seconds of the real client listing the window and of one ledger row per run
    written in one transaction (the ledger's schema and settings), without the cyclic
    garbage collector, as the exporter polls."""
    since = sim.clock.now() - timedelta(seconds=lookback)
    with tempfile.TemporaryDirectory(prefix="neo-bench-") as tmp:
        db = sqlite3.connect(Path(tmp) / "state.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        client = NeoClient(sim.url, ("api_key", DEMO_API_KEY))
        gc.collect()
        gc.disable()
        try:
            started = time.process_time()
            rows = client.map_stream_usage(_skeleton_row, since=since).rows
            db.execute("BEGIN IMMEDIATE")
            marks = ",".join("?" * len(RUN_COLUMNS))
            db.executemany(f"INSERT OR REPLACE INTO runs VALUES ({marks})", sorted(rows))
            db.execute("COMMIT")
            return time.process_time() - started
        finally:
            gc.enable()
            client.close()
            db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks in the lookback window")
    parser.add_argument("--rounds", type=int, default=5, help="decode + first poll pairs")
    args = parser.parse_args()
    quiet_logs()
    # A one-day lookback over an account with TASKS tasks a day holds about TASKS tasks.
    with SimulatorProcess(tasks_per_day=args.tasks, history=DAY) as sim:
        pages = fetch_pages(sim, DAY)
        decode_seconds(pages)  # warm-up, uncounted: see the docstring
        with BenchExporter(sim, lookback=DAY) as bench:
            bench.poll()
        skeleton_seconds(sim, DAY)
        rounds = []  # (ratio per run, decode CPU, poll report, poll CPU, poll wall)
        skeletons = []  # (skeleton CPU / mean of its two brackets)
        for _ in range(args.rounds):
            before, rows = decode_seconds(pages)
            with BenchExporter(sim, lookback=DAY) as bench:  # a fresh ledger each round
                report, cpu, wall = bench.poll()
            after, _ = decode_seconds(pages)
            decode_cpu = (before + after) / 2  # the floor on both sides of the poll
            skeleton = skeleton_seconds(sim, DAY)
            skeletons.append(skeleton / ((after + decode_seconds(pages)[0]) / 2))
            runs = report.runs_new + report.runs_updated
            per_run = rows / runs if runs else 1.0  # the same runs each round: a fresh ledger
            rounds.append((cpu / decode_cpu * per_run, decode_cpu, report, cpu, wall))
        ratio, decode_cpu, report, cpu, wall = sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]
    rate, decode_rate = runs / cpu, rows / decode_cpu
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
    skeleton_ratio = sorted(skeletons)[len(skeletons) // 2]
    print(
        f"skeleton / decode (listing + one ledger row per run, no accounting): "
        f"{skeleton_ratio:.2f}x  (rounds {min(skeletons):.2f} to {max(skeletons):.2f}x)"
    )
    best = min(r[3] for r in rounds) / min(r[1] for r in rounds) * per_run
    print(f"the same from each side's fastest round: {best:.2f}x")
    print(
        "rounds (decode CPU s, mean of the brackets / poll CPU s = ratio): "
        + ", ".join(f"{d:.2f}/{c:.2f}={r:.2f}x" for r, d, _, c, _ in rounds)
        + f"; the median round is shown, its poll took {wall:.1f} s wall and "
        f"{report.task_requests} requests beyond the window pages"
    )


if __name__ == "__main__":
    main()
