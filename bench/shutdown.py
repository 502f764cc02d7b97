"""Benchmark 8: time from SIGTERM to exit while the Neo API hangs.

Runs the daemon (from --code, this checkout by default; e.g. /work/main for the figure
before a change) against the simulated API, lets it finish a poll, then makes every
request hang, waits until one is in flight, sends SIGTERM and times the exit.

    .venv/bin/python bench/shutdown.py [--code /work/main] [--request-timeout 30]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from exporter.simulator import DEMO_API_KEY, Journal, ScaledClock, SimulatedApi, World

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=ROOT)
    parser.add_argument("--request-timeout", default="30")
    args = parser.parse_args()
    world = World(seed=6, clock=ScaledClock(datetime.now(UTC), 600), tasks_per_day=1000)
    with SimulatedApi(world) as api, tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEO_EXPORTER_")}
        env.update(
            PYTHONPATH=str(args.code),
            NEO_EXPORTER_API_URL=api.url,
            NEO_EXPORTER_API_KEY=DEMO_API_KEY,
            NEO_EXPORTER_STATE_PATH=str(Path(tmp) / "state.db"),
            NEO_EXPORTER_POLL_INTERVAL="1",
            NEO_EXPORTER_LISTEN_ADDRESS="127.0.0.1:0",
            NEO_EXPORTER_REQUEST_TIMEOUT=args.request_timeout,
            NEO_EXPORTER_LOG_FORMAT="json",
        )
        child = subprocess.Popen(
            [sys.executable, "-m", "exporter", "run"], env=env, cwd=args.code,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert child.stderr is not None
        for line in child.stderr:
            if b"poll_finished" in line:
                break
        api.faults.latency = 3600.0
        journal = Journal()
        api.journal = journal
        journal.came.wait()
        started = time.perf_counter()
        child.send_signal(signal.SIGTERM)
        child.stderr.read()
        code = child.wait()
        took = time.perf_counter() - started
    print(f"code: {args.code}   REQUEST_TIMEOUT={args.request_timeout}")
    print(f"SIGTERM to exit, API hanging: {took:.2f} s (exit status {code})")


if __name__ == "__main__":
    main()
