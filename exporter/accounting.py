"""Exactly-once accounting: from a run's old and new cumulative values to counter deltas."""

from __future__ import annotations

import hashlib
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import count
from operator import attrgetter, eq, itemgetter
from typing import NamedTuple

import msgspec

from exporter.catalogue import (
    AGENT_BREAKDOWN,
    NANO,
    RUN_COUNTERS,
    RUN_CREDITS,
    RUN_DURATION,
    RUNS,
    TOOL_DURATION,
)
from exporter.models import TaskUsage, ToolCall

# Usage statuses are documented as terminal; anything that sounds like work in
# progress is not, nor is a status that is missing or could not be read ("unknown");
# every other value, unknown to us, is treated as final.
NON_TERMINAL = frozenset(
    {
        "running", "active", "pending", "queued", "in_progress", "started", "created",
        "suspended", "unknown",
    }
)  # fmt: skip
VALUE_FIELDS = tuple(RUN_COUNTERS)  # credits, steps, tool_calls, ...
COUNTER_NAMES = {name: spec.name for name, spec in RUN_COUNTERS.items()}
# A tool call's fields, read in C over a whole history.
_INDEX = attrgetter("index")
_TOOL_NAME = attrgetter("tool_name")
_DURATION = attrgetter("duration_ms")
_START = itemgetter(0)
GUARDED_LABELS = ("model", "status", "tool", "agent")  # capped by LabelGuard

EXEMPLAR_COUNTERS = frozenset({RUN_COUNTERS["credits"].name})
EXEMPLAR_FIELDS = tuple(f for f, name in COUNTER_NAMES.items() if name in EXEMPLAR_COUNTERS)
# Marks in RunState.uncounted: the run's agents, or its tool calls, were not reported
# when it was first seen (their first report is then history too).
LATE_AGENTS, LATE_CALLS = "~agents", "~calls"
Ranges = list[list[int]]  # sorted, disjoint half-open [start, end) ranges of counted indices


class FirstSight(NamedTuple):
    """What a baselined run held besides its values when first seen: its agents and the
    indices of its tool calls (its values are in ``RunState.uncounted``); and when that
    was (unix time)."""

    agents: dict[str, int]
    tools_seen: Ranges
    at: float = 0.0


# The n-th call of a history sharing an index with earlier ones is known as
# index + n * OCCURRENCE: past any index the API sends (a count up to 10**15).
OCCURRENCE = 10**16


def call_ids(history: Sequence[ToolCall]) -> list[int]:
    """Each tool call's identity within its run, the same in every row of the run while
    its history grows at the end: its index; for the n-th call with an index that earlier
    calls have too (an API that numbers calls per agent, or all 0), index + n * OCCURRENCE.
    A call without an index is known by its position, among the calls without one where
    others have one (as -(position + 1)): an entry that cannot be read takes no other
    call's identity."""
    indexed = any(call.index is not None for call in history)
    times: dict[int, int] = {}
    ids = []
    for position, call in enumerate(history):
        if call.index is None:
            ids.append(-(position + 1) if indexed else position)
            continue
        seen = times.get(call.index, 0)
        times[call.index] = seen + 1
        ids.append(call.index + seen * OCCURRENCE)
    return ids


def run_key(row: TaskUsage) -> str:
    """The ledger's key of a usage row's run: its stream, or its task for a row without
    one (an aggregated row)."""
    return row.stream_id or task_run_key(row.task_id)


def task_run_key(task_id: str) -> str:
    """The ledger's key of a task counted as one run, from its aggregated row."""
    return f"task:{task_id}"


def is_task_run(key: str) -> bool:
    return key.startswith("task:")


def to_nano(amount: Decimal | None) -> int:
    """Credits as integer nano-credits, so that sums never drift."""
    if amount is None:
        return 0
    return round(amount * NANO)  # to the nearest integer, ties to even


_FINGERPRINT_JSON = msgspec.json.Encoder(order="sorted")


def row_fingerprint(row: TaskUsage) -> int | None:
    """A stable 63-bit digest of what a usage row says that the ledger counts, so that
    an unchanged row is recognised without folding it again (titles and the like do
    not count). Stable across processes: it is stored with the run."""
    history = row.tool_call_history
    if history and None in map(_DURATION, history):
        return None  # a call waits for its duration: the row is folded until it has it
    text = _FINGERPRINT_JSON.encode(
        (
            row.task_id, row.model, row.status, row.created_at, row.neo_credits,
            row.llm_cost, row.neo_cost, row.step_count, row.tool_calls, row.agent_triggers,
            row.llm_time_ms, row.tool_time_ms, row.total_execution_ms,
            -1 if history is None else len(history), row.agent_breakdown,
        )
    )  # fmt: skip
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") >> 1


@dataclass(slots=True)
class RunState:
    """What the ledger has counted of one run (stream)."""

    stream_id: str
    task_id: str
    started_at: float
    model: str
    status: str
    baselined: bool = False  # first seen before the baseline: only later growth counts
    finished: bool = False  # per-run histograms and the run counter already have it
    credits: int = 0
    llm_cost: int = 0
    neo_cost: int = 0
    steps: int = 0
    tool_calls: int = 0
    agent_triggers: int = 0
    llm_ms: int = 0
    tool_ms: int = 0
    exec_ms: int = 0
    agents: dict[str, int] = field(default_factory=dict)
    tools_seen: Ranges = field(default_factory=list)
    fingerprint: int | None = None
    # A baselined run's values when first seen: the part live counters never counted,
    # which a history backfill ending at the baseline adds instead.
    uncounted: dict[str, int] | None = None
    # Set on a baselined run whose start only its row told (a row may carry its task's
    # date), while its task's details do not answer: see ``count_in_full``.
    unconfirmed: FirstSight | None = None


@dataclass(slots=True)
class Observation:
    """One usage row reduced to the integers the ledger counts."""

    stream_id: str
    task_id: str
    started_at: float
    model: str
    status: str
    values: dict[str, int]
    agents: dict[str, int]
    # The row's tool_call_history as columns, a few bytes a call: a first poll holds a
    # whole window's rows, with dozens of calls each. Tool names are shared strings.
    tools: list[str]
    durations: array[int]  # milliseconds, typecode "q"
    # Each call's identity in its run (``call_ids``); None when every index equals its
    # position (the usual case), so that new calls are a tail.
    indices: list[int] | None = None
    fingerprint: int | None = None
    # The indices of calls whose duration is not reported (yet): left out of the columns
    # above, and uncounted until a row reports them (see ``apply`` for runs before the
    # baseline, whose calls are history whatever their duration).
    waiting: list[int] | None = None
    # Whether the row reported its tool calls and its agents at all (null: not reported).
    calls_known: bool = True
    agents_known: bool = True

    @classmethod
    def from_row(cls, row: TaskUsage, fingerprint: int | None = None) -> Observation:
        history: Sequence[ToolCall] = row.tool_call_history or ()
        indices = None  # the usual case: every index equals its position
        if not all(map(eq, map(_INDEX, history), count())):
            indices = call_ids(history)
        durations: list[int | None] = list(map(_DURATION, history))
        waiting = None
        if None in durations:
            # A call whose duration is not reported (yet) is left uncounted, and its
            # index unmarked, until a row reports it: the others keep their indices.
            kept = [p for p, ms in enumerate(durations) if ms is not None]
            numbers = indices if indices is not None else range(len(history))
            waiting = [numbers[p] for p, ms in enumerate(durations) if ms is None]
            indices = [numbers[p] for p in kept]
            history = [history[p] for p in kept]
            durations = [durations[p] for p in kept]
        names: list[str | None] = list(map(_TOOL_NAME, history))
        if not all(names):  # a call without a tool name
            names = [name or "unknown" for name in names]
        # A null is "not reported", not zero: it neither counts nor looks like a
        # decrease, and the value counted so far stands until a number comes back.
        # Spelled out field by field: this runs for every row of a window.
        values: dict[str, int] = {}
        if row.neo_credits is not None:
            values["credits"] = to_nano(row.neo_credits)
        if row.llm_cost is not None:
            values["llm_cost"] = to_nano(row.llm_cost)
        if row.neo_cost is not None:
            values["neo_cost"] = to_nano(row.neo_cost)
        if row.step_count is not None:
            values["steps"] = row.step_count
        if row.tool_calls is not None:
            values["tool_calls"] = row.tool_calls
        if row.agent_triggers is not None:
            values["agent_triggers"] = row.agent_triggers
        if row.llm_time_ms is not None:
            values["llm_ms"] = row.llm_time_ms
        if row.tool_time_ms is not None:
            values["tool_ms"] = row.tool_time_ms
        if row.total_execution_ms is not None:
            values["exec_ms"] = row.total_execution_ms
        return cls(
            run_key(row),
            row.task_id,
            row.created_at.timestamp(),
            row.model or "unknown",
            (row.status or "unknown").lower(),
            values,
            dict(row.agent_breakdown or {}),
            list(map(sys.intern, names)),  # type: ignore[arg-type]
            array("q", durations),  # type: ignore[arg-type]  # from a list: faster
            indices,
            fingerprint,
            waiting,
            row.tool_call_history is not None,
            row.agent_breakdown is not None,
        )

    @property
    def terminal(self) -> bool:
        return self.status not in NON_TERMINAL


class LabelGuard:
    """Caps distinct values per label; later newcomers are folded into ``other``."""

    OTHER = "other"

    def __init__(self, limit: int, admitted: Iterable[tuple[str, str]] = ()) -> None:
        self.limit = limit
        self._admitted: dict[str, set[str]] = {}
        self.new: list[tuple[str, str]] = []  # admitted since the last commit
        self.overflow: dict[str, int] = {}
        for label, value in admitted:
            self._admitted.setdefault(label, set()).add(value)

    def admit(self, label: str, value: str) -> str:
        known = self._admitted.get(label)
        if known is not None and value in known:  # the usual case, checked first
            return value
        value = value[:120] or "unknown"
        known = self._admitted.setdefault(label, set())
        if value in known:
            return value
        if len(known) >= self.limit:
            self.overflow[label] = self.overflow.get(label, 0) + 1
            return self.OTHER
        known.add(value)
        self.new.append((label, value))
        return value

    def known(self, label: str, value: str) -> str:
        """``value`` if already admitted, else ``other``: a read that admits nothing."""
        return value if value in self._admitted.get(label, ()) else self.OTHER

    def forget(self, pending: list[tuple[str, str]]) -> None:
        """Undo admissions of a poll whose transaction was rolled back."""
        for label, value in pending:
            self._admitted.get(label, set()).discard(value)


@dataclass(slots=True)
class SeriesObservations:
    """One histogram series' observations in a poll, and the task behind each stretch of
    them (the task is the exemplar of the bucket an observation lands in)."""

    values: array[int] = field(default_factory=lambda: array("q"))  # 8 bytes a value
    ends: list[int] = field(default_factory=list)  # where each task's stretch ends in values
    tasks: list[str] = field(default_factory=list)

    def task_at(self, position: int) -> str:
        return self.tasks[bisect_right(self.ends, position)]


@dataclass
class Deltas:
    """Everything one poll adds: counter increments and histogram observations."""

    counters: dict[tuple[str, tuple[str, ...]], int] = field(default_factory=dict)
    observed: dict[tuple[str, tuple[str, ...]], SeriesObservations] = field(default_factory=dict)
    # Each model label's tool series by tool name as reported, admitted to a label once.
    tool_series: dict[str, dict[str, SeriesObservations]] = field(default_factory=dict)
    decreases: dict[str, int] = field(default_factory=dict)
    decreased_runs: list[tuple[str, str, str]] = field(default_factory=list)  # task, run, field
    # The task behind the latest increment of a counter series, for OpenMetrics exemplars.
    counter_tasks: dict[tuple[str, tuple[str, ...]], tuple[str, int]] = field(default_factory=dict)
    # Each label pair's counter keys by value field, built once a poll rather than a row.
    counter_keys: dict[tuple[str, ...], dict[str, tuple[str, tuple[str, ...]]]] = field(
        default_factory=dict
    )

    def add(self, name: str, labels: tuple[str, ...], amount: int, task_id: str = "") -> None:
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0) + amount
        if task_id and name in EXEMPLAR_COUNTERS:
            self.counter_tasks[key] = (task_id, amount)

    def observe(self, name: str, labels: tuple[str, ...], value: int, task_id: str = "") -> None:
        series = self.observed.get((name, labels))
        if series is None:
            series = self.observed[(name, labels)] = SeriesObservations()
        series.values.append(value)
        series.ends.append(len(series.values))
        series.tasks.append(task_id)

    def observe_calls(
        self,
        model: str,
        tools: Sequence[str],
        durations: Sequence[int],
        task_id: str,
        guard: LabelGuard,
    ) -> None:
        """New tool calls of one row, each under its tool's series for ``model``."""
        by_tool: defaultdict[str, list[int]] = defaultdict(list)  # in order of first call
        for tool, duration in zip(tools, durations, strict=True):
            by_tool[tool].append(duration)
        known = self.tool_series.get(model)
        if known is None:
            known = self.tool_series[model] = {}
        for tool, values in by_tool.items():
            series = known.get(tool)
            if series is None:
                label = guard.admit("tool", tool)
                key = (TOOL_DURATION.name, (model, label))
                series = self.observed.get(key)
                if series is None:
                    series = self.observed[key] = SeriesObservations()
                if label != guard.OTHER:  # a tool over the cap asks each time: it is counted
                    known[tool] = series
            series.values.extend(values)
            series.ends.append(len(series.values))
            series.tasks.append(task_id)

    @property
    def observations(self) -> list[tuple[str, tuple[str, ...], int]]:
        """Every observation as (name, labels, value), for reading, not the hot path."""
        return [
            (name, labels, value)
            for (name, labels), series in self.observed.items()
            for value in series.values
        ]


def _new_calls(ranges: Ranges, obs: Observation) -> tuple[list[str], Sequence[int]]:
    """The tools and durations of the calls of ``obs`` not yet counted; marks them
    counted in ``ranges``.

    The usual history is indexed 0..n-1 and only grows at the end: then the new calls
    are the tail past what was counted, found without looking at each call.
    """
    size = len(obs.tools)
    if obs.indices is None and (not ranges or (len(ranges) == 1 and ranges[0][0] == 0)):
        counted = ranges[0][1] if ranges else 0
        if size <= counted:
            return [], ()
        ranges[:] = [[0, size]]
        return obs.tools[counted:], obs.durations[counted:]
    indices = obs.indices if obs.indices is not None else range(size)
    fresh = [position for position, index in enumerate(indices) if _mark(ranges, index)]
    return [obs.tools[p] for p in fresh], [obs.durations[p] for p in fresh]


def _mark(ranges: Ranges, index: int) -> bool:
    """Add ``index`` to the range set; False if it was already there."""
    pos = bisect_left(ranges, index + 1, key=_START) - 1
    if pos >= 0 and ranges[pos][0] <= index < ranges[pos][1]:
        return False
    if pos >= 0 and ranges[pos][1] == index:
        ranges[pos][1] += 1
        if pos + 1 < len(ranges) and ranges[pos + 1][0] == index + 1:
            ranges[pos][1] = ranges.pop(pos + 1)[1]
    elif pos + 1 < len(ranges) and ranges[pos + 1][0] == index + 1:
        ranges[pos + 1][0] = index
    else:
        ranges.insert(pos + 1, [index, index + 1])
    return True


def apply(
    old: RunState | None,
    obs: Observation,
    *,
    baselined: bool,
    guard: LabelGuard,
    deltas: Deltas,
    ends: bool | None = None,
) -> RunState:
    """Fold an observation into a run's state, adding only its growth to ``deltas``.
    ``ends``: whether the run ends with it (by default, when its status is terminal).

    A first sight of a baselined run (started before the exporter's baseline)
    records its values without counting them; growth after that is counted.
    A value that went down is recorded in ``deltas.decreases`` and never subtracted.
    """
    model = guard.admit("model", obs.model)
    status = guard.admit("status", obs.status)
    labels = (model, status)
    silent = old is None and baselined
    counters = deltas.counters  # Deltas.add, inlined: this loop runs for every row
    keys = deltas.counter_keys.get(labels)
    if keys is None:
        keys = deltas.counter_keys[labels] = {f: (n, labels) for f, n in COUNTER_NAMES.items()}
    if old is None:  # first sight: every value reported is growth from zero
        state = RunState(
            obs.stream_id, obs.task_id, obs.started_at, obs.model, obs.status, baselined,
            **obs.values,  # type: ignore[arg-type]  # its keys are RunState's integer fields
        )  # fmt: skip
        if not silent:
            for name, now in obs.values.items():
                if now > 0:
                    key = keys[name]
                    counters[key] = counters.get(key, 0) + now
            for name in EXEMPLAR_FIELDS:
                now = obs.values.get(name, 0)
                if now > 0 and obs.task_id:
                    deltas.counter_tasks[keys[name]] = (obs.task_id, now)
    late: dict[str, int] | None = None
    if old is not None:
        state = old
        # A run before the baseline whose field was not reported when first seen: the
        # first value reported is its first sight, history like the rest of it.
        late = state.uncounted if state.baselined and state.uncounted is not None else None
        for name, now in obs.values.items():  # only the fields the row reported
            if late is not None and name not in late:
                late[name] = now
                setattr(state, name, now)
                continue
            before = getattr(state, name)
            if now > before:
                if not silent:
                    key = keys[name]
                    counters[key] = counters.get(key, 0) + now - before
                    if key[0] in EXEMPLAR_COUNTERS and obs.task_id:
                        deltas.counter_tasks[key] = (obs.task_id, now - before)
                setattr(state, name, now)
            elif now < before:
                deltas.decreases[name] = deltas.decreases.get(name, 0) + 1
                deltas.decreased_runs.append((obs.task_id, obs.stream_id, name))
    # So are its agents and tool calls, when they were not reported at its first sight.
    hush_agents = silent or (late is not None and LATE_AGENTS in late and obs.agents_known)
    hush_calls = silent or (late is not None and LATE_CALLS in late and obs.calls_known)
    if late is not None:
        if hush_agents:
            late.pop(LATE_AGENTS, None)
        if hush_calls:
            late.pop(LATE_CALLS, None)
    for agent, now in obs.agents.items():
        before = state.agents.get(agent, 0)
        if now > before:
            if not hush_agents:
                deltas.add(AGENT_BREAKDOWN.name, (model, guard.admit("agent", agent)), now - before)
            state.agents[agent] = now
        elif now < before:
            deltas.decreases["agent_breakdown"] = deltas.decreases.get("agent_breakdown", 0) + 1
            deltas.decreased_runs.append((obs.task_id, obs.stream_id, "agent_breakdown"))
    if silent:  # what it held when first seen: the fields reported then
        state.uncounted = {
            name: getattr(state, name) for name in VALUE_FIELDS if name in obs.values
        }
        if not obs.agents_known:
            state.uncounted[LATE_AGENTS] = 0
        if not obs.calls_known:
            state.uncounted[LATE_CALLS] = 0
    tools, durations = _new_calls(state.tools_seen, obs)
    if tools and not hush_calls:
        deltas.observe_calls(model, tools, durations, obs.task_id, guard)
    if hush_calls and obs.waiting:  # calls made before it was first seen are history too
        for index in obs.waiting:
            _mark(state.tools_seen, index)
    if (obs.terminal if ends is None else ends) and not state.finished:
        state.finished = True
        if not state.baselined:
            deltas.add(RUNS.name, labels, 1)
            deltas.observe(RUN_CREDITS.name, labels, state.credits, obs.task_id)
            deltas.observe(RUN_DURATION.name, labels, state.exec_ms, obs.task_id)
    state.model, state.status, state.fingerprint = obs.model, obs.status, obs.fingerprint
    return state


def confirm_start(state: RunState, started: float, baseline: float) -> bool:
    """A run taken for history in doubt, now that its start is known (from its task's
    details, or from its row when they answered without it or never will): counted in
    full if it started after the baseline (returns True), history indeed if not."""
    state.started_at = started
    if started >= baseline:
        count_in_full(state)  # the fold of its row counts the rest
        return True
    state.unconfirmed = None
    return False


def hold_in_doubt(state: RunState, first: bool, stamp: float) -> None:
    """Keep what a run taken for history in doubt held when first seen (at ``stamp``),
    and have its row read and folded at every poll (no fingerprint to find it
    unchanged by)."""
    if first:
        state.unconfirmed = FirstSight(dict(state.agents), [r[:] for r in state.tools_seen], stamp)
    state.fingerprint = None


def count_in_full(state: RunState) -> None:
    """A run taken for history (baselined) turned out to have started after the baseline:
    bring its state back to what the counters hold of it, so that folding its row next
    counts the rest, as if it had been counted in full from its first sight. That rest is
    its first-sight values, agents and tool calls, and the run itself if it has finished.

    Only an ``unconfirmed`` run can be counted in full: it keeps its first sight for that.
    """
    first = state.unconfirmed
    if first is None or not state.baselined:
        raise ValueError(f"run {state.stream_id} was not taken for history in doubt")
    for name, amount in (state.uncounted or {}).items():
        if name not in (LATE_AGENTS, LATE_CALLS):
            setattr(state, name, getattr(state, name) - amount)
    for agent, amount in first.agents.items():
        left = state.agents.get(agent, 0) - amount
        if left > 0:
            state.agents[agent] = left
        else:
            state.agents.pop(agent, None)
    state.tools_seen = subtract_ranges(state.tools_seen, first.tools_seen)
    state.baselined = state.finished = False
    state.uncounted = state.unconfirmed = None


def subtract_ranges(ranges: Ranges, taken: Ranges) -> Ranges:
    """The indices of ``ranges`` not in ``taken``, as ranges."""
    left: Ranges = []
    for first, end in ranges:
        start = first
        for cut_start, cut_end in taken:
            if cut_end <= start or cut_start >= end:
                continue
            if cut_start > start:
                left.append([start, cut_start])
            start = max(start, cut_end)
            if start >= end:
                break
        if start < end:
            left.append([start, end])
    return left
