"""Benchmark 7: what a bad value costs the page that carries it.

Real usage pages of 200 rows from the simulator, decoded by the exporter's page reader:
clean (the fast path, one msgspec pass), with one row carrying a value msgspec refuses
(the page is split into rows, in C where it is JSON msgspec reads and by the exporter's
scanner where it is not, and only that row read field by field), and with every row
carrying one (the worst case: every row read field by field). Prints CPU per page and
per row; the clean page is the reference.

    .venv/bin/python bench/bad_values.py [--pages 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime

from exporter.decoding import read_page
from exporter.simulator import ManualClock, World, views

NASTY = ',"avg_step_latency_ms":NaN,"neo_credits":1e400'  # not JSON msgspec reads
WRONG = ',"llm_time_ms":-1'  # JSON, of the wrong value


def pages(count: int) -> list[list[str]]:
    clock = ManualClock(datetime(2026, 11, 20, 9, tzinfo=UTC))
    world = World(seed=5, clock=clock, tasks_per_day=count * 200)
    now = world.sync()
    rows = [views.stream_json(world, world.streams[no], now) for _, _, no in world.stream_index]
    return [rows[i : i + 200] for i in range(0, min(len(rows), count * 200), 200)]


def body(rows: list[str]) -> bytes:
    return ('{"data":[' + ",".join(rows) + '],"has_more":true,"total":100000}').encode()


def spoil(row: str, extra: str = NASTY) -> str:
    return row[:-1] + extra + "}"


def cpu_per_page(bodies: list[bytes], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.process_time()
        for content in bodies:
            read_page(content)
        times.append((time.process_time() - started) / len(bodies))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    chunks = [c for c in pages(args.pages) if len(c) == 200]
    calls = sum(len(json.loads(r)["tool_call_history"] or ()) for c in chunks for r in c)
    print(f"{len(chunks)} pages of 200 rows, {calls / (200 * len(chunks)):.1f} tool calls a row")
    cases = {
        "clean (fast path)": [body(c) for c in chunks],
        "one wrong value": [body([spoil(c[0], WRONG), *c[1:]]) for c in chunks],
        "one NaN / 1e400": [body([spoil(c[0]), *c[1:]]) for c in chunks],
        "every row wrong": [body([spoil(r, WRONG) for r in c]) for c in chunks],
        "every row NaN": [body([spoil(r) for r in c]) for c in chunks],
    }
    reference = 0.0
    print(f"{'page':<22}{'ms/page':>10}{'us/row':>10}{'x clean':>10}")
    for name, bodies in cases.items():
        spent = cpu_per_page(bodies, args.rounds)
        reference = reference or spent
        print(f"{name:<22}{spent * 1e3:>10.2f}{spent * 1e6 / 200:>10.1f}{spent / reference:>10.2f}")


if __name__ == "__main__":
    main()
