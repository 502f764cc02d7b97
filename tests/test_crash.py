"""Crash safety: the real daemon killed with SIGKILL at random moments never loses or doubles."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporter.errors import StateError
from exporter.ledger import Ledger
from exporter.simulator import DEMO_API_KEY, ManualClock, SimulatedApi, World
from tests.conftest import BUCKETS
from tests.truth import Truth, compare, counted

KILLS = 36


def exporter_env(api_url: str, state_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEO_EXPORTER_")}
    env.update(
        NEO_EXPORTER_API_URL=api_url,
        NEO_EXPORTER_API_KEY=DEMO_API_KEY,
        NEO_EXPORTER_STATE_PATH=str(state_path),
        NEO_EXPORTER_POLL_INTERVAL="1",
        NEO_EXPORTER_LISTEN_ADDRESS="127.0.0.1:0",
        NEO_EXPORTER_LOG_FORMAT="json",
        NEO_EXPORTER_TOOL_DURATION_BUCKETS=",".join(
            map(str, BUCKETS["neo_tool_call_duration_seconds"])
        ),
        NEO_EXPORTER_RUN_CREDITS_BUCKETS=",".join(map(str, BUCKETS["neo_task_run_credits"])),
        NEO_EXPORTER_RUN_DURATION_BUCKETS=",".join(
            map(str, BUCKETS["neo_task_run_execution_seconds"])
        ),
    )
    return env


def open_ledger(path: Path) -> Ledger:
    return Ledger(path, buckets=BUCKETS, max_label_values=100)


@pytest.mark.slow
def test_kill_9_loop_keeps_totals_exact(tmp_path: Path) -> None:
    """36 SIGKILLs (or more, see below) at random moments of start-up and polling; the
    totals still match."""
    state_path = tmp_path / "state.db"
    clock = ManualClock(datetime.now(UTC))
    world = World(seed=5, clock=clock, tasks_per_day=1500)
    rng = random.Random(1234)
    truth = Truth(world)
    polls_seen = 0
    with SimulatedApi(world) as api:
        env = exporter_env(api.url, state_path)
        # At least KILLS kills, and more (bounded) until enough of the lives between them
        # got as far as finishing a poll: a slow machine kills more often during start-up.
        for kill in range(KILLS * 3):
            if kill >= KILLS and polls_seen >= KILLS // 2:
                break
            clock.advance(rng.uniform(60, 900))
            child = subprocess.Popen(
                [sys.executable, "-m", "exporter", "run"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(rng.uniform(0.25, 1.5))  # a random moment to kill it at
            child.send_signal(signal.SIGKILL)
            _, err = child.communicate()
            polls_seen += err.count(b"poll_finished")
            assert b"Traceback" not in err, err.decode()[-2000:]
            if state_path.exists():
                ledger = open_ledger(state_path)  # a killed writer leaves a readable file
                truth.after_poll(ledger)
                ledger.close()
        assert polls_seen >= KILLS // 2, "too few polls completed to prove anything"
        # One clean run to the end of a poll, then compare.
        started = time.time()
        child = subprocess.Popen(
            [sys.executable, "-m", "exporter", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert child.stderr is not None
        for line in child.stderr:  # what the daemon says, as it says it: no sleeping
            if b"poll_finished" in line:
                break
        child.send_signal(signal.SIGTERM)
        child.communicate(timeout=30)
        assert child.returncode == 0
        ledger = open_ledger(state_path)
        assert float(ledger.meta.get("recent_at", 0)) >= started, "the final poll did not finish"
        truth.after_poll(ledger)
        diff = compare(truth.expected(float(ledger.meta["baseline"])), counted(ledger))
        ledger.close()
    assert diff == {}, diff


def test_truncated_state_file_is_refused(tmp_path: Path) -> None:
    state_path = tmp_path / "state.db"
    ledger = open_ledger(state_path)
    ledger.close()
    state_path.write_bytes(state_path.read_bytes()[:50])
    with pytest.raises(StateError, match="move it aside"):
        open_ledger(state_path)
