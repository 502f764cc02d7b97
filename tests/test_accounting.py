"""Exactly-once accounting of a run's cumulative values."""

from __future__ import annotations

import itertools
import random
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from exporter.accounting import (
    Deltas,
    FirstSight,
    LabelGuard,
    Observation,
    RunState,
    _mark,
    apply,
    count_in_full,
    row_fingerprint,
    subtract_ranges,
    to_nano,
)
from exporter.models import read_usage
from tests.conftest import usage_row


def observe(**overrides: Any) -> Observation:
    return Observation.from_row(read_usage(usage_row(**overrides)))


def fold(
    old: RunState | None, obs: Observation, *, baselined: bool = False
) -> tuple[RunState, Deltas]:
    deltas = Deltas()
    state = apply(old, obs, baselined=baselined, guard=LabelGuard(10), deltas=deltas)
    return state, deltas


LABELS = ("sonnet-4.6", "completed")


def test_first_sight_counts_everything_once() -> None:
    state, deltas = fold(None, observe())
    assert deltas.counters[("neo_credits_total", LABELS)] == 1_250_000_000
    assert deltas.counters[("neo_steps_total", LABELS)] == 10
    assert deltas.counters[("neo_task_runs_total", LABELS)] == 1
    assert deltas.counters[("neo_agent_triggers_by_agent_total", ("sonnet-4.6", "recon"))] == 1
    tools = [o for o in deltas.observations if o[0] == "neo_tool_call_duration_seconds"]
    assert tools == [
        ("neo_tool_call_duration_seconds", ("sonnet-4.6", "bash"), 500),
        ("neo_tool_call_duration_seconds", ("sonnet-4.6", "http_request"), 1000),
    ]
    assert ("neo_task_run_credits", LABELS, 1_250_000_000) in deltas.observations
    assert ("neo_task_run_execution_seconds", LABELS, 6000) in deltas.observations
    assert state.finished


def test_same_row_again_adds_nothing() -> None:
    state, _ = fold(None, observe())
    _, again = fold(state, observe())
    assert again.counters == {}
    assert again.observations == []


def test_growth_adds_only_the_difference() -> None:
    state, _ = fold(None, observe())
    history = usage_row()["tool_call_history"] + [
        {"index": 2, "timestamp": 3, "tool_name": "bash", "duration_ms": 70}
    ]
    _, grown = fold(state, observe(neo_credits=2.0, step_count=13, tool_call_history=history))
    assert grown.counters[("neo_credits_total", LABELS)] == 750_000_000
    assert grown.counters[("neo_steps_total", LABELS)] == 3
    assert ("neo_task_runs_total", LABELS) not in grown.counters  # a run finishes once
    assert grown.observations == [("neo_tool_call_duration_seconds", ("sonnet-4.6", "bash"), 70)]


def test_decrease_is_recorded_never_subtracted() -> None:
    state, _ = fold(None, observe(neo_credits=2.0))
    state, shrunk = fold(state, observe(neo_credits=1.0))
    assert shrunk.counters == {}
    assert shrunk.decreases == {"credits": 1}
    _, regrown = fold(state, observe(neo_credits=2.5))
    assert regrown.counters[("neo_credits_total", LABELS)] == 500_000_000  # from the high mark


def test_baselined_run_counts_only_later_growth() -> None:
    state, first = fold(None, observe(status="running"), baselined=True)
    assert first.counters == {}
    assert first.observations == []
    _, later = fold(state, observe(step_count=15), baselined=True)
    assert later.counters == {("neo_steps_total", LABELS): 5}
    assert later.observations == []  # neither old tool calls nor per-run histograms


def test_running_run_finishes_once_with_final_values() -> None:
    running = ("sonnet-4.6", "running")
    state, first = fold(None, observe(status="running", neo_credits=0.5))
    assert first.counters[("neo_credits_total", running)] == 500_000_000
    assert ("neo_task_runs_total", running) not in first.counters
    _, done = fold(state, observe(neo_credits=1.25))
    assert done.counters[("neo_credits_total", LABELS)] == 750_000_000
    assert done.counters[("neo_task_runs_total", LABELS)] == 1
    assert ("neo_task_run_credits", LABELS, 1_250_000_000) in done.observations


def test_tool_calls_without_index_use_position() -> None:
    history = [{"tool_name": "bash", "duration_ms": 5}, {"tool_name": "bash", "duration_ms": 6}]
    state, deltas = fold(None, observe(tool_call_history=history))
    assert len(deltas.observations) == 2 + 2
    _, again = fold(state, observe(tool_call_history=history))
    assert again.observations == []


def test_label_guard_folds_overflow_into_other() -> None:
    guard = LabelGuard(2)
    assert [guard.admit("model", m) for m in ("a", "b", "c", "a")] == ["a", "b", "other", "a"]
    assert guard.overflow == {"model": 1}
    guard.forget(guard.new)
    assert guard.admit("model", "c") == "c"


def test_to_nano_is_exact() -> None:
    assert to_nano(Decimal("0.1")) * 3 == to_nano(Decimal("0.3"))
    assert to_nano(Decimal("123456.123456789")) == 123_456_123_456_789
    assert to_nano(None) == 0


def test_fingerprint_changes_with_counted_fields_only() -> None:
    def fp(**overrides: Any) -> int:
        return row_fingerprint(read_usage(usage_row(**overrides)))

    same = fp()
    assert same == fp() == fp(task_title="renamed", email="a@example.com")
    assert 0 <= same < 2**63  # fits SQLite's signed integer
    history = usage_row()["tool_call_history"]
    for changed in (
        {"step_count": 11},
        {"status": "error"},
        {"neo_credits": 1.26},
        {"llm_cost": 0},  # reported zero differs from not reported
        {"agent_breakdown": {"recon": 2}},
        {"agent_breakdown": None},
        {"tool_call_history": [*history, {"index": 2, "tool_name": "bash", "duration_ms": 1}]},
        {"created_at": "2026-11-20T10:00:01Z"},
    ):
        assert fp(**changed) != same, changed


@given(st.lists(st.integers(min_value=0, max_value=60), max_size=80))
def test_range_set_marks_each_index_once(indices: list[int]) -> None:
    ranges: list[list[int]] = []
    fresh = [i for i in indices if _mark(ranges, i)]
    assert sorted(fresh) == sorted(set(indices))
    covered = {i for start, end in ranges for i in range(start, end)}
    assert covered == set(indices)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))


@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**6), st.integers(0, 500), st.sampled_from(["running", "completed"])
        ),
        min_size=1,
        max_size=30,
    )
)
def test_counted_total_equals_high_water_mark(snapshots: list[tuple[int, int, str]]) -> None:
    """However a run's values move between polls, the counted sum is their maximum."""
    state: RunState | None = None
    credits = steps = 0
    for micro, step_count, status in snapshots:
        row = usage_row(neo_credits=micro / 10**6, step_count=step_count, status=status)
        state, deltas = fold(state, Observation.from_row(read_usage(row)))
        credits += sum(v for (n, _), v in deltas.counters.items() if n == "neo_credits_total")
        steps += sum(v for (n, _), v in deltas.counters.items() if n == "neo_steps_total")
    assert credits == max(m for m, _, _ in snapshots) * 1000
    assert steps == max(s for _, s, _ in snapshots)


def test_a_null_amount_is_not_reported_rather_than_zero() -> None:
    """A row served with null amounts neither counts nor reads as a decrease; the value
    counted so far stands, and only growth beyond it counts when a number comes back."""
    state, _ = fold(None, observe(neo_credits=1.25, total_execution_ms=6000))
    state, deltas = fold(state, observe(neo_credits=None, total_execution_ms=None))
    assert deltas.counters == {}
    assert deltas.decreases == {}
    assert (state.credits, state.exec_ms) == (1_250_000_000, 6000)
    state, deltas = fold(state, observe(neo_credits=2, total_execution_ms=6500))
    assert deltas.counters[("neo_credits_total", LABELS)] == 750_000_000
    assert deltas.counters[("neo_execution_time_seconds_total", LABELS)] == 500


SCHEMES = ("position", "zero", "per_tool", "none", "unique_shuffled")


def numbered(calls: list[tuple[str, int]], scheme: str) -> list[int | None]:
    """Indices as an API of that scheme would number a run's calls (in call order)."""
    if scheme == "position":
        return list(range(len(calls)))
    if scheme == "zero":
        return [0] * len(calls)
    if scheme == "per_tool":  # 1, 2, ... per tool name
        counts: dict[str, int] = {}
        out: list[int | None] = []
        for tool, _ in calls:
            counts[tool] = counts.get(tool, 0) + 1
            out.append(counts[tool])
        return out
    if scheme == "none":
        return [None] * len(calls)
    return [1000 + 7 * i for i in range(len(calls))]  # unique, not positions


@given(
    scheme=st.sampled_from(SCHEMES),
    calls=st.lists(st.tuples(st.sampled_from(["bash", "grep", "nmap"]), st.integers(1, 99)),
                   min_size=1, max_size=14),
    cuts=st.lists(st.integers(0, 14), min_size=1, max_size=5),
    waiting=st.sets(st.integers(0, 13), max_size=4),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_each_tool_call_is_observed_once_however_the_api_numbers_it(
    scheme: str, calls: list[tuple[str, int]], cuts: list[int], waiting: set[int], seed: int
) -> None:
    """A run's history grows at its end, row after row, its calls numbered by the API's
    scheme (positions, all 0, per tool, none, unique in another order) and some of their
    durations not reported at first: every call is observed exactly once, under its
    tool, with its duration, whatever the scheme and however the rows cut it."""
    indices = numbered(calls, scheme)
    state: RunState | None = None
    observed: list[tuple[str, int]] = []
    rows = [*sorted({min(c, len(calls)) for c in cuts}), len(calls)]
    for number, size in enumerate(rows):
        last = number == len(rows) - 1
        history: list[dict[str, object]] = []
        for position in range(size):
            tool, ms = calls[position]
            known = last or position not in waiting
            call: dict[str, object] = {"tool_name": tool, "duration_ms": ms if known else None}
            if indices[position] is not None:
                call["index"] = indices[position]
            history.append(call)
        if scheme == "unique_shuffled":
            random.Random(seed + number).shuffle(history)
        state, deltas = fold(state, observe(tool_call_history=history, status="running"))
        observed += [
            (labels[1], value)
            for name, labels, value in deltas.observations
            if name == "neo_tool_call_duration_seconds"
        ]
    assert sorted(observed) == sorted(calls)


def test_switching_between_indices_and_an_unreadable_entry_counts_each_call_once() -> None:
    """An entry that cannot be read appears between indexed calls: it takes no other
    call's identity, and is counted once it reads (found by review)."""
    state, deltas = fold(None, observe(status="running", tool_call_history=[
        {"index": 0, "tool_name": "a", "duration_ms": 10},
        {"index": 1, "tool_name": "b", "duration_ms": 20},
    ]))  # fmt: skip
    assert tool_observations(deltas) == [10, 20]
    # The decoder keeps an unreadable entry's place: a call without index or duration.
    row = read_usage(usage_row(status="running", tool_call_history=[
        {"index": 0, "tool_name": "a", "duration_ms": 10},
        {"tool_name": None, "duration_ms": None},
        {"index": 1, "tool_name": "b", "duration_ms": 20},
        {"index": 2, "tool_name": "c", "duration_ms": 30},
    ]))  # fmt: skip
    state, deltas = fold(state, Observation.from_row(row))
    assert tool_observations(deltas) == [30]


@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=6),
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=6),
)
def test_subtract_ranges_is_set_difference(
    first: list[tuple[int, int]], second: list[tuple[int, int]]
) -> None:
    def ranges(indices: set[int]) -> list[list[int]]:
        marked: list[list[int]] = []
        for index in sorted(indices):
            _mark(marked, index)
        return marked

    a = {i for start, end in first for i in range(start, end)}
    b = {i for start, end in second for i in range(start, end)}
    assert subtract_ranges(ranges(a), ranges(b)) == ranges(a - b)


# One poll's growth of a run: credits (millionths), steps, recon triggers, tool calls, and
# whether it has finished by then.
growth = st.tuples(
    st.integers(0, 10**6), st.integers(0, 20), st.integers(0, 3), st.integers(0, 4), st.booleans()
)


def snapshots(polls: list[tuple[int, int, int, int, bool]]) -> list[Observation]:
    """A run's rows, poll after poll: cumulative values, a history that grows at its end
    (each call's duration fixed), and once finished, finished for good and unchanged (the
    per-run histograms hold a run's values when first seen finished)."""
    rows: list[Observation] = []
    credits = steps = recon = calls = 0
    for more_credits, more_steps, more_recon, more_calls, ends in polls:
        if rows and rows[-1].terminal:
            rows.append(rows[-1])
            continue
        credits, steps, recon = credits + more_credits, steps + more_steps, recon + more_recon
        calls += more_calls
        history = [
            {"index": i, "tool_name": ("bash", "grep")[i % 2], "duration_ms": 100 + i}
            for i in range(calls)
        ]
        status = "completed" if ends else "running"
        agents = {"recon": recon, "triage": steps}
        rows.append(
            observe(
                neo_credits=Decimal(credits) / 10**6,
                step_count=steps,
                tool_calls=calls,
                agent_breakdown=agents,
                tool_call_history=history,
                status=status,
            )
        )
    return rows


def totals(all_deltas: list[Deltas]) -> tuple[dict[str, int], list[tuple[str, str, int]]]:
    """Counter sums by name (labels vary with the status at each poll) and observations
    by name, model or tool label, and value."""
    sums: dict[str, int] = {}
    seen: list[tuple[str, str, int]] = []
    for deltas in all_deltas:
        for (name, _labels), amount in deltas.counters.items():
            sums[name] = sums.get(name, 0) + amount
        seen += [(name, labels[-1] if "tool" in name else labels[0], value)
                 for name, labels, value in deltas.observations]  # fmt: skip
    return sums, sorted(seen)


@given(st.lists(growth, min_size=1, max_size=6), st.integers(1, 6))
def test_a_run_counted_in_full_late_counts_as_from_its_first_sight(
    polls: list[tuple[int, int, int, int, bool]], confirmed_at: int
) -> None:
    """A run taken for history in doubt, then shown to be new (``count_in_full``) at any
    poll: its counters and observations sum to what counting it in full from its first
    sight gives, neither less nor more, and later polls count only growth."""
    rows = snapshots(polls)
    confirmed_at = min(confirmed_at, len(rows))
    reference: list[Deltas] = []
    state: RunState | None = None
    for row in rows:
        state, deltas = fold(state, row)
        reference.append(deltas)
    late: list[Deltas] = []
    state, deltas = fold(None, rows[0], baselined=True)
    state.unconfirmed = FirstSight(dict(state.agents), [r[:] for r in state.tools_seen])
    late.append(deltas)
    for row in rows[1:confirmed_at]:
        state, deltas = fold(state, row, baselined=True)
        late.append(deltas)
    count_in_full(state)
    assert (state.baselined, state.uncounted, state.unconfirmed) == (False, None, None)
    # The row of the poll that confirms it (a later one, or the same again), onwards.
    for row in rows[confirmed_at:] or rows[-1:]:
        state, deltas = fold(state, row)
        late.append(deltas)
    assert totals(late) == totals(reference)
    assert state.finished == rows[-1].terminal


def history_of(*durations: int | None) -> list[dict[str, Any]]:
    return [{"index": i, "tool_name": "bash", "duration_ms": ms} for i, ms in enumerate(durations)]


def tool_observations(deltas: Deltas) -> list[int]:
    return [v for n, _, v in deltas.observations if n == "neo_tool_call_duration_seconds"]


def test_a_call_without_a_duration_counts_once_it_has_one() -> None:
    state, deltas = fold(None, observe(status="running", tool_call_history=history_of(500, None)))
    assert tool_observations(deltas) == [500]
    state, deltas = fold(
        state, observe(status="running", tool_call_history=history_of(500, None, 70))
    )
    assert tool_observations(deltas) == [70]
    state, deltas = fold(state, observe(tool_call_history=history_of(500, 900, 70)))
    assert tool_observations(deltas) == [900]
    _, deltas = fold(state, observe(tool_call_history=history_of(500, 900, 70)))
    assert tool_observations(deltas) == []


def test_a_run_before_the_baseline_keeps_its_waiting_calls_as_history() -> None:
    """Calls made before a run was first seen are history, whether or not their
    duration could be read then."""
    first = observe(status="running", tool_call_history=history_of(500, None))
    state, deltas = fold(None, first, baselined=True)
    assert deltas.observations == []
    _, deltas = fold(state, observe(tool_call_history=history_of(500, 900, 70)))
    assert tool_observations(deltas) == [70]


def test_a_value_first_reported_after_first_sight_is_history_for_a_baselined_run() -> None:
    """A run before the baseline whose credits could not be read when first seen: their
    first readable value is its first sight (what it held before is unknowable), and
    only growth after that counts."""
    state, deltas = fold(None, observe(status="running", neo_credits=None), baselined=True)
    assert deltas.counters == {}
    assert state.uncounted is not None
    assert "credits" not in state.uncounted
    state, deltas = fold(state, observe(status="running", neo_credits=2.0, step_count=12))
    assert deltas.counters == {("neo_steps_total", ("sonnet-4.6", "running")): 2}
    assert state.uncounted["credits"] == to_nano(Decimal("2.0"))  # type: ignore[index]
    _, deltas = fold(state, observe(neo_credits=2.5, step_count=12))
    assert deltas.counters[("neo_credits_total", LABELS)] == to_nano(Decimal("0.5"))


def test_counts_that_are_not_reported_are_not_counted_nor_decreases() -> None:
    state, _ = fold(None, observe(status="running"))
    _, deltas = fold(state, observe(status="running", step_count=None, tool_calls=None))
    assert deltas.counters == {}
    assert deltas.decreases == {}


def test_calls_and_agents_first_reported_after_first_sight_are_history_for_a_baselined_run() -> (
    None
):
    """A run before the baseline whose tool calls and agents were not reported when first
    seen: their first report is history too (found by review); what comes after counts."""
    first = observe(status="running", tool_call_history=None, agent_breakdown=None)
    state, deltas = fold(None, first, baselined=True)
    assert deltas.observations == []
    state, deltas = fold(state, observe(status="running", agent_breakdown={"recon": 40}))
    assert tool_observations(deltas) == []
    assert not [k for k in deltas.counters if k[0] == "neo_agent_triggers_by_agent_total"]
    later = observe(
        agent_breakdown={"recon": 41},
        tool_call_history=[
            *usage_row()["tool_call_history"],
            {"index": 2, "tool_name": "bash", "duration_ms": 70},
        ],
    )
    _, deltas = fold(state, later)
    assert tool_observations(deltas) == [70]
    assert deltas.counters[("neo_agent_triggers_by_agent_total", ("sonnet-4.6", "recon"))] == 1
