"""What the world looks like from outside: usage rows, task details and ground truth."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from exporter.simulator.figures import ToolCall, Usage
from exporter.simulator.model import DETAILS_STATUS, Stream, Task, from_ms, iso
from exporter.simulator.vocabulary import NEO_COST_PERCENT

if TYPE_CHECKING:
    from exporter.simulator.world import World

ROW_CACHE = 100_000
MICRO = Decimal("0.000001")


@dataclass(frozen=True)
class StreamTruth:
    """Ground truth of one visible stream: exactly what /usage/streams serves for it now."""

    task_id: str
    stream_id: str
    model: str
    status: str
    created_at: datetime  # the served created_at (stream start or task creation)
    started_at: datetime  # when the stream really started
    finished_at: datetime | None
    credits: Decimal
    steps: int
    tool_calls: int
    agent_triggers: int
    llm_ms: int
    tool_ms: int
    exec_ms: int
    llm_cost: Decimal | None
    neo_cost: Decimal | None
    tool_durations: tuple[tuple[str, int], ...]
    agents: dict[str, int] = field(hash=False)


def iso_at(ms: int) -> str:
    return iso(ms)


def money(task: Task, credits_micro: int) -> tuple[Decimal, Decimal | None, Decimal | None]:
    """(neo_credits, llm_cost, neo_cost): BYOK runs pay Neo only its platform fee."""
    if not task.byok:
        return Decimal(credits_micro) * MICRO, None, None
    fee = credits_micro * NEO_COST_PERCENT // 100
    return Decimal(fee) * MICRO, Decimal(credits_micro) * MICRO, Decimal(fee) * MICRO


def _number(value: Decimal | None) -> float | None:
    # float() of a decimal with at most 6 places prints back as the same digits.
    return None if value is None else float(value)


def _usage_fields(task: Task, usage: Usage, history: Iterable[ToolCall]) -> dict[str, Any]:
    credits, llm_cost, neo_cost = money(task, usage.credits)
    tools: dict[str, dict[str, int]] = {}
    calls = []
    for index, (stamp, name, ms) in enumerate(history):
        entry = tools.setdefault(name, {"calls": 0, "total_duration_ms": 0})
        entry["calls"] += 1
        entry["total_duration_ms"] += ms
        calls.append({"index": index, "timestamp": stamp, "tool_name": name, "duration_ms": ms})
    return {
        "step_count": usage.steps,
        "tool_calls": len(calls),
        "agent_triggers": usage.agent_triggers,
        "neo_credits": _number(credits),
        "is_byok": task.byok,
        "llm_cost": _number(llm_cost),
        "neo_cost": _number(neo_cost),
        "llm_time_ms": usage.llm_ms,
        "tool_time_ms": usage.tool_ms,
        "total_execution_ms": usage.exec_ms,
        "avg_step_latency_ms": usage.llm_ms // usage.steps if usage.steps else None,
        "agent_breakdown": dict(usage.agents),
        "tool_breakdown": tools,
        "tool_call_history": calls,
        "task_title": task.title,
    }


def stream_row(world: World, stream: Stream, now: int) -> dict[str, Any]:
    """A per-stream TaskUsage row."""
    task = stream.task
    status = stream.usage_status(now)
    row: dict[str, Any] = {
        "task_id": task.task_id,
        "stream_id": stream.stream_id,
        "model": task.model,
        "status": status,
        "created_at": iso(stream.created_at(world.created_mode)),
        "stream_count": 1,
    }
    usage = world.usage(stream, now)
    row.update(_usage_fields(task, usage, usage.tools))
    row["error_message"] = stream.error if status in ("error", "failed") else None
    if world.team:
        row["email"] = task.email
    return row


def stream_json(world: World, stream: Stream, now: int) -> str:
    """The row as JSON text, cached per stream version once the row is final."""
    version = stream.version(now)
    if version == 0:
        return json.dumps(stream_row(world, stream, now), separators=(",", ":"))
    key = (stream.no, version)
    text = world.row_cache.get(key)
    if text is None:
        if len(world.row_cache) >= ROW_CACHE:
            world.row_cache.clear()
        text = json.dumps(stream_row(world, stream, now), separators=(",", ":"))
        world.row_cache[key] = text
    return text


def listed_streams(task: Task) -> list[Stream]:
    return [s for s in task.streams if s.listed]


def task_row(world: World, task: Task, now: int) -> dict[str, Any]:
    """A per-task TaskUsage row: the sum over the task's listed streams."""
    streams = listed_streams(task)
    agents: dict[str, int] = {}
    history: list[ToolCall] = []
    steps = credits = llm_ms = tool_ms = exec_ms = 0
    for stream in streams:
        usage = world.usage(stream, now)
        steps += usage.steps
        credits += usage.credits
        llm_ms += usage.llm_ms
        tool_ms += usage.tool_ms
        exec_ms += usage.exec_ms
        history.extend(usage.tools)
        for name, n in usage.agents.items():
            agents[name] = agents.get(name, 0) + n
    last = streams[-1]
    status = last.usage_status(now)
    total = Usage(steps, 0, llm_ms, tool_ms, exec_ms, agents, ())
    row: dict[str, Any] = {
        "task_id": task.task_id,
        "model": task.model,
        "status": status,
        "created_at": iso(task.created),
        "stream_count": len(streams),
    }
    row.update(_usage_fields(task, total, history))
    # Sum money per stream, as the API would: each stream's fee is rounded on its own.
    money_parts = [money(task, world.usage(s, now).credits) for s in streams]
    row["neo_credits"] = _number(sum((m[0] for m in money_parts), Decimal(0)))
    if task.byok:
        row["llm_cost"] = _number(sum((m[1] or Decimal(0) for m in money_parts), Decimal(0)))
        row["neo_cost"] = _number(sum((m[2] or Decimal(0) for m in money_parts), Decimal(0)))
    row["error_message"] = last.error if status in ("error", "failed") else None
    if world.team:
        row["email"] = task.email
    return row


def task_info(task: Task, now: int) -> dict[str, Any]:
    return {
        "id": task.task_id,
        "status": task.status_at(now),
        "created_at": iso(task.created),
        "updated_at": iso(task.updated_at(now)),
        "model": task.model,
        "title": task.title,
        "visibility": "private",
        "created_by": task.email,
        "source": "web",
        "is_isolated": False,
        "is_scheduled": False,
    }


def task_details(task: Task, now: int) -> dict[str, Any]:
    """GET /api/v1/tasks/{id}: the task and every run that has started."""
    streams = []
    for stream in task.started_streams(now):
        summary: dict[str, Any] = {
            "stream_id": stream.stream_id,
            "status": "active" if now < stream.end else DETAILS_STATUS[stream.status],
            "created_at": iso(stream.start),
            "run_config": {"model": task.model, "mode": "agent", "max_steps": 60},
        }
        if now >= stream.end:
            summary["completed_at"] = iso(stream.end)
        streams.append(summary)
    details: dict[str, Any] = {
        "task": task_info(task, now),
        "messages": [{"role": "user", "content": task.title, "created_at": iso(task.created)}],
        "read_only": False,
        "streams": streams,
        "stream": {"hasStream": bool(streams)},
    }
    if streams:
        details["stream"].update(
            streamId=streams[-1]["stream_id"], streamStatus=streams[-1]["status"]
        )
    return details


def truth(world: World, stream: Stream, now: int) -> StreamTruth:
    task = stream.task
    usage = world.usage(stream, now)
    credits, llm_cost, neo_cost = money(task, usage.credits)
    return StreamTruth(
        task_id=task.task_id,
        stream_id=stream.stream_id,
        model=task.model,
        status=stream.usage_status(now),
        created_at=from_ms(stream.created_at(world.created_mode)),
        started_at=from_ms(stream.start),
        finished_at=from_ms(stream.end) if now >= stream.end else None,
        credits=credits,
        steps=usage.steps,
        tool_calls=len(usage.tools),
        agent_triggers=usage.agent_triggers,
        llm_ms=usage.llm_ms,
        tool_ms=usage.tool_ms,
        exec_ms=usage.exec_ms,
        llm_cost=llm_cost,
        neo_cost=neo_cost,
        tool_durations=tuple((name, ms) for _, name, ms in usage.tools),
        agents=dict(usage.agents),
    )


def totals(streams: Iterable[StreamTruth], started_since: datetime | None) -> dict[str, Any]:
    """Sums over the streams that really started at or after ``started_since``."""
    out: dict[str, Any] = dict.fromkeys(
        ("steps", "tool_calls", "agent_triggers", "runs", "llm_ms", "tool_ms", "exec_ms",
         "tool_call_count"), 0)  # fmt: skip
    out.update(credits=Decimal(0), llm_cost=Decimal(0), neo_cost=Decimal(0))
    for s in streams:
        if started_since is not None and s.started_at < started_since:
            continue
        out["credits"] += s.credits
        out["llm_cost"] += s.llm_cost or Decimal(0)
        out["neo_cost"] += s.neo_cost or Decimal(0)
        for name in ("steps", "tool_calls", "agent_triggers", "llm_ms", "tool_ms", "exec_ms"):
            out[name] += getattr(s, name)
        out["runs"] += 1
        out["tool_call_count"] += len(s.tool_durations)
    return out
