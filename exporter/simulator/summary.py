"""The account totals of the simulated API: /usage/summary and the credit balance."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from exporter.simulator.model import Stream, Task, from_ms, iso
from exporter.simulator.queries import BadRequest, Params, window
from exporter.simulator.views import money

if TYPE_CHECKING:
    from exporter.simulator.world import World

ISSUED_YEAR = 365 * 86_400_000


def summary(
    world: World, now: int, params: Params, at: int | None = None, reset: int | None = None
) -> dict[str, Any]:
    """GET /usage/summary: account totals over the listed (and hidden) streams in
    [from, to), as the account was at ``at`` (default ``now``); after a credit reset at
    ``reset`` (at or before ``at``), the credit totals count only what was spent after it."""
    if world.memo_at != now:
        world.memo.clear()
        world.memo_at = now
    at = now if at is None else min(at, now)
    key = ("summary", tuple(sorted(params.items())), at, reset)
    if key not in world.memo:
        world.memo[key] = _summary(world, at, params, reset)
    result: dict[str, Any] = world.memo[key]
    return result


def _counted(world: World, at: int, params: Params) -> list[Stream]:
    """The streams the summary counts at ``at``: listed by then (hidden ones too)."""
    keys = window(world.stream_index, params)
    if world.hidden_index:
        keys = keys + window(world.hidden_index, params)
    if at >= world.synced:
        return [world.streams[no] for _, _, no in keys]
    return [s for s in (world.streams[no] for _, _, no in keys) if world.listed_from(s) <= at]


def _summed_status(world: World, task: Task, at: int) -> str:
    """The task's usage status as the summary sees it: its last stream counted by ``at``."""
    for stream in reversed(task.streams):
        if world.listed_from(stream) <= at:
            return stream.usage_status(at)
    raise AssertionError("a counted stream's task has no counted stream")


def _summary(world: World, now: int, params: Params, reset: int | None) -> dict[str, Any]:
    group_by = params.get("group_by")
    if group_by not in (None, "day", "week", "month"):
        raise BadRequest("group_by must be day, week or month")
    credits = Decimal(0)
    steps = calls = triggers = exec_ms = 0
    by_model: dict[str, dict[str, Any]] = {}
    by_email: dict[str, dict[str, Any]] = {}
    by_period: dict[str, dict[str, Any]] = {}
    byok_llm, byok_neo, byok_streams = Decimal(0), Decimal(0), 0
    tasks: dict[str, str] = {}
    byok_tasks: set[str] = set()
    spent_tasks: set[str] = set()  # with a reset: tasks that spent after it
    for stream in _counted(world, now, params):
        task = stream.task
        version = stream.version(now)
        if version:
            micro, n_steps, n_calls, n_triggers, n_ms = world.scalars(stream).final(version == 2)
        else:  # still running: only the full plan knows how far it got
            usage = world.usage(stream, now)
            micro, n_steps, n_calls = usage.credits, usage.steps, len(usage.tools)
            n_triggers, n_ms = usage.agent_triggers, usage.exec_ms
        spent, llm_cost, neo_cost = money(task, micro)
        steps, calls = steps + n_steps, calls + n_calls
        triggers, exec_ms = triggers + n_triggers, exec_ms + n_ms
        new_task = task.task_id not in tasks
        tasks[task.task_id] = _summed_status(world, task, now)
        if reset is not None:
            spent -= money(task, world.credits_at(stream, reset))[0]
            new_task = bool(spent) and task.task_id not in spent_tasks
            if spent:
                spent_tasks.add(task.task_id)
        credits += spent
        buckets = [_bucket(by_model, task.model)] if reset is None or spent else []
        if world.team:
            buckets.append(_bucket(by_email, task.email))
        if group_by:
            buckets.append(_bucket(by_period, _period(stream, world, group_by)))
        for bucket in buckets:
            bucket["neo_credits"] += spent
            bucket["tasks"] += new_task
        if task.byok:
            byok_llm += llm_cost or 0
            byok_neo += neo_cost or 0
            byok_streams += 1
            byok_tasks.add(task.task_id)
    statuses: dict[str, int] = {}
    for status in tasks.values():
        statuses[status] = statuses.get(status, 0) + 1
    if reset is None:
        reset = world.start_ms - world.start_ms % 86_400_000 - 3 * 86_400_000
    issued = Decimal(max(1000, round(world.tasks_per_day * 10)))
    out: dict[str, Any] = {
        "total_neo_credits": credits,
        "total_tasks": len(tasks),
        "by_model": by_model,
        "by_status": statuses,
        "byok": {
            "total_llm_cost": byok_llm,
            "total_neo_cost": byok_neo,
            "total_streams": byok_streams,
            "total_tasks": len(byok_tasks),
        },
        "total_steps": steps,
        "total_tool_calls": calls,
        "total_agent_triggers": triggers,
        "total_execution_ms": exec_ms,
        "total_issued_neo_credits": issued,
        "total_neo_credits_post_reset": credits,
        "total_available_neo_credits": max(Decimal(0), issued - credits),
        "last_credit_reset": iso(reset),
        "neo_credits_expires_at": iso(reset + ISSUED_YEAR),
        "neo_credits_is_expired": False,
    }
    if world.team:
        out["by_email"] = [
            {"email": email, **values}
            for email, values in sorted(by_email.items(), key=lambda kv: -kv[1]["neo_credits"])
        ]
    if group_by:
        out["by_period"] = [{"date": date, **values} for date, values in sorted(by_period.items())]
    return out


def _bucket(table: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
    return table.setdefault(key, {"neo_credits": Decimal(0), "tasks": 0})


def _period(stream: Stream, world: World, group_by: str) -> str:
    day = from_ms(stream.created_at(world.created_mode)).date()
    if group_by == "week":
        day -= timedelta(days=day.weekday())
    elif group_by == "month":
        return f"{day:%Y-%m}"
    return day.isoformat()


def credit_balance(
    world: World, now: int, at: int | None = None, reset: int | None = None
) -> dict[str, Any]:
    """GET /billing/credits, consistent with the summary's post-reset totals."""
    totals = summary(world, now, {}, at, reset)
    issued = totals["total_issued_neo_credits"]
    used = totals["total_neo_credits_post_reset"]
    return {
        "available_credits": max(Decimal(0), issued - used),
        "issued_credits": issued,
        "used_credits": used,
        "expires_at": totals["neo_credits_expires_at"],
        "is_expired": False,
        "has_payment_method": True,
        "resource_type": "team" if world.team else "user",
    }
