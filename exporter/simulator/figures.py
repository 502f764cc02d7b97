"""Per-stream numbers: drawn lazily from a stream's own seed, viewed at any moment."""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from dataclasses import dataclass

from exporter.simulator.vocabulary import AGENTS, TOOL_CUM_WEIGHTS, TOOL_NAMES, TOOLS

MAX_TOOL_MS = 3_600_000
MIN_TOOL_MS = 50
MAX_STEPS = 300

MEDIAN_MS = {name: median for name, (_, median) in TOOLS.items()}
ToolCall = tuple[int, str, int]  # (timestamp in unix ms, tool name, duration in ms)


@dataclass(frozen=True, slots=True)
class Scalars:
    """A stream's totals when finished, and how much it grows if it settles; cheap to draw."""

    steps: int
    tool_count: int
    credits: int  # micro-credits
    llm_ms: int
    exec_ms: int
    agents: tuple[tuple[str, int], ...]
    more_steps: int = 0
    more_tool_count: int = 0
    more_credits: int = 0
    more_llm_ms: int = 0
    more_exec_ms: int = 0
    more_agents: tuple[tuple[str, int], ...] = ()

    def final(self, settled: bool) -> tuple[int, int, int, int, int]:
        """(credits, steps, tool calls, agent triggers, exec ms) once finished."""
        triggers = sum(n for _, n in self.agents)
        if not settled:
            return self.credits, self.steps, self.tool_count, triggers, self.exec_ms
        return (
            self.credits + self.more_credits,
            self.steps + self.more_steps,
            self.tool_count + self.more_tool_count,
            triggers + sum(n for _, n in self.more_agents),
            self.exec_ms + self.more_exec_ms,
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one stream will ever report: its totals plus each tool call."""

    scalars: Scalars
    tools: tuple[ToolCall, ...]  # sorted by timestamp, all inside [start, end)
    more_tools: tuple[ToolCall, ...]  # appended when the stream settles


@dataclass(frozen=True, slots=True)
class Usage:
    """What a stream reports at one moment."""

    steps: int
    credits: int  # micro-credits
    llm_ms: int
    tool_ms: int
    exec_ms: int
    agents: dict[str, int]
    tools: tuple[ToolCall, ...]

    @property
    def agent_triggers(self) -> int:
        return sum(self.agents.values())


def _tool_call(rng: random.Random, at: int, until: int) -> ToolCall:
    name = TOOL_NAMES[bisect_right(TOOL_CUM_WEIGHTS, rng.random() * TOOL_CUM_WEIGHTS[-1])]
    # Log-normal with a heavy tail: most calls are quick, a few run for many minutes;
    # none outlasts its run by much.
    duration = int(MEDIAN_MS[name] * math.exp(rng.gauss(0.0, 1.3)))
    return (at, name, max(MIN_TOOL_MS, min(MAX_TOOL_MS, until - at, duration)))


def _agents(rng: random.Random, triggers: int) -> tuple[tuple[str, int], ...]:
    if triggers == 0:
        return ()
    names = rng.sample(AGENTS, k=rng.randint(1, 3))
    counts = dict.fromkeys(names, 0)
    for _ in range(triggers):
        counts[names[int(rng.random() * len(names))]] += 1
    return tuple((name, n) for name, n in counts.items() if n)


def draw_scalars(seed: int, start: int, end: int, step_cost: int, settles: bool) -> Scalars:
    """Draw a stream's totals from its own seed (same seed, same numbers)."""
    rng = random.Random(seed)
    exec_ms = end - start
    latency = 9_000 * math.exp(rng.gauss(0.0, 0.5))
    steps = max(1, min(MAX_STEPS, round(exec_ms / latency)))
    tool_count = round(steps * rng.uniform(0.25, 0.9))
    triggers = rng.randint(0, min(steps, 12))
    credits = int(steps * step_cost * rng.uniform(0.6, 1.6)) + rng.randint(1, 999)
    llm_ms = int(exec_ms * rng.uniform(0.35, 0.75))
    agents = _agents(rng, triggers)
    if not settles:
        return Scalars(steps, tool_count, credits, llm_ms, exec_ms, agents)
    more_steps = rng.randint(1, 6)
    return Scalars(
        steps,
        tool_count,
        credits,
        llm_ms,
        exec_ms,
        agents,
        more_steps=more_steps,
        more_tool_count=rng.randint(0, 4),
        more_credits=more_steps * step_cost + rng.randint(1, 999_999),
        more_llm_ms=rng.randint(500, 30_000),
        more_exec_ms=rng.randint(1_000, 60_000),
        more_agents=_agents(rng, rng.randint(0, 2)),
    )


def draw_plan(seed: int, start: int, end: int, scalars: Scalars) -> Plan:
    """Draw each tool call of a stream, from a second seed so totals stay cheap alone."""
    rng = random.Random(seed ^ 0x5EED_70015)
    span = end - start
    stamps = sorted(start + int(rng.random() * span) for _ in range(scalars.tool_count))
    later = sorted(end + rng.randint(0, 60_000) for _ in range(scalars.more_tool_count))
    return Plan(
        scalars,
        tuple(_tool_call(rng, at, end) for at in stamps),
        tuple(_tool_call(rng, at, at + 60_000) for at in later),
    )


def credits_at(totals: Scalars, start: int, end: int, now: int, settled: bool) -> int:
    """The stream's micro-credits at ``now`` (0 before it starts), from its totals alone."""
    if now < end:
        return int(totals.credits * (max(0, now - start) / (end - start)))
    return totals.credits + totals.more_credits if settled else totals.credits


def usage_at(plan: Plan, start: int, end: int, now: int, settled: bool) -> Usage:
    """The stream's numbers at ``now``: partial while running, grown once when settled."""
    totals = plan.scalars
    if now < end:
        # Running: every number is a monotone function of elapsed time.
        share = max(0, now - start) / (end - start)
        tools = plan.tools[: bisect_right(plan.tools, (now, "\uffff", 0))]
        return Usage(
            steps=int(totals.steps * share),
            credits=credits_at(totals, start, end, now, settled),
            llm_ms=int(totals.llm_ms * share),
            tool_ms=sum(ms for _, _, ms in tools),
            exec_ms=max(0, now - start),
            agents={name: n for name, n in ((a, int(c * share)) for a, c in totals.agents) if n},
            tools=tools,
        )
    agents = dict(totals.agents)
    tools = plan.tools
    steps, credits, llm_ms, exec_ms = totals.steps, totals.credits, totals.llm_ms, totals.exec_ms
    if settled:
        for name, n in totals.more_agents:
            agents[name] = agents.get(name, 0) + n
        tools = tools + plan.more_tools
        steps += totals.more_steps
        credits += totals.more_credits
        llm_ms += totals.more_llm_ms
        exec_ms += totals.more_exec_ms
    return Usage(
        steps=steps,
        credits=credits,
        llm_ms=llm_ms,
        tool_ms=sum(ms for _, _, ms in tools),
        exec_ms=exec_ms,
        agents=agents,
        tools=tools,
    )
