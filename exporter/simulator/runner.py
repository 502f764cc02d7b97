"""Run the simulated Neo API as a standalone process until told to stop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from exporter.simulator.clock import ScaledClock
from exporter.simulator.server import DEMO_TOKEN, SimulatedApi
from exporter.simulator.world import World

log = structlog.get_logger(__name__)


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``:port`` or ``[v6]:port`` as (host, port); an empty host means all."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address must be host:port, got {listen!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def serve(
    listen: str,
    *,
    seed: int,
    speed: float,
    tasks_per_day: float,
    api_key: str,
    token: str | None,
    live_rows: bool,
    stop: threading.Event,
    on_listening: Callable[[str], object] = lambda url: None,
) -> None:
    """Serve a world that runs ``speed`` times faster than real time until ``stop`` is set;
    ``on_listening`` is told the URL once it serves (port 0 picks a free one)."""
    host, port = split_listen(listen)
    world = World(
        seed=seed,
        clock=ScaledClock(datetime.now(UTC), speed),
        tasks_per_day=tasks_per_day,
        live_rows=live_rows,
    )
    api = SimulatedApi(world, host=host, port=port, api_key=api_key, token=token or DEMO_TOKEN)
    with api:
        log.info(
            "simulator_listening",
            url=api.url,
            seed=seed,
            speed=speed,
            tasks_per_day=tasks_per_day,
            live_rows=live_rows,
            tasks=len(world.tasks),
        )
        on_listening(api.url)
        while not stop.wait(timeout=1.0):  # wakes so that the main thread sees signals
            pass
    log.info("simulator_stopped", url=api.url)
