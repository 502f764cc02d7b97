"""A simulated ProjectDiscovery Neo API: a deterministic world served over real HTTP."""

from __future__ import annotations

from exporter.simulator.clock import Clock, ManualClock, ScaledClock
from exporter.simulator.faults import Faults
from exporter.simulator.runner import serve
from exporter.simulator.server import DEMO_API_KEY, DEMO_TOKEN, Journal, SimulatedApi
from exporter.simulator.views import StreamTruth
from exporter.simulator.world import World

__all__ = [
    "DEMO_API_KEY",
    "DEMO_TOKEN",
    "Clock",
    "Faults",
    "Journal",
    "ManualClock",
    "ScaledClock",
    "SimulatedApi",
    "StreamTruth",
    "World",
    "serve",
]
