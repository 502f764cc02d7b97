"""Runs whose rows do not tell their start (dated by their task, details down or
private): taken for history in doubt, counted in full once told, and new whatever their
row says once their task was listed whole."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import pytest

from exporter.accounting import NON_TERMINAL, RunState
from exporter.catalogue import NANO
from exporter.ledger import Ledger
from exporter.poll import Poller, PollReport
from exporter.simulator import StreamTruth
from tests.rig import START, Rig, make_rig, value
from tests.truth import FIELDS, Truth, compare, counted, units

DETAILS = "/api/v1/tasks/{id}"
OLD = timedelta(days=2)


def continue_pinned_old_tasks(rig: Rig, truth: Truth, count: int) -> tuple[Poller, set[str]]:
    """Rows dated by their task: old tasks, pinned and polled once, then continued (each
    new run starts now, and its row carries its task's old date). Sixty of them give new
    runs that last up to an hour."""
    tasks = pin_old_tasks(rig, count)
    poller, _ = first_poll(rig, truth)
    for task_id in tasks:
        rig.world.continue_task(task_id)
    return poller, tasks


class FirstSeen(NamedTuple):
    poller: Poller
    tasks: set[str]
    report: PollReport  # of the first poll
    runs: set[str]  # the tasks' runs in the first listing of them, old and new
    new: set[str]  # those that continued the tasks


def first_seen_running(rig: Rig, truth: Truth, count: int, details: int) -> FirstSeen:
    """Rows dated by their task, and shown while their runs are in progress: old tasks
    continued a minute before the first poll, which reads them (pinned) while task
    details answer ``details``: their new runs are in the first listing of all their
    task's runs, and only details can tell that they started after the baseline."""
    tasks = pin_old_tasks(rig, count)
    for task_id in tasks:
        rig.world.continue_task(task_id)
    rig.clock.advance(60)
    rig.api.faults.down[DETAILS] = details
    poller, report = first_poll(rig, truth)
    streams = [s for s in rig.world.visible_streams() if s.task_id in tasks]
    new = {s.stream_id for s in streams if s.started_at.timestamp() >= rig.baseline}
    assert new >= new_runs(rig, tasks).keys()
    runs = {s.stream_id for s in streams}
    assert held(rig, {s.stream_id: s for s in streams}).keys() == runs
    return FirstSeen(poller, tasks, report, runs, new)


def pin_old_tasks(rig: Rig, count: int) -> set[str]:
    """Old tasks pinned; the task list is not scanned for continued ones, so that only
    the pinned tasks' continuations are read by ID."""
    rig.timing = replace(rig.timing, scan_interval=0)
    old = {s.task_id for s in rig.world.visible_streams() if s.started_at < START - OLD}
    tasks = set(sorted(old)[:count])
    rig.pinned = tuple(sorted(tasks))
    return tasks


def first_poll(rig: Rig, truth: Truth) -> tuple[Poller, PollReport]:
    poller = rig.open()
    report = poller.poll_safely()
    assert report is not None
    truth.after_poll(rig.ledger)  # type: ignore[arg-type]
    return poller, report


def polls(rig: Rig, poller: Poller, truth: Truth, count: int) -> PollReport:
    """``count`` polls five minutes apart; returns their reports summed up."""
    total = PollReport()
    for _ in range(count):
        rig.clock.advance(300)
        report = poller.poll_safely()
        assert report is not None
        truth.after_poll(rig.ledger)  # type: ignore[arg-type]
        total.unconfirmed_rows += report.unconfirmed_rows
        total.runs_confirmed += report.runs_confirmed
    return total


def new_runs(rig: Rig, tasks: set[str]) -> dict[str, StreamTruth]:
    found = {
        s.stream_id: s
        for s in rig.world.visible_streams()
        if s.task_id in tasks and s.started_at >= START
    }
    assert found, "the continuation should have started"
    assert all(s.created_at.timestamp() < rig.baseline for s in found.values())  # task's date
    return found


def held(rig: Rig, streams: dict[str, StreamTruth]) -> dict[str, RunState]:
    assert rig.ledger is not None
    runs = rig.ledger.load_runs(streams)
    assert runs.keys() == streams.keys()
    return runs


def ledger_ids(ledger: Ledger, where: str = "1") -> set[str]:
    """The runs of the ledger's file, all or those ``where`` says."""
    return {str(row[0]) for row in ledger.query(f"SELECT stream_id FROM runs WHERE {where}")}


def indices(calls: int) -> list[list[int]]:
    """The counted tool-call ranges of a run with ``calls`` calls."""
    return [[0, calls]] if calls else []


def assert_counted_from_first_sight(
    rig: Rig,
    truth: Truth,
    tasks: set[str],
    *,
    in_doubt: bool = True,
    only: Collection[str] | None = None,
) -> None:
    """The tasks' new runs (``only`` those) are taken for history (in doubt, or for
    good): what they held when first seen is not counted, and everything they grew after
    that is."""
    assert rig.ledger is not None
    new = new_runs(rig, tasks)
    if only is not None:
        new = {s: stream for s, stream in new.items() if s in only}
    grown = 0
    for stream_id, run in held(rig, new).items():
        now, first = new[stream_id], truth.first_seen[stream_id]
        assert (run.baselined, run.finished) == (True, now.status not in NON_TERMINAL)
        assert run.uncounted is not None
        for name in FIELDS:
            assert run.uncounted[name] == units(first, name), name
            assert getattr(run, name) == units(now, name), name
        if in_doubt:
            assert run.unconfirmed is not None
            assert run.unconfirmed.tools_seen == indices(len(first.tool_durations))
            # No fingerprint: its row, however unchanged, is read and folded again.
            assert rig.ledger.fingerprints[stream_id] is None
        else:
            assert run.unconfirmed is None
        assert run.tools_seen == indices(len(now.tool_durations))
        grown += run.credits - run.uncounted["credits"]
    assert grown > 0, "some runs should have grown while their tasks did not answer"


def assert_counted_in_full(
    rig: Rig,
    truth: Truth,
    tasks: set[str],
    *,
    only: Collection[str] | None = None,
    exact_start: bool = True,
) -> None:
    """The tasks' new runs (``only`` those) have ended and count in full, and every run
    seen is exact. ``exact_start``: their start is known (from task details), else only
    that it is after the baseline."""
    new = new_runs(rig, tasks)
    if only is not None:
        new = {s: stream for s, stream in new.items() if s in only}
    assert all(s.status not in NON_TERMINAL for s in new.values()), "the runs should have ended"
    for stream_id, run in held(rig, new).items():
        stream = new[stream_id]
        assert (run.baselined, run.finished, run.unconfirmed, run.uncounted) == (
            False, True, None, None,
        )  # fmt: skip
        if exact_start:
            assert run.started_at == stream.started_at.timestamp()
        assert run.started_at >= rig.baseline
        assert (run.credits, run.steps, run.tool_calls, run.exec_ms) == (
            int(stream.credits * NANO), stream.steps, stream.tool_calls, stream.exec_ms,
        )  # fmt: skip
        assert run.tools_seen == indices(len(stream.tool_durations))
    # Every run seen is exact, those still in doubt as history. (Runs that continued a
    # task before the first poll are never seen: dated by their task, they fall before
    # what the listings ask for.)
    assert rig.ledger is not None
    seen = ledger_ids(rig.ledger)
    unsure = ledger_ids(rig.ledger, "unconfirmed IS NOT NULL")
    expected = truth.expected(rig.baseline, only=lambda s: s.stream_id in seen, history=unsure)
    assert compare(expected, counted(rig.ledger)) == {}


def test_a_run_of_uncertain_start_counts_in_full_once_its_task_answers(tmp_path: Path) -> None:
    """The new run of a pinned old task, read by ID, looks older than the baseline, and only
    task details tell its real start. While they are down it is taken for history, in
    doubt: its growth counts, and its task is asked at every poll. Once they answer, the
    run counts in full: its first-sight values, tool calls and the run itself too."""
    for rig in make_rig(tmp_path, stream_created_at="task", live_rows=True):
        truth = Truth(rig.world)
        seen = first_seen_running(rig, truth, 60, details=503)
        poller, tasks, report, doubted = seen.poller, seen.tasks, seen.report, seen.new
        # All their runs are in doubt: the old ones too, until details tell their start.
        assert report.unconfirmed_rows == len(seen.runs) > len(doubted) > 0
        assert polls(rig, poller, truth, 4).unconfirmed_rows == 0
        assert_counted_from_first_sight(rig, truth, tasks, only=doubted)
        assert rig.ledger is not None
        assert {s for t in tasks for s in rig.ledger.tasks[t].awaiting} == seen.runs

        rig.api.faults.down.clear()
        report = polls(rig, poller, truth, 1)
        # Running by their task's details (a run's row may stay in progress for a while
        # after it ended, and details that call it finished have it awaited meanwhile).
        running = {k for k, s in new_runs(rig, tasks).items() if s.finished_at is None}
        assert running & doubted, "some runs should still be running when confirmed"
        # Confirmed, a running run is no longer awaited: its task's details tell its end.
        assert not running & {s for t in tasks for s in rig.ledger.tasks[t].awaiting}
        report.runs_confirmed += polls(rig, poller, truth, 35).runs_confirmed
        assert report.runs_confirmed == len(doubted)
        assert_counted_in_full(rig, truth, tasks, only=doubted)
        assert not any(rig.ledger.tasks[t].awaiting for t in tasks)


def test_a_run_of_uncertain_start_counts_its_growth_however_long_its_task_is_down(
    tmp_path: Path,
) -> None:
    """Task details down for longer than the exporter asks them (an hour, with a short
    lookback): the run counts as history for good, from its first sight on, as its row
    says (a backfill adds what it held then), and its task is no longer read for it."""
    for rig in make_rig(tmp_path, stream_created_at="task", live_rows=True):
        truth = Truth(rig.world)
        poller, tasks, _, _, first = first_seen_running(rig, truth, 20, details=503)
        # The exporter gives up on an awaited run after an hour.
        poller.timing = replace(poller.timing, lookback=900)
        polls(rig, poller, truth, 20)
        assert_counted_from_first_sight(rig, truth, tasks, in_doubt=False, only=first)
        assert rig.ledger is not None
        assert not any(rig.ledger.tasks[t].awaiting for t in tasks)
        assert value(poller.metrics, "neo_exporter_errors_total", reason="usage_missing") == 0

        rig.api.faults.down.clear()
        assert polls(rig, poller, truth, 12).runs_confirmed == 0
        assert_counted_from_first_sight(rig, truth, tasks, in_doubt=False, only=first)


def test_a_row_whose_task_never_answers_is_taken_at_its_word(tmp_path: Path) -> None:
    """Task details that answer 404 (a teammate's task, say) never will: the row is taken
    at its word, as history, with no doubt left to resolve."""
    for rig in make_rig(tmp_path, stream_created_at="task", live_rows=True):
        truth = Truth(rig.world)
        seen = first_seen_running(rig, truth, 20, details=404)
        report = polls(rig, seen.poller, truth, 36)
        assert seen.report.unconfirmed_rows + report.unconfirmed_rows == 0
        runs = held(rig, {s: st for s, st in new_runs(rig, seen.tasks).items() if s in seen.new})
        assert all(run.baselined and run.unconfirmed is None for run in runs.values())


def test_a_later_run_of_a_task_listed_whole_counts_in_full_while_details_are_down(
    tmp_path: Path,
) -> None:
    """A task whose first runs are in doubt (details down) is continued again: the first
    listing of all its runs did not show the new run, so it started after the baseline,
    whatever its row says; it counts in full at once, and the first runs are given up an
    hour after their own first sight, as history for good."""
    for rig in make_rig(tmp_path, stream_created_at="task", live_rows=True):
        truth = Truth(rig.world)
        poller, tasks, _, _, first = first_seen_running(rig, truth, 20, details=503)
        # The exporter gives up on an awaited run after an hour.
        poller.timing = replace(poller.timing, lookback=900)
        polls(rig, poller, truth, 10)
        before = new_runs(rig, tasks).keys()
        for task_id in tasks:
            rig.world.continue_task(task_id)
        polls(rig, poller, truth, 4)  # past the hour since the first runs' first sight
        second = new_runs(rig, tasks).keys() - before
        assert rig.ledger is not None
        runs = rig.ledger.load_runs(second)
        assert len(runs) == len(second) > 0
        assert all(not run.baselined and run.unconfirmed is None for run in runs.values())
        given_up = rig.ledger.load_runs(first).values()
        assert all(run.baselined and run.unconfirmed is None for run in given_up)
        polls(rig, poller, truth, 12)
        # Each exact in full. (Not every run of the world: with a 15-minute lookback,
        # runs of other tasks longer than that are followed only as far as it reaches.)
        world = new_runs(rig, tasks)
        for stream_id, run in rig.ledger.load_runs(second).items():
            stream = world[stream_id]
            assert (run.finished, run.uncounted) == (True, None)
            assert (run.credits, run.steps, run.tool_calls, run.exec_ms) == (
                int(stream.credits * NANO), stream.steps, stream.tool_calls, stream.exec_ms,
            )  # fmt: skip


@pytest.mark.parametrize(("details", "live_rows"), [(404, False)])
def test_continued_pinned_tasks_count_in_full_whatever_their_rows_say(
    tmp_path: Path, live_rows: bool, details: int
) -> None:
    """Rows dated by their task, and task details that never answer (a teammate's private
    task) or are down: the runs of pinned old tasks continued after their first listing
    are new, since that listing did not show them, and count in full, exactly."""
    for rig in make_rig(tmp_path, stream_created_at="task", live_rows=live_rows):
        truth = Truth(rig.world)
        poller, tasks = continue_pinned_old_tasks(rig, truth, 40)
        rig.api.faults.down[DETAILS] = details
        assert polls(rig, poller, truth, 24).unconfirmed_rows == 0
        assert_counted_in_full(rig, truth, tasks, exact_start=False)


def test_a_running_run_taken_at_its_word_stays_awaited_until_it_ends(tmp_path: Path) -> None:
    """Runs in doubt whose task's details then answer 403 (they never will) are taken at
    their word, as history; those still running stay awaited, so that their task is read
    by ID, unpinned and with rows dated too early for any listing, until they finish."""
    for rig in make_rig(tmp_path, stream_created_at="task", live_rows=True):
        truth = Truth(rig.world)
        poller, tasks, *_ = first_seen_running(rig, truth, 60, details=503)
        polls(rig, poller, truth, 2)
        doubted = held(rig, new_runs(rig, tasks)).keys()
        poller.pinned = ()  # from now on read by ID only while awaited
        rig.api.faults.down[DETAILS] = 403
        polls(rig, poller, truth, 1)
        running = {s for s, run in held(rig, new_runs(rig, tasks)).items() if not run.finished}
        running &= doubted
        assert running, "some runs in doubt should still be running"
        polls(rig, poller, truth, 30)
        world = new_runs(rig, tasks)
        for stream_id, run in held(rig, {s: world[s] for s in running}).items():
            assert (run.baselined, run.unconfirmed, run.finished) == (True, None, True)
            assert world[stream_id].status not in NON_TERMINAL
            assert run.credits == units(world[stream_id], "credits")


def test_runs_whose_rows_no_listing_shows_are_followed_while_they_settle(
    tmp_path: Path,
) -> None:
    """Rows dated by their task: the new runs of continued old tasks (not pinned) are in no
    listing. Read while their tasks are live, and then while awaited, such a run can still
    settle (grow once more) after its finished row is counted: its task is followed for
    SETTLE_GRACE, so every run seen ends exact, not only those seen finished at once."""
    for rig in make_rig(tmp_path, stream_created_at="task", live_rows=True):
        truth = Truth(rig.world)
        poller = rig.open()
        assert poller.poll_safely() is not None
        truth.after_poll(rig.ledger)  # type: ignore[arg-type]
        old = {s.task_id for s in rig.world.visible_streams() if s.started_at < START - OLD}
        for task_id in sorted(old)[:150]:
            rig.world.continue_task(task_id)
        polls(rig, poller, truth, 24)
        assert rig.ledger is not None
        seen = ledger_ids(rig.ledger)
        assert len(seen & new_runs(rig, old).keys()) > 50
        expected = truth.expected(rig.baseline, only=lambda s, ids=seen: s.stream_id in ids)
        assert compare(expected, counted(rig.ledger)) == {}


def test_a_run_in_doubt_confirmed_new_ends_only_when_its_details_say_so(
    tmp_path: Path,
) -> None:
    """Rows that call runs in progress finished, and runs first seen in doubt (details
    down): once details answer and the runs count in full, none is observed as ended
    before it has (being awaited for its doubt is not its details calling it finished)."""
    for rig in make_rig(tmp_path, stream_created_at="task", live_rows=True):
        rig.api.faults.running_status = "completed"
        truth = Truth(rig.world)
        seen = first_seen_running(rig, truth, 30, details=503)
        rig.api.faults.down.pop(DETAILS)
        for _ in range(6):
            polls(rig, seen.poller, truth, 1)
            world = {s.stream_id: s for s in rig.world.visible_streams()}
            assert rig.ledger is not None
            early = [
                s for s, state in rig.ledger.load_runs(seen.new).items()
                if state.finished and not state.baselined and world[s].finished_at is None
            ]  # fmt: skip
            assert early == []
        assert rig.ledger.meta.get("row_status") == "untrusted"
