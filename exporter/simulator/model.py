"""The world's entities: tasks and their streams (runs), as compact timelines in unix ms."""

from __future__ import annotations

import random
from datetime import UTC, datetime

# Usage status of a finished stream -> status of the stream and task on the task-details API.
DETAILS_STATUS = {
    "completed": "completed",
    "error": "error",
    "failed": "error",
    "aborted": "aborted",
    "blocked": "suspended",  # e.g. a spending cap stopped the run; it may be continued
}


def to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def iso(ms: int) -> str:
    """RFC 3339 in UTC with millisecond precision, as the API serves timestamps."""
    moment = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def new_uuid(rng: random.Random) -> str:
    """A version-4 UUID drawn from ``rng`` (never from the global random module)."""
    value = rng.getrandbits(128)
    value = (value & ~(0xF << 76)) | (0x4 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Task:
    """One task: who, what model, and its streams in start order."""

    __slots__ = (
        "byok",
        "created",
        "email",
        "listed",
        "model",
        "next_continue",
        "no",
        "streams",
        "task_id",
        "title",
    )

    def __init__(
        self, no: int, task_id: str, created: int, model: str, email: str, title: str, byok: bool
    ) -> None:
        self.no = no
        self.task_id = task_id
        self.created = created
        self.model = model
        self.email = email
        self.title = title
        self.byok = byok
        self.streams: list[Stream] = []
        self.next_continue = 0  # unix ms of a planned continuation, 0 when none
        self.listed = False  # has a row in /usage/tasks

    def status_at(self, now: int) -> str:
        """Task-details status, derived from the latest stream."""
        last = self.streams[-1]
        if now < last.start:
            return "pending"
        if now < last.end:
            return "active"
        return DETAILS_STATUS[last.status]

    def updated_at(self, now: int) -> int:
        last = self.streams[-1]
        if now < last.start:
            return max(self.created, last.start - 30_000)
        return min(now, last.end)

    def started_streams(self, now: int) -> list[Stream]:
        return [s for s in self.streams if s.start <= now]


class Stream:
    """One run of a task; its numbers are drawn lazily from ``seed``."""

    __slots__ = (
        "end",
        "error",
        "listed",
        "no",
        "seed",
        "settle",
        "start",
        "status",
        "stream_id",
        "task",
        "visible",
    )

    def __init__(
        self,
        no: int,
        task: Task,
        stream_id: str,
        seed: int,
        start: int,
        end: int,
        visible: int,
        settle: int,
        status: str,
        error: str | None,
    ) -> None:
        self.no = no
        self.task = task
        self.stream_id = stream_id
        self.seed = seed
        self.start = start
        self.end = end
        self.visible = visible  # the terminal usage row appears at this moment
        self.settle = settle  # the row grows once more at this moment; 0 when never
        self.status = status  # final usage status
        self.error = error
        self.listed = False  # has a row in /usage/streams

    def created_at(self, mode: str) -> int:
        """The row's served ``created_at``: the stream's start, or its task's creation."""
        return self.start if mode == "stream" else self.task.created

    def usage_status(self, now: int) -> str:
        return self.status if now >= self.visible else "running"

    def version(self, now: int) -> int:
        """0 while running or not yet final, 1 once final, 2 once settled."""
        if now < self.visible:
            return 0
        return 2 if self.settle and now >= self.settle else 1
