"""Query answering for the simulated API: filters and paging of the lists."""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from exporter.simulator.model import Task, to_ms
from exporter.simulator.views import listed_streams

if TYPE_CHECKING:
    from exporter.simulator.world import Key, World

TASK_STATUSES = frozenset({"active", "completed", "error", "pending", "aborted", "suspended"})
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


def window(index: list[Key], params: Params) -> list[Key]:
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
    keys = window(world.stream_index, params)
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
            if (lo is None or s.created_at(world.filter_mode) >= lo)
            and (hi is None or s.created_at(world.filter_mode) < hi)
        ]  # fmt: skip
        pool.sort(key=lambda s: (s.created_at(world.filter_mode), s.stream_id), reverse=True)
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
    keys = window(world.task_index, params)
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
