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

ToolCall = tuple[int, str, int]  # (timestamp in unix ms, tool name, duration in ms)


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one stream will ever report: its finished numbers and its settle growth."""

    steps: int
    credits: int  # micro-credits
    llm_ms: int
    exec_ms: int
    agents: tuple[tuple[str, int], ...]
    tools: tuple[ToolCall, ...]  # sorted by timestamp, all inside [start, end)
    more_steps: int
    more_credits: int
    more_llm_ms: int
    more_exec_ms: int
    more_agents: tuple[tuple[str, int], ...]
    more_tools: tuple[ToolCall, ...]


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


def _tool_call(rng: random.Random, at: int) -> ToolCall:
    name = TOOL_NAMES[bisect_right(TOOL_CUM_WEIGHTS, rng.random() * TOOL_CUM_WEIGHTS[-1])]
    median = TOOLS[name][1]
    # Log-normal with a heavy tail: most calls are quick, a few run for many minutes.
    duration = int(median * math.exp(rng.gauss(0.0, 1.3)))
    return (at, name, min(MAX_TOOL_MS, max(MIN_TOOL_MS, duration)))


def _agents(rng: random.Random, triggers: int) -> tuple[tuple[str, int], ...]:
    if triggers == 0:
        return ()
    names = rng.sample(AGENTS, k=rng.randint(1, 3))
    counts = dict.fromkeys(names, 0)
    for _ in range(triggers):
        counts[names[int(rng.random() * len(names))]] += 1
    return tuple((name, n) for name, n in counts.items() if n)


def draw_plan(seed: int, start: int, end: int, step_cost: int, settles: bool) -> Plan:
    """Draw a stream's numbers from its own seed (same seed, same numbers)."""
    rng = random.Random(seed)
    exec_ms = end - start
    latency = 9_000 * math.exp(rng.gauss(0.0, 0.5))
    steps = max(1, min(MAX_STEPS, round(exec_ms / latency)))
    n_tools = round(steps * rng.uniform(0.3, 1.2))
    stamps = sorted(start + int(rng.random() * exec_ms) for _ in range(n_tools))
    tools = tuple(_tool_call(rng, at) for at in stamps)
    triggers = rng.randint(0, min(steps, 12))
    credits = int(steps * step_cost * rng.uniform(0.6, 1.6)) + rng.randint(1, 999)
    llm_ms = int(exec_ms * rng.uniform(0.35, 0.75))
    agents = _agents(rng, triggers)
    if not settles:
        return Plan(steps, credits, llm_ms, exec_ms, agents, tools, 0, 0, 0, 0, (), ())
    more_steps = rng.randint(1, 6)
    more_stamps = sorted(end + rng.randint(0, 60_000) for _ in range(rng.randint(0, 4)))
    return Plan(
        steps,
        credits,
        llm_ms,
        exec_ms,
        agents,
        tools,
        more_steps=more_steps,
        more_credits=more_steps * step_cost + rng.randint(1, 999_999),
        more_llm_ms=rng.randint(500, 30_000),
        more_exec_ms=rng.randint(1_000, 60_000),
        more_agents=_agents(rng, rng.randint(0, 2)),
        more_tools=tuple(_tool_call(rng, at) for at in more_stamps),
    )


def usage_at(plan: Plan, start: int, end: int, now: int, settled: bool) -> Usage:
    """The stream's numbers at ``now``: partial while running, grown once when settled."""
    if now < end:
        # Running: every number is a monotone function of elapsed time.
        share = max(0, now - start) / (end - start)
        tools = plan.tools[: bisect_right(plan.tools, (now, "\uffff", 0))]
        return Usage(
            steps=int(plan.steps * share),
            credits=int(plan.credits * share),
            llm_ms=int(plan.llm_ms * share),
            tool_ms=sum(ms for _, _, ms in tools),
            exec_ms=max(0, now - start),
            agents={name: n for name, n in ((a, int(c * share)) for a, c in plan.agents) if n},
            tools=tools,
        )
    agents = dict(plan.agents)
    tools = plan.tools
    steps, credits, llm_ms, exec_ms = plan.steps, plan.credits, plan.llm_ms, plan.exec_ms
    if settled:
        for name, n in plan.more_agents:
            agents[name] = agents.get(name, 0) + n
        tools = tools + plan.more_tools
        steps += plan.more_steps
        credits += plan.more_credits
        llm_ms += plan.more_llm_ms
        exec_ms += plan.more_exec_ms
    return Usage(
        steps=steps,
        credits=credits,
        llm_ms=llm_ms,
        tool_ms=sum(ms for _, _, ms in tools),
        exec_ms=exec_ms,
        agents=agents,
        tools=tools,
    )
