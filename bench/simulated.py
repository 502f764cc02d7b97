"""Bench helpers: the simulated Neo API in a child process, and the real Exporter beside it.

The simulator runs in its own process so that its CPU is never counted as the exporter's:
the benchmarks read ``time.process_time()`` in their own process, where only the exporter
(its poller, fetch threads, ledger and exposition) runs. The child's world runs on a
``ManualClock`` that moves only when ``SimulatorProcess.advance`` says so; the parent keeps
a mirror of that clock to hand to the exporter.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import structlog

from exporter.app import Exporter
from exporter.poll import PollReport
from exporter.settings import Settings
from exporter.simulator import DEMO_API_KEY, ManualClock, SimulatedApi, World

START = datetime(2026, 3, 2, 12, tzinfo=UTC)
DAY = 86_400.0
PAGE_ROWS = 200


def quiet_logs() -> None:
    """Only warnings and errors: a poll_finished line per poll would drown the tables."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _serve(conn: Connection, seed: int, tasks_per_day: float, history: float) -> None:
    quiet_logs()
    clock = ManualClock(START)
    world = World(seed, clock, tasks_per_day=tasks_per_day, history=history)
    api = SimulatedApi(world).start()
    conn.send((api.url, len(world.tasks), len(world.streams)))
    while True:
        command, argument = conn.recv()
        if command == "advance":
            clock.advance(argument)
            world.sync()
            conn.send(None)
        elif command == "requests":
            conn.send(dict(api.requests))
        elif command == "live_tasks":
            now = world.sync()
            conn.send(sum(1 for no in world.open_tasks if world.tasks[no].status_at(now)
                          in ("active", "pending")))  # fmt: skip
        else:
            api.stop()
            conn.send(None)
            return


class SimulatorProcess:
    """A ``World`` on a manual clock served over loopback by a child process."""

    def __init__(self, *, tasks_per_day: float, history: float = DAY, seed: int = 7) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, seed, tasks_per_day, history), daemon=True
        )
        self.clock = ManualClock(START)  # the parent's mirror of the child's clock
        self._process.start()
        self.url, self.tasks, self.streams = self._conn.recv()

    def _ask(self, command: str, argument: object = None) -> Any:
        self._conn.send((command, argument))
        return self._conn.recv()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self._ask("advance", seconds)

    def requests(self) -> Counter[tuple[str, int]]:
        """Requests answered so far, by (endpoint template, status)."""
        return Counter(self._ask("requests"))

    def live_tasks(self) -> int:
        """Tasks pending or active at the current moment: each may cost one request a poll."""
        return int(self._ask("live_tasks"))

    def close(self) -> None:
        if self._process.is_alive():
            self._ask("stop")
        self._process.join(timeout=10)

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Recorded:
    """Requests the exporter sent, by what they were for."""

    counts: Counter[str] = field(default_factory=Counter)

    def kind(self, request: httpx.Request) -> str:
        path, query = request.url.path, request.url.params
        if path == "/api/v1/usage/streams":
            return "usage/streams, one task" if "task_id" in query else "usage/streams, window"
        if path == "/api/v1/tasks":
            return f"tasks?status={query.get('status', '')}"
        if path.startswith("/api/v1/tasks/"):
            return "tasks/{id}"
        if path.startswith("/api/v1/usage/tasks/"):
            return "usage/tasks/{id}"
        return path.removeprefix("/api/v1/")


class RecordingTransport(httpx.HTTPTransport):
    """An ordinary transport that also notes each request's purpose (costs microseconds)."""

    def __init__(self, recorded: Recorded) -> None:
        super().__init__()
        self.recorded = recorded

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.recorded.counts[self.recorded.kind(request)] += 1
        return super().handle_request(request)


class BenchExporter:
    """The real ``exporter.app.Exporter`` on a temporary ledger, polled by hand."""

    def __init__(
        self,
        sim: SimulatorProcess,
        *,
        lookback: float = DAY,
        recorded: Recorded | None = None,
        full_list_interval: float | None = None,  # None: the setting's default
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="neo-bench-")
        settings = Settings(
            api_url=sim.url,
            state_path=Path(self._tmp.name) / "state.db",
            lookback=lookback,
            **({} if full_list_interval is None else {"full_list_interval": full_list_interval}),
        )
        transport = RecordingTransport(recorded) if recorded is not None else None
        self.exporter = Exporter(
            settings,
            ("api_key", DEMO_API_KEY),
            host="127.0.0.1",
            port=0,
            transport=transport,
            clock=sim.clock.now,
            process_metrics=False,
        )
        # Serve (nobody scrapes) but never start the poll loop: polls are run by hand, and
        # Exporter.stop() can then shut everything down the way the daemon does.
        threading.Thread(target=self.exporter.server.serve_forever, daemon=True).start()

    def poll(self) -> tuple[PollReport, float, float]:
        """One poll: its report, exporter CPU seconds (all threads) and wall seconds."""
        cpu, wall = time.process_time(), time.perf_counter()
        report = self.exporter.poller.poll_once()
        return report, time.process_time() - cpu, time.perf_counter() - wall

    def close(self) -> None:
        self.exporter.stop()
        self._tmp.cleanup()

    def __enter__(self) -> BenchExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pages_needed(rows: int) -> int:
    return max(1, math.ceil(rows / PAGE_ROWS))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"
