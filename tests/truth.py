"""Ground truth for exactness tests: what the exporter must have counted, from the world."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from decimal import Decimal

from exporter.accounting import NON_TERMINAL
from exporter.catalogue import NANO
from exporter.ledger import Ledger
from exporter.simulator import StreamTruth, World

FIELDS = ("credits", "steps", "tool_calls", "agent_triggers", "llm_ms", "tool_ms", "exec_ms")
COUNTER_OF = {
    "credits": "neo_credits_total",
    "steps": "neo_steps_total",
    "tool_calls": "neo_tool_calls_total",
    "agent_triggers": "neo_agent_triggers_total",
    "llm_ms": "neo_llm_time_seconds_total",
    "tool_ms": "neo_tool_time_seconds_total",
    "exec_ms": "neo_execution_time_seconds_total",
    "llm_cost": "neo_byok_llm_cost_credits_total",
    "neo_cost": "neo_byok_neo_cost_credits_total",
}


def units(stream: StreamTruth, name: str) -> int:
    """A stream's value of ``name`` in the ledger's units."""
    value = getattr(stream, name)
    if isinstance(value, Decimal):
        return int(value * NANO)
    return int(value or 0)


@dataclass
class Truth:
    """Follows the world poll by poll and says what every counter must read.

    A run that started at or after the exporter's baseline counts in full; a run that
    started before it counts only what it grew after the exporter first saw it.
    """

    world: World
    first_seen: dict[str, StreamTruth] = field(default_factory=dict)

    def after_poll(self, ledger: Ledger) -> None:
        unseen = [s for s in self.world.visible_streams() if s.stream_id not in self.first_seen]
        # Runs in memory, and those evicted to the file (started long ago, by their row).
        held = ledger.fingerprints.keys()
        if any(s.stream_id not in held for s in unseen):
            held = held | {str(row[0]) for row in ledger.query("SELECT stream_id FROM runs")}
        for stream in unseen:
            if stream.stream_id in held:
                self.first_seen[stream.stream_id] = stream

    def expected(
        self,
        baseline: float,
        *,
        only: Callable[[StreamTruth], bool] = lambda s: True,
        history: Collection[str] = (),
    ) -> dict[str, int]:
        """``history``: runs taken for started before the baseline, whenever they did."""
        totals: Counter[str] = Counter()
        for stream in self.world.visible_streams():
            if not only(stream):
                continue
            if stream.started_at.timestamp() >= baseline and stream.stream_id not in history:
                for name in (*FIELDS, "llm_cost", "neo_cost"):
                    totals[name] += units(stream, name)
                totals["tool_call_observations"] += len(stream.tool_durations)
                totals["tool_call_ms"] += sum(ms for _, ms in stream.tool_durations)
                totals["runs"] += stream.status not in NON_TERMINAL
            elif stream.stream_id in self.first_seen:
                first = self.first_seen[stream.stream_id]
                for name in (*FIELDS, "llm_cost", "neo_cost"):
                    totals[name] += units(stream, name) - units(first, name)
                new_calls = stream.tool_durations[len(first.tool_durations) :]
                totals["tool_call_observations"] += len(new_calls)
                totals["tool_call_ms"] += sum(ms for _, ms in new_calls)
        return dict(totals)


def counted(ledger: Ledger) -> dict[str, int]:
    """The ledger's totals in the same units as ``Truth.expected``."""
    totals: Counter[str] = Counter()
    by_counter = {name: key for key, name in COUNTER_OF.items()}
    for (name, _labels), value in ledger.counters.items():
        if name in by_counter:
            totals[by_counter[name]] += value
        elif name == "neo_task_runs_total":
            totals["runs"] += value
    for (name, _labels), hist in ledger.histograms.items():
        if name == "neo_tool_call_duration_seconds":
            totals["tool_call_observations"] += hist.count
            totals["tool_call_ms"] += hist.sum
    return dict(totals)


def compare(expected: dict[str, int], got: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Every key where the two differ, as (expected, counted)."""
    keys = set(expected) | set(got)
    return {
        k: (expected.get(k, 0), got.get(k, 0))
        for k in sorted(keys)
        if expected.get(k, 0) != got.get(k, 0)
    }
