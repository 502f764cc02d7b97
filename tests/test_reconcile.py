"""Self-audit (exporter.reconcile): the gap between the API's totals and the counters,
by table; the exporter against the simulated API's summary is in test_api_behaviours."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from exporter.catalogue import NANO
from exporter.poll import Poller
from exporter.poll.sweep import SWEEP_KEY, SweepState
from exporter.reconcile import (
    AUDIT_KEY,
    ROUNDING,
    TOTAL,
    Audit,
    Sample,
    counted_by_model,
    credits_by_model,
    noted,
    record,
)
from tests.rig import DAY, Rig, assert_exact, make_rig, run_polls, value
from tests.truth import Truth, compare, counted, units

C = NANO  # one credit, in nano-credits


@pytest.mark.parametrize(
    ("by_model", "total", "expected"),
    [
        ({"a": {"neo_credits": 1.5, "tasks": 2}, "b": {"neo_credits": "2.5"}}, "4",
         {"a": 3 * C // 2, "b": 5 * C // 2, TOTAL: 4 * C}),  # nested
        ({"a": 1.5, "b": 2.5}, "4", {"a": 3 * C // 2, "b": 5 * C // 2, TOTAL: 4 * C}),  # flat
        (None, "4", {TOTAL: 4 * C}),  # omitted
        ({"a": {"tasks": 2}}, "4", {TOTAL: 4 * C}),  # no credits in it
        ({"a": -1}, "4", {TOTAL: 4 * C}),  # not an amount
        ({"a": 1, "b": 1}, "4", {TOTAL: 4 * C}),  # does not add up to the total
        ([1, 2], "4", {TOTAL: 4 * C}),  # another shape
        ({"a": 1}, None, None),  # no total: nothing to reconcile
    ],
)  # fmt: skip
def test_credits_by_model(by_model: object, total: str | None, expected: object) -> None:
    amount = None if total is None else Decimal(total)
    assert credits_by_model(by_model, amount) == expected


def test_counted_by_model_sums_the_credit_counter_over_its_other_labels() -> None:
    counters = {
        ("neo_credits_total", ("a", "completed")): 2 * C,
        ("neo_credits_total", ("a", "error")): C,
        ("neo_credits_total", ("b", "completed")): C,
        ("neo_steps_total", ("a", "completed")): 99,
    }
    assert counted_by_model(counters, "neo_credits_total") == {"a": 3 * C, "b": C, TOTAL: 4 * C}


def samples(api: list[int], counted: list[int], start: float = 0.0) -> list[Sample]:
    """A reconciliation at every poll: each sample with the counts of the polls around
    it (the last one's next poll not yet known)."""
    taken = []
    for n, (a, c) in enumerate(zip(api, counted, strict=True)):
        before = {TOTAL: counted[n - 1]} if n else None
        after = {TOTAL: counted[n + 1]} if n + 1 < len(counted) else None
        taken.append(Sample(start + n, {TOTAL: a}, {TOTAL: c}, before, after))
    return taken


def take(audit: Audit, taken: list[Sample], reset: str | None = None) -> Audit:
    for sample in taken:
        audit = record(audit, sample, reset)
    return audit


# The API's total and the counters over ten polls, spend varying from poll to poll; the
# counters see everything; the summary as they are (0), a poll behind them (-1: the
# summary lags) or a poll ahead (+1: it leads).
SPENT = [0, 5, 12, 14, 30, 31, 45, 60, 61, 80]


@pytest.mark.parametrize("shift", [0, -1, 1])
def test_a_summary_out_of_step_by_a_poll_settles_to_no_gap(shift: int) -> None:
    api = [SPENT[max(0, min(n + shift, len(SPENT) - 1))] * C for n in range(len(SPENT))]
    audit = take(Audit(), samples(api[1:-1], [s * C for s in SPENT[1:-1]]))
    assert audit.gap == {TOTAL: 0}
    assert audit.alignment == shift


def test_spend_no_listing_shows_is_the_gap_once_settled() -> None:
    hidden = [0, 0, 0, 0, 3, 3, 7, 7, 7, 7]  # runs in no listing: in the summary only
    api = [(s + h) * C for s, h in zip(SPENT, hidden, strict=True)]
    audit = take(Audit(), samples(api, [s * C for s in SPENT]))
    assert audit.gap == {TOTAL: 7 * C}  # the last sample whose next poll is known
    assert audit.alignment == 0


def test_no_gap_before_a_sample_has_its_next_poll() -> None:
    first = Sample(0.0, {TOTAL: C}, {TOTAL: C}, before={TOTAL: 0})
    audit = record(Audit(), first, None)
    assert (audit.gap, audit.reference, audit.at) == (None, None, 0.0)
    audit = noted(audit, {TOTAL: 2 * C})  # the next poll: the sample is whole
    assert audit.reference == first._replace(after={TOTAL: 2 * C})
    assert audit.gap == {TOTAL: 0}
    assert audit.last == {TOTAL: 2 * C}


def test_a_reset_of_the_api_total_carries_the_gap_over() -> None:
    api = [0, 10 * C, 20 * C, 30 * C, 40 * C, 50 * C]
    audit = take(Audit(), samples(api, [0, 10 * C, 20 * C, 28 * C, 38 * C, 48 * C]))
    assert audit.gap == {TOTAL: 2 * C}
    # The API's total starts again from nothing (a billing period): so does the reference,
    # and what was settled is carried; afterwards both grow alike.
    counted = [47 * C + a for a in (C, 5 * C, 9 * C, 12 * C, 20 * C)]
    audit = take(audit, samples([C, 5 * C, 9 * C, 12 * C, 20 * C], counted, start=10.0))
    assert audit.gap == {TOTAL: 2 * C}
    assert audit.carried == {TOTAL: 2 * C}


def test_a_moved_credit_reset_starts_a_new_reference() -> None:
    audit = take(Audit(), samples([0, C, 2 * C, 3 * C], [0, C, 2 * C, 3 * C]), reset="r1")
    moved = record(audit, Sample(9.0, {TOTAL: 50 * C}, {TOTAL: 4 * C}), "r2")
    assert (moved.reference, moved.reset_mark, moved.gap) == (None, "r2", {TOTAL: 0})
    assert moved.recent == (Sample(9.0, {TOTAL: 50 * C}, {TOTAL: 4 * C}, {TOTAL: 3 * C}),)


def test_the_gap_by_model() -> None:
    def at(n: float, a: int, b: int, ca: int, cb: int) -> Sample:
        return Sample(n, {"a": a, "b": b, TOTAL: a + b}, {"a": ca, "b": cb, TOTAL: ca + cb})

    taken = [at(0, 0, 0, 0, 0), at(1, C, C, C, C), at(2, 2 * C, 3 * C, 2 * C, 2 * C),
             at(3, 3 * C, 5 * C, 3 * C, 4 * C), at(4, 4 * C, 5 * C, 4 * C, 4 * C)]  # fmt: skip
    audit = Audit()
    for sample in taken:
        audit = noted(record(audit, sample, None), sample.counted)  # no spend in between
    assert audit.gap == {"a": 0, "b": C, TOTAL: C}


def test_the_audit_survives_the_ledger() -> None:
    audit = take(Audit(), samples([0, C, 3 * C, 4 * C], [0, C, 2 * C, 3 * C]), reset="r")
    assert Audit.read(audit.dump()) == audit
    assert Audit.read("not json") == Audit()
    assert Audit.read(None) == Audit()


def gap_of(rig: Rig) -> dict[str, int] | None:
    assert rig.ledger is not None
    return Audit.read(rig.ledger.meta.get(AUDIT_KEY)).gap


def test_exact_counters_leave_no_gap_with_the_simulated_summary(tmp_path: Path) -> None:
    """Counters that are exact reconcile with the API's own totals, by model too, from
    the first settled gap on (rows shown while their runs are in progress)."""
    for rig in make_rig(tmp_path, live_rows=True):
        rig.audit = True
        truth = Truth(rig.world)
        rig.open()
        gaps = []
        for step in range(8):
            run_polls(rig, truth, 1, 300 if step else 0)
            gaps.append(gap_of(rig))
        assert gaps[:2] == [None, None]  # the reference needs the polls around it
        settled = [gap for gap in gaps[2:] if gap is not None]
        assert len(settled) == 6
        assert len(settled[-1]) > 2  # by model, and in all
        for gap in settled:
            assert all(abs(value) <= ROUNDING for value in gap.values()), gap


def continue_teammates_old_tasks(
    rig: Rig, truth: Truth, *, sweep_requests: int
) -> tuple[Poller, list[str]]:
    """Three polls with the self-audit on, then 40 of teammates' tasks over a day old
    continued: rows dated by their task put their new runs in no listing of the window."""
    rig.audit = True
    rig.timing = replace(rig.timing, sweep_requests=sweep_requests)
    poller = rig.open()
    run_polls(rig, truth, 3, 300)
    old = [
        t.task_id for t in rig.world.tasks
        if not rig.world.owns(t) and t.created / 1000 < rig.baseline - DAY
    ][:40]  # fmt: skip
    for task_id in old:
        rig.world.continue_task(task_id)
    return poller, old


def test_a_sweep_finds_teammates_continuations_of_old_tasks(tmp_path: Path) -> None:
    """A team admin's view with rows dated by their task: teammates' continuations of
    tasks days old are in no listing of the window and no task list. The summary holds
    their spend, the gap lasts, and a sweep listing further back finds them: they count
    in full, once, and the gap closes."""
    for rig in make_rig(tmp_path, stream_created_at="task", team=True, live_rows=True):
        truth = Truth(rig.world)
        poller, old = continue_teammates_old_tasks(rig, truth, sweep_requests=3000)
        gaps = []
        for _ in range(16):
            run_polls(rig, truth, 1, 300)
            gap = gap_of(rig)
            gaps.append(0 if gap is None else gap[TOTAL])
        assert max(gaps) > 100 * ROUNDING, "the continuations should show as a gap"
        # What is left: what runs taken for history, found late, spent between the
        # reference and their first sight (the counters never hold it).
        assert 0 <= gaps[-1] < max(gaps) / 20
        assert value(poller.metrics, "neo_exporter_sweep_runs_found_total") >= len(old)
        assert value(poller.metrics, "neo_exporter_sweep_requests_total") > 0
        assert_exact(rig, truth)


def test_runs_in_no_listing_are_the_gap_exactly(tmp_path: Path) -> None:
    """Runs that no usage list shows but the summary counts: once they have ended, the
    gap is what they spent since the reference, in all and by model, to the nano-credit;
    the counters leave them out and are exact."""
    for rig in make_rig(tmp_path, live_rows=True, hidden_share=7):
        rig.audit = True
        truth = Truth(rig.world)
        rig.open()
        run_polls(rig, truth, 1, 0)
        run_polls(rig, truth, 1, 300)  # the reference: the second reconciliation
        at_reference = {s.stream_id: units(s, "credits") for s in rig.world.hidden_streams()}
        run_polls(rig, truth, 8, 300)
        run_polls(rig, truth, 1, 7200)  # the runs in progress end
        run_polls(rig, truth, 2, 300)
        settled = rig.world.hidden_streams()  # the gap is that of the sample before the last
        run_polls(rig, truth, 1, 300)
        expected: dict[str, int] = {}
        for stream in settled:
            spent = units(stream, "credits") - at_reference.get(stream.stream_id, 0)
            expected[stream.model] = expected.get(stream.model, 0) + spent
        expected[TOTAL] = sum(expected.values())
        assert expected[TOTAL] > 100 * ROUNDING, "some runs should be hidden"
        gap = gap_of(rig)
        assert gap is not None
        assert {m: g for m, g in gap.items() if g} == {m: e for m, e in expected.items() if e}
        assert_exact(rig, truth)


SUMMARY = "/api/v1/usage/summary"


@pytest.mark.parametrize(
    ("knobs", "by_model"),
    [
        ({"summary_lag": 300.0}, True),  # a poll behind the lists
        ({"summary_by_model": "flat"}, True),
        ({"summary_by_model": "omitted"}, False),  # the total alone
        ({"summary_reset_at": "reset"}, True),  # a credit reset half way
    ],
)
def test_exact_counters_reconcile_whatever_the_summary_does(
    tmp_path: Path, knobs: dict[str, object], by_model: bool
) -> None:
    for rig in make_rig(tmp_path, live_rows=True, tasks_per_day=600):
        rig.audit = True
        for name, setting in knobs.items():
            moment = rig.clock.now() + timedelta(seconds=2700)
            setattr(rig.api.faults, name, moment if setting == "reset" else setting)
        truth = Truth(rig.world)
        rig.open()
        gaps = []
        for step in range(14):
            run_polls(rig, truth, 1, 300 if step else 0)
            gaps.append(gap_of(rig))
        settled = [gap for gap in gaps if gap is not None]
        assert len(settled) >= 10
        for gap in settled:
            assert all(abs(value) <= ROUNDING for value in gap.values()), gap
        assert (len(settled[-1]) > 1) == by_model


def test_no_summary_no_gap_and_polls_go_on(tmp_path: Path) -> None:
    """A summary that answers 403 (a team member's key): no gap is served, the polls
    succeed and count."""
    for rig in make_rig(tmp_path, live_rows=True, tasks_per_day=600):
        rig.audit = True
        rig.api.faults.down[SUMMARY] = 403
        truth = Truth(rig.world)
        poller = rig.open()
        run_polls(rig, truth, 4, 300)
        assert gap_of(rig) is None
        assert value(poller.metrics, "neo_exporter_errors_total", reason="forbidden") > 0
        assert_exact(rig, truth)


def test_a_restart_in_the_middle_of_a_sweep_goes_on_where_it_was(tmp_path: Path) -> None:
    """A sweep spread over many polls (hours of history a poll), the exporter restarted in the
    middle of it: the sweep goes on from the day the last committed poll reached, nothing
    is counted twice, and the gap it was made for closes."""
    for rig in make_rig(tmp_path, stream_created_at="task", team=True, live_rows=True):
        truth = Truth(rig.world)
        _, old = continue_teammates_old_tasks(rig, truth, sweep_requests=600)  # hours a poll
        gaps, restarted, found = [], None, 0
        for _ in range(24):
            run_polls(rig, truth, 1, 300)
            assert rig.ledger is not None
            state = SweepState.read(rig.ledger.meta.get(SWEEP_KEY))
            if restarted is None and state.active and state.requests >= 15:
                restarted = state
                rig.close()  # between two polls, as a kill -9 leaves it
                rig.open()
                reopened = SweepState.read(rig.ledger.meta.get(SWEEP_KEY))  # type: ignore[union-attr]
                assert reopened == state
            if restarted is not None and not state.active and not found:
                found = state.found  # the sweep's, over both runs of the exporter
            gap = gap_of(rig)
            gaps.append(0 if gap is None else gap[TOTAL])
        assert restarted is not None, "the sweep should have been under way"
        assert found >= len(old)
        assert max(gaps) > 100 * ROUNDING
        assert gaps[-1] < max(gaps) / 10
        # Every run seen is exact: nothing counted twice, nothing found lost. (A run
        # started after the sweep went past its task's day waits for the next sweep.)
        assert rig.ledger is not None
        seen = {str(row[0]) for row in rig.ledger.query("SELECT stream_id FROM runs")}
        expected = truth.expected(rig.baseline, only=lambda s, ids=seen: s.stream_id in ids)
        assert compare(expected, counted(rig.ledger)) == {}


def test_a_summary_a_poll_behind_settles_with_polls_shorter_than_reconciliations(
    tmp_path: Path,
) -> None:
    """A poll every minute, a reconciliation every five: a summary a poll (a minute)
    behind the lists is paired with the count of the poll before its own, not of the
    reconciliation before."""
    for rig in make_rig(tmp_path, live_rows=True, tasks_per_day=3000):
        rig.audit = True
        rig.api.faults.summary_lag = 60.0
        truth = Truth(rig.world)
        rig.open()
        gaps = []
        for step in range(20):
            run_polls(rig, truth, 1, 60 if step else 0)
            gaps.append(gap_of(rig))
        settled = [gap[TOTAL] for gap in gaps if gap is not None]
        assert len(settled) > 12
        assert all(abs(g) <= ROUNDING for g in settled), settled
