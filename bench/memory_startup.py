"""Benchmarks 4 and 5: resident memory and start-up time with a large ledger.

Builds a state file holding RUNS synthetic runs (shaped like the simulator's: about 1.07
runs per task, 8 models, 11 tools, 6 agents, counters, histograms and task records) by
committing them through ``Ledger.commit``, then

  4. starts a fresh Python process that builds the real ``exporter.app.Exporter`` on that
     file and reports its VmRSS and peak (VmHWM), beside the same with an empty
     ledger;
  5. spawns ``python -m exporter run`` with its settings in NEO_EXPORTER_* variables (the
     API URL a closed loopback port: restored totals are served before any poll) and
     times process start to the first GET /metrics that serves the restored totals.

    .venv/bin/python bench/memory_startup.py [--runs 100000] [--starts 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simulated import DAY, quiet_logs, verdict

from exporter.accounting import Deltas, RunState
from exporter.app import bucket_settings
from exporter.catalogue import AGENT_BREAKDOWN, RUN_COUNTERS, RUN_CREDITS, RUN_DURATION, RUNS
from exporter.catalogue import TOOL_DURATION as TOOL_HIST
from exporter.ledger import Ledger, PollChanges, TaskRecord
from exporter.settings import Settings
from exporter.simulator import DEMO_API_KEY
from exporter.simulator.vocabulary import (
    AGENTS,
    MODEL_WEIGHTS,
    MODELS,
    TOOL_NAMES,
    USAGE_STATUSES,
    USAGE_WEIGHTS,
)

TARGET_RSS_MB = 120
TARGET_START_S = 1.0
CHUNK = 10_000  # runs per transaction while building
RUNS_PER_TASK = 1.07
TASK_STATUS = {"failed": "error", "blocked": "suspended"}


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


def build_ledger(path: Path, runs: int, seed: int = 5, span: float = DAY) -> float:
    """Commit ``runs`` finished runs started over the last ``span`` seconds; returns the
    build seconds."""
    started = time.perf_counter()
    rng = random.Random(seed)
    settings = Settings(state_path=path)
    ledger = Ledger(path, buckets=bucket_settings(settings), max_label_values=100)
    now = time.time()
    task_ids = [_uuid(rng) for _ in range(max(1, int(runs / RUNS_PER_TASK)))]
    models = {task_id: rng.choices(MODELS, MODEL_WEIGHTS)[0] for task_id in task_ids}
    for first in range(0, runs, CHUNK):
        changes = PollChanges(meta={"baseline": repr(now - DAY), "listed_at": repr(now)})
        deltas = changes.deltas
        for number in range(first, min(runs, first + CHUNK)):
            task_id = task_ids[number] if number < len(task_ids) else rng.choice(task_ids)
            state = _synthetic_run(rng, task_id, models[task_id], now - rng.random() * span)
            _count(ledger, deltas, state, rng)
            changes.runs.append(state)
            status = TASK_STATUS.get(state.status, state.status)
            changes.tasks[task_id] = TaskRecord(state.model, status, state.started_at, False)
        ledger.commit(changes)
    ledger.close()
    return time.perf_counter() - started


def _synthetic_run(rng: random.Random, task_id: str, model: str, started: float) -> RunState:
    steps = rng.randint(5, 200)
    calls = rng.randint(0, steps)
    agents = {a: rng.randint(1, 9) for a in rng.sample(AGENTS, rng.randint(1, 3))}
    return RunState(
        stream_id=_uuid(rng), task_id=task_id, started_at=started, model=model,
        status=rng.choices(USAGE_STATUSES, USAGE_WEIGHTS)[0], finished=True,
        credits=rng.randint(10**7, 5 * 10**9), steps=steps, tool_calls=calls,
        agent_triggers=sum(agents.values()), llm_ms=rng.randint(10**4, 10**6),
        tool_ms=rng.randint(10**3, 10**6), exec_ms=rng.randint(5 * 10**3, 72 * 10**5),
        agents=agents, tools_seen=[[0, calls]] if calls else [],
        fingerprint=rng.getrandbits(63),
    )  # fmt: skip


def _count(ledger: Ledger, deltas: Deltas, state: RunState, rng: random.Random) -> None:
    """What the poller would add for this run (one tool observation per run is enough to
    create every histogram series; their number, not their counts, sets the memory)."""
    guard = ledger.guard
    model = guard.admit("model", state.model)
    labels = (model, guard.admit("status", state.status))
    for field, spec in RUN_COUNTERS.items():
        if getattr(state, field):
            deltas.add(spec.name, labels, getattr(state, field), state.task_id)
    for agent, count in state.agents.items():
        deltas.add(AGENT_BREAKDOWN.name, (model, guard.admit("agent", agent)), count)
    deltas.add(RUNS.name, labels, 1)
    deltas.observe(RUN_CREDITS.name, labels, state.credits, state.task_id)
    deltas.observe(RUN_DURATION.name, labels, state.exec_ms, state.task_id)
    if state.tool_calls:
        tool = guard.admit("tool", rng.choice(TOOL_NAMES))
        deltas.observe(TOOL_HIST.name, (model, tool), rng.randint(50, 600_000), state.task_id)


# -- 4. memory ---------------------------------------------------------------------------


def _rss_child(state: Path) -> None:
    """Runs in a fresh process: build the real Exporter, report its memory as JSON."""
    from exporter.app import Exporter

    quiet_logs()
    settings = Settings(api_url="http://127.0.0.1:9", state_path=state, lookback=DAY)
    exporter = Exporter(settings, ("api_key", DEMO_API_KEY), host="127.0.0.1", port=0)
    # What the poller thread loads before its first poll (the tasks and run fingerprints
    # of the last two lookbacks), and the render that follows: the daemon's steady
    # memory, not just its first scrape.
    exporter.poller.load_index()
    exporter.exposition.refresh()
    for openmetrics in (False, True):
        for compress in (False, True):
            exporter.exposition.render(openmetrics=openmetrics, compress=compress)
    status = Path("/proc/self/status").read_text()
    # VmHWM, not ru_maxrss: the latter keeps the peak of the parent this process was
    # forked from (the one that built the ledger), across exec.
    rss_kb, peak_kb = (
        int(re.search(rf"{key}:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
        for key in ("VmRSS", "VmHWM")
    )
    print(json.dumps({"rss_mb": rss_kb / 1024, "peak_mb": peak_kb / 1024,
                      "runs": exporter.ledger.run_count}))  # fmt: skip


def measure_rss(state: Path) -> dict[str, float]:
    script = Path(__file__).resolve()
    out = subprocess.run(
        [sys.executable, str(script), "--rss-of", str(state)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- 5. start-up -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _runs_served(body: bytes) -> int:
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("neo_task_runs_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return round(total)


def time_startup(state: Path, runs: int, deadline: float = 30.0) -> float:
    """Seconds from spawning the daemon to a /metrics answer with all ``runs`` restored."""
    port = _free_port()
    env = {
        **os.environ,
        "NEO_EXPORTER_API_URL": f"http://127.0.0.1:{_free_port()}",  # closed: no poll succeeds
        "NEO_EXPORTER_API_KEY": DEMO_API_KEY,
        "NEO_EXPORTER_STATE_PATH": str(state),
        "NEO_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "NEO_EXPORTER_LOG_LEVEL": "error",
    }
    started = time.perf_counter()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while time.perf_counter() - started < deadline:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/metrics")
                response = connection.getresponse()
                body = response.read()
                connection.close()
                if response.status == 200 and _runs_served(body) == runs:
                    return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.005)
        raise RuntimeError(f"no /metrics with {runs} restored runs within {deadline} s")
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000, help="runs in the ledger")
    parser.add_argument("--starts", type=int, default=3, help="daemon starts to time")
    parser.add_argument(
        "--old-runs", type=int, default=300_000,
        help="runs of an old ledger, spread over --old-days (0: skip that row)",
    )  # fmt: skip
    parser.add_argument("--old-days", type=int, default=30)
    parser.add_argument("--rss-of", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_of is not None:
        _rss_child(args.rss_of)
        return
    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="neo-bench-") as tmp:
        empty, full = Path(tmp) / "empty.db", Path(tmp) / "full.db"
        build_ledger(empty, 0)
        seconds = build_ledger(full, args.runs)
        print(
            f"ledger: {args.runs:,} runs, {full.stat().st_size / 1e6:.1f} MB on disk, "
            f"built in {seconds:.1f} s"
        )
        base, loaded = measure_rss(empty), measure_rss(full)
        print(f"{'4. memory of a fresh exporter':34} {'VmRSS MB':>9} {'peak MB':>8}  target")
        print(f"{'empty ledger':34} {base['rss_mb']:9.1f} {base['peak_mb']:8.1f}")
        rss, label = loaded["rss_mb"], f"{int(loaded['runs']):,} runs"
        print(
            f"{label:34} {rss:9.1f} {loaded['peak_mb']:8.1f}  "
            f"<= {TARGET_RSS_MB} MB  {verdict(rss <= TARGET_RSS_MB)}"
        )
        if args.old_runs:
            # Memory follows the window, not the ledger's age: runs older than two
            # lookbacks (one day here) stay in the file.
            old = Path(tmp) / "old.db"
            build_ledger(old, args.old_runs, span=args.old_days * DAY)
            aged = measure_rss(old)
            label = f"{int(aged['runs']):,} runs over {args.old_days} days"
            print(f"{label:34} {aged['rss_mb']:9.1f} {aged['peak_mb']:8.1f}")
        cold = [time_startup(empty, 0) for _ in range(args.starts)]
        warm = [time_startup(full, args.runs) for _ in range(args.starts)]
        print(f"{'5. start to restored /metrics':34} {'median s':>9} {'worst s':>8}  target")
        print(f"{'empty ledger (interpreter+imports)':34} {statistics.median(cold):9.2f} "
              f"{max(cold):8.2f}")  # fmt: skip
        median, label = statistics.median(warm), f"{args.runs:,} runs"
        print(
            f"{label:34} {median:9.2f} {max(warm):8.2f}  "
            f"<= {TARGET_START_S:g} s  {verdict(median <= TARGET_START_S)}"
        )


if __name__ == "__main__":
    main()
