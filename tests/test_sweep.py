"""The sweep's rules (exporter.poll.sweep), by table; a sweep against the simulated API
is in test_reconcile."""

from __future__ import annotations

from dataclasses import replace

import pytest

from exporter.poll.sweep import (
    SLICE,
    THRESHOLD,
    SweepState,
    after_slice,
    left_after,
    next_slice,
    sweep_due,
)
from exporter.poll.timing import DAY, Timing

T = 1_800_000_000.0
TIMING = Timing(DAY)  # a reconciliation every 5 minutes
GAP = 5 * THRESHOLD


@pytest.mark.parametrize(
    ("state", "gap", "starts"),
    [
        (SweepState(), GAP, False),  # first seen now: not lasting yet
        (SweepState(gap_since=T - 300), GAP, False),  # one reconciliation ago
        (SweepState(gap_since=T - 600), GAP, True),  # two: a sweep starts
        (SweepState(gap_since=T - 600), -GAP, False),  # counted beyond: nothing to find
        (SweepState(gap_since=T - 600), THRESHOLD, False),  # rounding
        (SweepState(gap_since=T - 600), None, False),  # not known
        (SweepState(gap_since=T - 600, swept_gap=GAP - THRESHOLD), GAP, False),  # left
        (SweepState(gap_since=T - 600, swept_gap=GAP - 2 * THRESHOLD), GAP, True),  # grew
    ],
)
def test_a_sweep_starts_for_a_gap_that_lasts(
    state: SweepState, gap: int | None, starts: bool
) -> None:
    due = sweep_due(state, gap, T, T - DAY, TIMING)
    assert due.active == starts
    if starts:
        assert (due.since, due.next, due.gap) == (T - 30 * DAY, T - DAY, gap)
    assert (due.gap_since is None) == (gap is None or gap <= THRESHOLD)


def test_a_sweep_in_progress_is_not_started_again() -> None:
    going = SweepState(since=T - 30 * DAY, next=T - 5 * DAY, requests=7, gap_since=T - 900)
    assert sweep_due(going, GAP, T, T - DAY, TIMING) == going


def test_a_sweep_lists_a_day_at_a_time_within_its_budgets() -> None:
    state = SweepState(since=T - 2.5 * DAY, next=T, gap=GAP)
    assert next_slice(state, 0, TIMING) == (T - SLICE, T)
    assert next_slice(state, TIMING.sweep_requests, TIMING) is None  # this poll's pages spent
    assert next_slice(replace(state, requests=TIMING.sweep_budget), 0, TIMING) is None
    assert next_slice(SweepState(), 0, TIMING) is None  # none in progress
    state = after_slice(state, (T - DAY, T), 3, TIMING)
    assert (state.next, state.requests) == (T - DAY, 3)
    state = after_slice(state, (T - 2 * DAY, T - DAY), 1, TIMING)
    assert next_slice(state, 4, TIMING) == (T - 2.5 * DAY, T - 2 * DAY)  # the last, shorter
    state = after_slice(state, (T - 2.5 * DAY, T - 2 * DAY), 1, TIMING)
    assert not state.active


def test_a_sweep_lists_less_at_a_time_where_a_day_costs_more_than_a_poll_may() -> None:
    state = SweepState(since=T - 30 * DAY, next=T, gap=GAP)
    costly = after_slice(state, (T - DAY, T), 4 * TIMING.sweep_requests, TIMING)
    assert costly.span == DAY / 4
    assert next_slice(costly, 0, TIMING) == (T - DAY - DAY / 4, T - DAY)
    assert after_slice(state, (T - DAY, T), 1000 * TIMING.sweep_requests, TIMING).span == 3600
    assert after_slice(costly, (T - 2 * DAY, T - DAY), 1, TIMING).span == DAY  # cheap again


def test_a_sweep_ends_when_its_budget_is_spent() -> None:
    state = SweepState(since=T - 30 * DAY, next=T, requests=TIMING.sweep_budget - 1)
    assert not after_slice(state, (T - DAY, T), 5, TIMING).active


def test_what_a_sweep_leaves() -> None:
    assert left_after(SweepState(gap=GAP, found_credits=GAP - 3)) == 3
    assert left_after(SweepState(gap=GAP, found_credits=2 * GAP)) == 0


def test_sweeps_off() -> None:
    off = Timing(DAY, sweep_lookback=0)
    assert not sweep_due(SweepState(gap_since=T - 600), GAP, T, T - DAY, off).active


def test_the_state_survives_the_ledger() -> None:
    state = SweepState(since=1.0, next=2.0, requests=3, found=4, gap_since=5.0, swept_gap=6)
    assert SweepState.read(state.dump()) == state
    assert SweepState.read("{") == SweepState()
