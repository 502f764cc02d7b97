"""Query answering for the simulated API: filters, paging and account totals."""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from exporter.simulator.model import Stream, Task, from_ms, iso, to_ms
from exporter.simulator.views import listed_streams, money

if TYPE_CHECKING:
    from exporter.simulator.world import Key, World

TASK_STATUSES = frozenset({"active", "completed", "error", "pending", "aborted", "suspended"})
ISSUED_YEAR = 365 * 86_400_000
Params = Mapping[str, str]


class BadRequest(ValueError):
    """A query the real API would refuse with 400 invalid_request."""


def _int(params: Params, name: str, default: int, low: int, high: int | None) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"{name} must be {bound}")
    return value


def _time(params: Params, name: str) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace(" ", "+"))
    except ValueError:
        raise BadRequest(f"{name} must be an RFC 3339 date-time") from None
    return to_ms(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _bool(params: Params, name: str) -> bool | None:
    raw = params.get(name)
    if raw is None:
        return None
    if raw.lower() not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false")
    return raw.lower() == "true"


@dataclass(frozen=True)
class Page:
    items: list[Any]
    total: int
    has_more: bool


def _window(index: list[Key], params: Params) -> list[Key]:
    """Index entries with served created_at in [from, to), oldest first."""
    lo, hi = _time(params, "from"), _time(params, "to")
    left = bisect_left(index, (lo,)) if lo is not None else 0
    right = bisect_left(index, (hi,)) if hi is not None else len(index)
    return index[left:right]


def _task_filter(params: Params) -> Callable[[Task], bool]:
    model, email, search = params.get("model"), params.get("email"), params.get("search")
    byok = _bool(params, "is_byok")

    def keep(task: Task) -> bool:
        if model is not None and task.model != model:
            return False
        if email is not None and task.email != email:
            return False
        if byok is not None and task.byok != byok:
            return False
        needle = (search or "").lower()
        return not needle or needle in task.task_id or needle in task.email.lower()

    return keep


def page_limit(params: Params) -> int:
    """The ``limit`` a usage list request asks for (400 if out of range)."""
    return _int(params, "limit", 50, 1, 200)


def _page(matches: list[Any], params: Params) -> Page:
    limit = _int(params, "limit", 50, 1, 200)
    offset = _int(params, "offset", 0, 0, None)
    items = matches[offset : offset + limit]
    return Page(items, len(matches), offset + len(items) < len(matches))


def stream_page(world: World, now: int, params: Params) -> Page:
    """GET /usage/streams: newest first by served created_at, then stream id."""
    limit = _int(params, "limit", 50, 1, 200)
    offset = _int(params, "offset", 0, 0, None)
    keys = _window(world.stream_index, params)
    status, task_id = params.get("status"), params.get("task_id")
    stream_id = params.get("stream_id")
    keep = _task_filter(params)
    sort = params.get("sort", "created_at")
    if sort not in ("created_at", "cost"):
        raise BadRequest("sort must be created_at or cost")
    if not params.keys() - {"limit", "offset", "from", "to", "sort"} and sort == "created_at":
        # The common case: slice the index directly, never touch the other rows.
        right = len(keys) - offset
        chosen = keys[max(0, right - limit) : max(0, right)][::-1]
        items = [world.streams[no] for _, _, no in chosen]
        return Page(items, len(keys), offset + len(items) < len(keys))
    if task_id is not None:
        task = world.task_by_id.get(task_id)
        pool = listed_streams(task) if task else []
        lo, hi = _time(params, "from"), _time(params, "to")
        pool = [
            s for s in pool
            if (lo is None or s.created_at(world.created_mode) >= lo)
            and (hi is None or s.created_at(world.created_mode) < hi)
        ]  # fmt: skip
        pool.sort(key=lambda s: (s.created_at(world.created_mode), s.stream_id), reverse=True)
    else:
        pool = [world.streams[no] for _, _, no in reversed(keys)]
    matches = [
        s for s in pool
        if keep(s.task) and (status is None or s.usage_status(now) == status)
        and (stream_id is None or s.stream_id == stream_id)
    ]  # fmt: skip
    if sort == "cost":
        matches.sort(key=lambda s: world.usage(s, now).credits, reverse=True)
    return _page(matches, params)


def aggregate_status(task: Task, now: int) -> str:
    return listed_streams(task)[-1].usage_status(now)


def task_page(world: World, now: int, params: Params) -> Page:
    """GET /usage/tasks: tasks with usage, newest first by task created_at."""
    keys = _window(world.task_index, params)
    status, task_id = params.get("status"), params.get("task_id")
    keep = _task_filter(params)
    matches = [
        world.tasks[no] for _, ident, no in reversed(keys)
        if (task_id is None or ident == task_id) and keep(world.tasks[no])
        and (status is None or aggregate_status(world.tasks[no], now) == status)
    ]  # fmt: skip
    return _page(matches, params)


def _cursor(no: int) -> str:
    return base64.urlsafe_b64encode(f"task:{no}".encode()).decode()


def _uncursor(raw: str) -> int:
    try:
        text = base64.urlsafe_b64decode(raw.encode()).decode()
        kind, _, no = text.partition(":")
        if kind != "task":
            raise ValueError(text)
        return int(no)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("cursor is not valid") from None


def task_list(world: World, now: int, params: Params) -> tuple[list[Task], str | None]:
    """GET /tasks: the caller's own tasks, newest first, with a keyset cursor."""
    limit = _int(params, "limit", 20, 1, 100)
    status = params.get("status")
    if status is not None and status not in TASK_STATUSES:
        raise BadRequest("status is not a task status")
    below = _uncursor(params["cursor"]) if params.get("cursor") else len(world.tasks)
    if status in ("active", "pending"):
        numbers: Any = sorted((n for n in world.open_tasks if n < below), reverse=True)
    else:
        numbers = range(below - 1, -1, -1)
    found: list[Task] = []
    for no in numbers:
        task = world.tasks[no]
        if not world.owns(task):
            continue  # a team admin lists only their own tasks here
        if status is None or task.status_at(now) == status:
            found.append(task)
            if len(found) > limit:
                break
    if len(found) > limit:
        return found[:limit], _cursor(found[limit - 1].no)
    return found, None


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
    keys = _window(world.stream_index, params)
    if world.hidden_index:
        keys = keys + _window(world.hidden_index, params)
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
