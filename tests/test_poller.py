"""The poller against the simulated Neo API: every run counted once, compared with ground truth."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from exporter.balance import BalanceReader
from exporter.errors import ExporterError, StateError
from exporter.poll import Timing
from exporter.simulator import StreamTruth
from tests.rig import DAY, START, Rig, assert_exact, make_rig, poll, run_polls
from tests.truth import Truth, counted


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from make_rig(tmp_path)


@pytest.mark.parametrize("full_list_interval", [0.0, Timing(DAY).full_list_interval])
def test_many_polls_count_every_run_once(tmp_path: Path, full_list_interval: float) -> None:
    """Growth, late-finishing runs, settles and continuations over four hours, polled
    every 10 minutes, exact after every poll: whether each poll lists the whole window
    or, as by default, only recent starts between hourly full listings."""
    for rig in make_rig(tmp_path):
        truth = Truth(rig.world)
        poller = rig.open()
        poller.timing = replace(poller.timing, full_list_interval=full_list_interval)
        poll(rig, truth)
        first = counted(rig.ledger)  # type: ignore[arg-type]
        assert first["runs"] > 500  # the first poll counts the whole window
        partial = 0
        for _ in range(24):
            rig.clock.advance(600)
            assert rig.poller is not None
            report = rig.poller.poll_once()
            truth.after_poll(rig.ledger)  # type: ignore[arg-type]
            partial += not report.full_listing
            assert_exact(rig, truth)
        assert partial == (20 if full_list_interval else 0)
        assert counted(rig.ledger)["runs"] > first["runs"]  # type: ignore[arg-type]


def test_rows_dated_by_their_task_never_double_count(tmp_path: Path) -> None:
    """When stream rows carry the task's created_at, a continuation of an old task is out of
    the listing window: it is found while running (task list), or not at all. Everything
    listable is exact; nothing is ever counted twice."""
    for rig in make_rig(tmp_path, stream_created_at="task"):
        truth = Truth(rig.world)
        rig.open()
        poll(rig, truth)
        run_polls(rig, truth, 36, 600)
        assert rig.ledger is not None
        got = counted(rig.ledger)

        def listable(stream: StreamTruth, baseline: float = rig.baseline) -> bool:
            return stream.created_at.timestamp() >= baseline  # dated inside the window

        floor = truth.expected(rig.baseline, only=listable)
        ceiling = truth.expected(rig.baseline)
        assert floor != ceiling, "the world should continue some old tasks"
        for name, value in got.items():
            assert floor.get(name, 0) <= value <= ceiling.get(name, 0), name


def test_polling_twice_at_the_same_moment_adds_nothing(rig: Rig) -> None:
    truth = Truth(rig.world)
    rig.open()
    poll(rig, truth)
    before = counted(rig.ledger)  # type: ignore[arg-type]
    poll(rig, truth)
    assert counted(rig.ledger) == before  # type: ignore[arg-type]


def test_restarts_keep_totals_exact(rig: Rig) -> None:
    truth = Truth(rig.world)
    for _ in range(4):
        rig.open()
        run_polls(rig, truth, 10, 600)
        rig.close()
    rig.open()
    assert_exact(rig, truth)


def test_outage_catch_up_counts_what_finished_meanwhile(rig: Rig) -> None:
    truth = Truth(rig.world)
    rig.open()
    poll(rig, truth)
    rig.clock.advance(30 * 3600)  # longer than the lookback window
    poll(rig, truth)
    assert_exact(rig, truth)


def test_continued_old_task_adds_only_its_new_run(rig: Rig) -> None:
    truth = Truth(rig.world)
    rig.open()
    poll(rig, truth)
    old = [s for s in rig.world.visible_streams() if s.started_at < START - timedelta(days=2)]
    assert old, "the world should have history older than the window"
    task_id = old[0].task_id
    before = counted(rig.ledger)  # type: ignore[arg-type]
    rig.world.continue_task(task_id)
    run_polls(rig, truth, 36, 300)
    new_runs = [
        s for s in rig.world.visible_streams() if s.task_id == task_id and s.started_at >= START
    ]
    assert new_runs, "the continuation should have finished within three hours"
    assert counted(rig.ledger)["runs"] > before["runs"]  # type: ignore[arg-type]
    assert_exact(rig, truth)


def test_pinned_old_task_is_tracked(tmp_path: Path) -> None:
    for rig in make_rig(tmp_path):
        old = next(
            s for s in rig.world.visible_streams() if s.started_at < START - timedelta(days=2)
        )
        rig.pinned = (old.task_id,)
        truth = Truth(rig.world)
        rig.open()
        poll(rig, truth)
        assert rig.ledger is not None
        snapshot = rig.ledger.meta[f"pinned:{old.task_id}"]
        streams = [s for s in rig.world.visible_streams() if s.task_id == old.task_id]
        assert f'"steps": {sum(s.steps for s in streams)}' in snapshot
        assert_exact(rig, truth)  # tracked, but its old history is not counted


def test_live_rows_count_running_growth_once(tmp_path: Path) -> None:
    for rig in make_rig(tmp_path, live_rows=True):
        truth = Truth(rig.world)
        rig.open()
        run_polls(rig, truth, 48, 120)
        assert_exact(rig, truth)


def test_runs_that_finish_or_settle_after_leaving_a_short_window_count(tmp_path: Path) -> None:
    """A 15-minute window polled every 2 minutes: runs longer than the window, rows that
    appear minutes after their run ended, and rows that settle (grow once more) after
    their start left the window are all followed by task until they are counted."""
    for rig in make_rig(tmp_path):
        truth = Truth(rig.world)
        poller = rig.open()
        poller.timing = replace(poller.timing, lookback=900)
        poll(rig, truth)
        run_polls(rig, truth, 40, 120)
        assert rig.ledger is not None
        long_runs = [
            s
            for s in rig.world.visible_streams()
            if s.finished_at is not None
            and s.started_at.timestamp() >= rig.baseline
            and (s.finished_at - s.started_at).total_seconds() > 900
        ]
        assert long_runs, "the world should have runs longer than the window"
        assert_exact(rig, truth)
        assert all(not r.awaiting for r in rig.ledger.tasks.values() if not r.active)


def test_between_full_listings_settles_after_the_recent_window_count_at_once(
    tmp_path: Path,
) -> None:
    """With a recent window of 20 minutes and no full listing for six hours, runs settle
    (up to 25 minutes after they end, in the simulator) after their start left what the
    polls list: their tasks are read by ID until SETTLE_GRACE after they ended, so totals
    stay exact after every poll."""
    for rig in make_rig(tmp_path):
        truth = Truth(rig.world)
        poller = rig.open()
        poller.timing = replace(poller.timing, full_list_interval=6 * 3600, recent_window=1200.0)
        poll(rig, truth)
        followed = 0
        for _ in range(60):
            rig.clock.advance(180)
            assert not poller.poll_once().full_listing
            truth.after_poll(rig.ledger)  # type: ignore[arg-type]
            assert rig.ledger is not None
            followed += any(rig.ledger.tasks[t].follow_until for t in rig.ledger.flagged)
            assert_exact(rig, truth)
        assert followed > 10, "some polls should have read settling tasks by ID"


def test_the_balance_is_read_at_most_every_account_interval(rig: Rig) -> None:
    """An idle poll asks for the usage pages and live tasks only; the balance is re-read
    once ACCOUNT_INTERVAL has passed."""
    poller = rig.open()
    assert rig.ledger is not None
    poller.account = BalanceReader(poller.client, lookback=DAY)
    poller.poll_once()
    poller.poll_once()
    summary = [n for (path, _), n in rig.api.requests.items() if path == "/api/v1/usage/summary"]
    assert summary == [1]
    rig.clock.advance(Timing(DAY).account_interval)
    poller.poll_once()
    summary = [n for (path, _), n in rig.api.requests.items() if path == "/api/v1/usage/summary"]
    assert summary == [2]


def test_partial_listings_count_every_run_once_by_the_next_full_one(tmp_path: Path) -> None:
    """FULL_LIST_INTERVAL: polls in between list only recent starts, with fewer pages; a
    change to an older run waits for the next full listing, and then totals are exact."""
    for rig in make_rig(tmp_path):
        truth = Truth(rig.world)
        poller = rig.open()
        poller.timing = replace(poller.timing, full_list_interval=3600)
        first = poller.poll_once()
        truth.after_poll(rig.ledger)  # type: ignore[arg-type]
        assert first.full_listing
        kinds = []
        for _ in range(36):
            rig.clock.advance(600)
            report = poller.poll_once()
            truth.after_poll(rig.ledger)  # type: ignore[arg-type]
            kinds.append((report.full_listing, report.pages))
        full_pages = [pages for full, pages in kinds if full]
        partial_pages = [pages for full, pages in kinds if not full]
        assert len(full_pages) == 6
        assert max(partial_pages) < min(full_pages)
        rig.clock.advance(3600)  # the next poll lists the whole window again
        assert poller.poll_once().full_listing
        truth.after_poll(rig.ledger)  # type: ignore[arg-type]
        assert_exact(rig, truth)


def test_the_cycle_collector_is_paused_for_a_poll_and_resumed_however_it_ends(rig: Rig) -> None:
    """A poll runs without cyclic garbage collection (its objects live until the commit)
    and hands the collector back enabled, after a failed poll too; a collector that was
    already off stays off."""
    poller = rig.open()
    during: list[bool] = []
    poller.on_commit = lambda: during.append(gc.isenabled())
    assert gc.isenabled()
    poller.poll_once()
    assert during == [False]
    assert gc.isenabled()
    rig.api.faults.error_rate = 1.0  # every request fails, retries too: the poll raises
    with pytest.raises(ExporterError):
        poller.poll_once()
    assert during == [False]  # it never reached its commit
    assert gc.isenabled()
    rig.api.faults.error_rate = 0.0
    gc.disable()
    try:
        poller.poll_once()
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert during == [False, False]


def test_memory_follows_the_window_and_evicted_runs_never_count_twice(tmp_path: Path) -> None:
    """A one-hour lookback polled for twelve hours: memory keeps the runs and tasks of
    the last two lookbacks, the file keeps all. Tasks continued after their runs left
    memory are read whole by ID again, and restarts load only the recent part: every
    run still counts once, exact after every hour."""
    for rig in make_rig(tmp_path):
        rig.defer_index = True
        old = [s for s in rig.world.visible_streams() if s.started_at < START - timedelta(days=2)]
        rig.pinned = (old[0].task_id,)  # an old task, read by ID every poll
        truth = Truth(rig.world)
        rig.timing = Timing(lookback=3600)
        rig.open()
        poll(rig, truth)
        continued: set[str] = set()
        for hour in range(12):
            if hour in (5, 9):  # a restart: the ledger loads only what is recent
                rig.close()
                rig.open()
            assert rig.ledger is not None
            in_memory = rig.ledger.fingerprints
            evicted = sorted(
                {
                    s.task_id
                    for s in rig.world.visible_streams()
                    if s.stream_id in truth.first_seen
                    and s.stream_id not in in_memory
                    and s.finished_at is not None
                }
                - continued
            )
            for task_id in evicted[:3]:
                rig.world.continue_task(task_id)
                continued.add(task_id)
            run_polls(rig, truth, 6, 600)
            assert_exact(rig, truth)
            assert rig.ledger.flagged <= rig.ledger.tasks.keys()
            assert rig.ledger.run_count == rig.ledger.query("SELECT count(*) FROM runs")[0][0]
            assert rig.pinned[0] in rig.ledger.tasks
        assert rig.ledger is not None
        assert len(continued) >= 6, "runs should have left memory and their tasks continued"
        runs_in_file = rig.ledger.query("SELECT count(*) FROM runs")[0][0]
        tasks_in_file = rig.ledger.query("SELECT count(*) FROM tasks")[0][0]
        assert rig.ledger.run_count == runs_in_file > 3 * len(rig.ledger.fingerprints)
        assert tasks_in_file > 3 * len(rig.ledger.tasks)  # type: ignore[operator]


def test_a_poll_leaves_no_response_body_to_the_cycle_collector(rig: Rig) -> None:
    """httpx keeps each response in a reference cycle; with the collector paused for a
    poll, a body cached on it (a usage page: 0.7 MB) would stay until the poll ends.
    The client streams bodies instead: the cycles it leaves hold none."""
    poller = rig.open()
    poller.poll_once()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        rig.clock.advance(600)
        poller.poll_once()
        gc.collect()
        responses = [o for o in gc.garbage if isinstance(o, httpx.Response)]
        assert responses, "httpx responses are expected in cycles (or this test is moot)"
        assert not [r for r in responses if hasattr(r, "_content")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def task_list_requests(rig: Rig) -> int:
    return sum(n for (template, _), n in rig.api.requests.items() if template == "/api/v1/tasks")


@pytest.mark.parametrize(("status", "asked_again"), [(422, True), (409, True), (404, False)])
def test_the_task_list_is_dropped_only_when_it_is_not_offered(
    rig: Rig, status: int, asked_again: bool
) -> None:
    """A 422 or 409 from the task list says nothing of whether it is offered: it is
    asked again next poll. A 404 (or 400, 403, 405) says it is not: it is not asked
    again (found by review of the poll's reshaping)."""
    poller = rig.open()
    rig.api.faults.down["/api/v1/tasks"] = status
    assert poller.poll_safely() is not None
    del rig.api.faults.down["/api/v1/tasks"]
    before = task_list_requests(rig)
    rig.clock.advance(600)
    assert poller.poll_safely() is not None
    assert (task_list_requests(rig) > before) == asked_again


def test_a_task_list_not_offered_stays_dropped_when_its_poll_fails_later(rig: Rig) -> None:
    poller = rig.open()
    rig.api.faults.down["/api/v1/tasks"] = 404
    rig.api.faults.down["/api/v1/tasks/{id}"] = 500  # details fail: then a state error
    assert rig.ledger is not None
    failing = rig.ledger.load_runs

    def broken(ids: object) -> object:
        raise StateError("disk gone")

    rig.ledger.load_runs = broken  # type: ignore[assignment,method-assign]
    assert poller.poll_safely() is None
    rig.ledger.load_runs = failing  # type: ignore[method-assign]
    del rig.api.faults.down["/api/v1/tasks"], rig.api.faults.down["/api/v1/tasks/{id}"]
    before = task_list_requests(rig)
    rig.clock.advance(600)
    assert poller.poll_safely() is not None
    assert task_list_requests(rig) == before
