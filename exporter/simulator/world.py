"""The simulated account: tasks arrive, run, finish, settle and get continued as time passes."""

from __future__ import annotations

import heapq
import math
import random
import threading
import zlib
from bisect import bisect, insort
from collections import Counter
from datetime import datetime
from typing import Any

from exporter.simulator import views
from exporter.simulator.clock import Clock
from exporter.simulator.figures import (
    Plan,
    Scalars,
    Usage,
    credits_at,
    draw_plan,
    draw_scalars,
    usage_at,
)
from exporter.simulator.model import Stream, Task, new_uuid, to_ms
from exporter.simulator.views import StreamTruth
from exporter.simulator.vocabulary import (
    BYOK_SHARE,
    EMAIL_WEIGHTS,
    EMAILS,
    ERROR_MESSAGES,
    HOSTS,
    MODEL_STEP_COST,
    MODEL_WEIGHTS,
    MODELS,
    TITLE_TEMPLATES,
    USAGE_STATUSES,
    USAGE_WEIGHTS,
)

DAY_MS = 86_400_000
START, VISIBLE, SETTLE, CONTINUE = 0, 1, 2, 3
SETTLE_SHARE = 0.10
CONTINUE_SHARE = 0.08
OLD_CONTINUATIONS = 4  # tasks older than a day continued in the first simulated hour
PLAN_CACHE = 50_000
MODEL_CUM = tuple(sum(MODEL_WEIGHTS[: i + 1]) for i in range(len(MODEL_WEIGHTS)))
STATUS_CUM = tuple(sum(USAGE_WEIGHTS[: i + 1]) for i in range(len(USAGE_WEIGHTS)))
EMAIL_CUM = tuple(sum(EMAIL_WEIGHTS[: i + 1]) for i in range(len(EMAIL_WEIGHTS)))
Key = tuple[int, str, int]  # (served created_at ms, id, number): the list indexes' sort key


class World:
    """A deterministic simulated Neo account that evolves lazily with its clock.

    Everything is drawn from ``random.Random(seed)`` in time order, so the same seed and the
    same clock readings give the same world however often it is looked at.

    ``hidden_share`` N > 0: one stream in N (a stable choice by stream ID) among those that
    start after the world was created is in no usage list (/usage/streams, /usage/tasks and
    its per-task sums, /usage/tasks/{id}) yet counts in /usage/summary, and its task's
    details still show it; ``hidden_streams()`` says which. History is never hidden.

    ``stream_created_at``: the date a stream's usage row carries, its own start
    ("stream") or its task's creation ("task"); ``stream_filtered_by``: the date `from`
    and `to` filter the stream listings on, and order them by (the row's, unless told).
    """

    def __init__(
        self,
        seed: int,
        clock: Clock,
        tasks_per_day: float = 2000,
        history: float = 3 * 86400,
        live_rows: bool = False,
        stream_created_at: str = "stream",
        stream_filtered_by: str | None = None,
        team: bool = False,
        hidden_share: int = 0,
    ) -> None:
        if stream_created_at not in ("stream", "task"):
            raise ValueError("stream_created_at must be 'stream' or 'task'")
        if stream_filtered_by not in (None, "stream", "task"):
            raise ValueError("stream_filtered_by must be 'stream' or 'task'")
        if tasks_per_day <= 0:
            raise ValueError("tasks_per_day must be positive")
        if hidden_share < 0:
            raise ValueError("hidden_share must be 0 (off) or a positive N (1 stream in N)")
        self.seed = seed
        self.clock = clock
        self.live_rows = live_rows
        self.created_mode = stream_created_at
        # What `from`/`to` filter and order the stream listings by: the same date as the
        # rows carry unless told otherwise (the reference leaves both open).
        self.filter_mode = stream_filtered_by or stream_created_at
        self.team = team
        self.tasks_per_day = tasks_per_day
        self.hidden_share = hidden_share
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._mean_gap = DAY_MS / tasks_per_day
        self.start_ms = to_ms(clock.now())
        origin = self.start_ms - int(history * 1000)
        self.tasks: list[Task] = []
        self.task_by_id: dict[str, Task] = {}
        self.streams: list[Stream] = []
        self.stream_by_id: dict[str, Stream] = {}
        self.stream_index: list[Key] = []  # listed streams, ascending
        self.task_index: list[Key] = []  # listed tasks, ascending
        self.hidden_index: list[Key] = []  # streams in no list but in the summary, ascending
        self.open_tasks: set[int] = set()  # tasks that may be pending or active
        self._events: list[tuple[int, int, int, int]] = []  # (ms, kind, sequence, ref)
        self._seq = 0
        self._new_streams: list[Key] = []
        self._new_tasks: list[Key] = []
        self._new_hidden: list[Key] = []
        self._plans: dict[int, Plan] = {}
        self._scalars: dict[int, Scalars] = {}
        self.memo: dict[object, Any] = {}  # answers valid for one moment (memo_at)
        self.memo_at = 0
        self.row_cache: dict[tuple[int, int], str] = {}  # (stream no, version) -> JSON
        self._next_arrival = origin + self._arrival_gap(origin)
        self.synced = origin
        self._target = origin
        self._sync_to(self.start_ms)
        self._continue_old_tasks()

    def owns(self, task: Task) -> bool:
        """Whether the key's owner created ``task`` (always, but in a team admin's view)."""
        return not self.team or task.email == EMAILS[0]

    @property
    def lock(self) -> threading.RLock:
        """Held while answering one request, so that it sees one consistent moment."""
        return self._lock

    # -- time -------------------------------------------------------------------------

    def sync(self) -> int:
        """Generate everything up to the clock's now; returns now in unix ms."""
        with self._lock:
            now = to_ms(self.clock.now())
            if now > self.synced:
                self._sync_to(now)
            return self.synced

    def _sync_to(self, target: int) -> None:
        self._target = target
        events = self._events
        while True:
            arrival = self._next_arrival
            top = events[0][0] if events else math.inf
            if arrival <= top:
                if arrival > target:
                    break
                self._arrive(arrival)
                self._next_arrival = arrival + self._arrival_gap(arrival)
            else:
                if top > target:
                    break
                at, kind, _, ref = heapq.heappop(events)
                self._handle(at, kind, ref)
        self.synced = target
        self.open_tasks = {no for no in self.open_tasks if target < self.tasks[no].streams[-1].end}
        self._merge_new()

    def _merge_new(self) -> None:
        _merge(self.stream_index, self._new_streams)
        _merge(self.task_index, self._new_tasks)
        _merge(self.hidden_index, self._new_hidden)

    def _arrival_gap(self, at: int) -> int:
        # Poisson arrivals with a gentle daily rhythm (busier in the afternoon UTC).
        phase = 2 * math.pi * ((at % DAY_MS) / DAY_MS - 0.4)
        rate = (1 + 0.4 * math.cos(phase)) / self._mean_gap
        return max(1, int(self._rng.expovariate(rate)))

    def _at(self, at: int, kind: int, ref: int) -> None:
        if kind != CONTINUE and at <= self._target:
            self._handle(at, kind, ref)
        else:
            self._seq += 1
            heapq.heappush(self._events, (at, kind, self._seq, ref))

    def _handle(self, at: int, kind: int, ref: int) -> None:
        if kind == CONTINUE:
            task = self.tasks[ref]
            if task.next_continue == at:  # otherwise superseded by a forced continuation
                task.next_continue = 0
                self._add_stream(task, at + self._rng.randint(1_000, 20_000))
        elif (kind == START and self.live_rows) or (kind == VISIBLE and not self.live_rows):
            stream = self.streams[ref]
            created = stream.created_at(self.filter_mode)
            if self.hidden_share and self.is_hidden(stream):
                self._new_hidden.append((created, stream.stream_id, stream.no))
                return
            stream.listed = True
            self._new_streams.append((created, stream.stream_id, stream.no))
            task = stream.task
            if not task.listed:
                task.listed = True
                self._new_tasks.append((task.created, task.task_id, task.no))

    # -- generation ---------------------------------------------------------------------

    def _arrive(self, at: int) -> None:
        # Hot path (150k calls for a busy account): plain random() draws instead of choices().
        draw = self._rng.random
        model = MODELS[bisect(MODEL_CUM, draw() * MODEL_CUM[-1])]
        email = EMAILS[bisect(EMAIL_CUM, draw() * EMAIL_CUM[-1])]
        template = TITLE_TEMPLATES[int(draw() * len(TITLE_TEMPLATES))]
        title = template.format(host=HOSTS[int(draw() * len(HOSTS))])
        task = Task(len(self.tasks), new_uuid(self._rng), at, model, email, title,
                    draw() < BYOK_SHARE)  # fmt: skip
        self.tasks.append(task)
        self.task_by_id[task.task_id] = task
        self._add_stream(task, at + 1_000 + int(draw() * 29_000))

    def _add_stream(self, task: Task, start: int) -> Stream:
        rng = self._rng
        draw = rng.random
        # Heavy-tailed run time: median four minutes, from seconds up to two hours.
        duration = int(min(7_200_000, max(5_000, 240_000 * math.exp(rng.gauss(0.0, 1.2)))))
        end = start + duration
        visible = end + min(300_000, 2_000 + int(rng.expovariate(1 / 40_000)))
        status = USAGE_STATUSES[bisect(STATUS_CUM, draw() * STATUS_CUM[-1])]
        error: str | None = ERROR_MESSAGES[int(draw() * len(ERROR_MESSAGES))]
        if status not in ("error", "failed"):
            error = None
        settle = visible + 120_000 + int(draw() * 1_080_000)
        if draw() >= SETTLE_SHARE:
            settle = 0
        stream = Stream(len(self.streams), task, new_uuid(rng), rng.getrandbits(62), start, end,
                        visible, settle, status, error)  # fmt: skip
        self.streams.append(stream)
        self.stream_by_id[stream.stream_id] = stream
        task.streams.append(stream)
        self.open_tasks.add(task.no)
        if draw() < CONTINUE_SHARE:
            if draw() < 0.7:
                gap = int(600_000 * math.exp(rng.gauss(0.0, 1.0)))
            else:
                gap = 3_600_000 + int(draw() * (3 * DAY_MS - 3_600_000))
            task.next_continue = end + gap
            self._at(task.next_continue, CONTINUE, task.no)
        self._at(start, START, stream.no)
        self._at(visible, VISIBLE, stream.no)
        if settle:
            self._at(settle, SETTLE, stream.no)
        return stream

    def _continue_old_tasks(self) -> None:
        """Guarantee a few continuations of tasks older than a day in the first hour."""
        now = self.synced
        old = [
            t
            for t in self.tasks
            if t.created < now - DAY_MS - 3_600_000 and not t.next_continue
            and t.streams[-1].end < now
        ]  # fmt: skip
        for task in self._rng.sample(old, k=min(OLD_CONTINUATIONS, len(old))):
            task.next_continue = now + self._rng.randint(120_000, 2_700_000)
            self._at(task.next_continue, CONTINUE, task.no)

    def continue_task(self, task_id: str) -> str:
        """Continue a task now (or as soon as its current run ends); returns the planned time."""
        with self._lock:
            now = self.sync()
            task = self.task_by_id[task_id]
            at = max(now, task.streams[-1].end + 1_000)
            task.next_continue = at
            self.open_tasks.add(task.no)
            if at <= now:
                self._handle(at, CONTINUE, task.no)
                self._merge_new()
            else:
                self._at(at, CONTINUE, task.no)
            return views.iso_at(at)

    # -- numbers ---------------------------------------------------------------------------

    def scalars(self, stream: Stream) -> Scalars:
        """A stream's totals, kept for good: small, and all the summary needs."""
        with self._lock:
            found = self._scalars.get(stream.no)
            if found is None:
                cost, settles = MODEL_STEP_COST[stream.task.model], bool(stream.settle)
                found = draw_scalars(stream.seed, stream.start, stream.end, cost, settles)
                self._scalars[stream.no] = found
            return found

    def plan(self, stream: Stream) -> Plan:
        """A stream's tool calls too; bounded cache, redrawn from the seed when evicted."""
        with self._lock:
            plan = self._plans.get(stream.no)
            if plan is None:
                if len(self._plans) >= PLAN_CACHE:
                    self._plans.clear()
                plan = draw_plan(stream.seed, stream.start, stream.end, self.scalars(stream))
                self._plans[stream.no] = plan
            return plan

    def usage(self, stream: Stream, now: int) -> Usage:
        settled = bool(stream.settle) and now >= stream.settle
        return usage_at(self.plan(stream), stream.start, stream.end, now, settled)

    def credits_at(self, stream: Stream, now: int) -> int:
        """A stream's micro-credits at ``now`` (as ``usage(stream, now).credits``), cheaply."""
        settled = bool(stream.settle) and now >= stream.settle
        return credits_at(self.scalars(stream), stream.start, stream.end, now, settled)

    def listed_from(self, stream: Stream) -> int:
        """When the stream's row appears (or, hidden, when the summary starts counting it)."""
        return stream.start if self.live_rows else stream.visible

    def is_hidden(self, stream: Stream) -> bool:
        """Whether ``hidden_share`` keeps this stream out of every usage list."""
        if not self.hidden_share or stream.start <= self.start_ms:
            return False
        return zlib.crc32(stream.stream_id.encode()) % self.hidden_share == 0

    # -- ground truth ------------------------------------------------------------------------

    def task_ids(self) -> list[str]:
        with self._lock:
            self.sync()
            return [t.task_id for t in self.tasks]

    def visible_streams(self) -> list[StreamTruth]:
        """Every stream with a row in /usage/streams, exactly as served now."""
        with self._lock:
            now = self.sync()
            return [views.truth(self, self.streams[no], now) for _, _, no in self.stream_index]

    def hidden_streams(self) -> list[StreamTruth]:
        """Every stream the summary counts that no usage list shows (``hidden_share``), as
        it is now: what an exporter reading the lists must miss."""
        with self._lock:
            now = self.sync()
            return [views.truth(self, self.streams[no], now) for _, _, no in self.hidden_index]

    def truth_totals(self, started_since: datetime | None = None) -> dict[str, Any]:
        return views.totals(self.visible_streams(), started_since)

    def tasks_by_status(self) -> Counter[tuple[str, str]]:
        """Task-details status of every task created so far, by model."""
        with self._lock:
            now = self.sync()
            return Counter((t.model, t.status_at(now)) for t in self.tasks)

    def row_for(self, stream: StreamTruth | str) -> dict[str, Any]:
        """The /usage/streams row of one stream as served now (without faults)."""
        with self._lock:
            now = self.sync()
            ident = stream if isinstance(stream, str) else stream.stream_id
            return views.stream_row(self, self.stream_by_id[ident], now)


def _merge(index: list[Key], new: list[Key]) -> None:
    if len(new) > 32:
        index.extend(new)
        index.sort()
    else:
        for key in new:
            insort(index, key)
    new.clear()
