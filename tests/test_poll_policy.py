"""The poll's rules (exporter.poll.policy and timing), each by table: pure functions over
plain values, no API, no ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from exporter.ledger import TaskRecord
from exporter.models import TaskDetails, TaskInfo, TaskStreamSummary
from exporter.poll.policy import (
    UNENDED_READS,
    Awaited,
    Confirmed,
    Doubt,
    Ended,
    Marks,
    Window,
    await_doubtful,
    awaited_runs,
    continued_tasks,
    ended_streams,
    listing_window,
    live_by_record,
    marks_written,
    per_task_awaited,
    record_from_info,
    record_from_row,
    row_dating,
    rows_contradicted,
    run_ends,
    scan_since,
    settled_record,
    settling_tasks,
    sort_waiting,
    started_unlisted,
    tasks_to_read,
)
from exporter.poll.timing import Timing

HOUR, DAY = 3600.0, 86_400.0
T = 1_800_000_000.0  # a poll's time
DEFAULT = Timing(lookback=DAY)


@pytest.mark.parametrize(
    ("marks", "timing", "expected"),
    [
        # The first poll lists the whole window, from its start (the baseline).
        (Marks(), DEFAULT, Window(T - DAY, True, T - DAY)),
        # Within the hour after a full listing: recent starts only, two hours back.
        (Marks(T - DAY, T - 600, T - 600), DEFAULT, Window(T - 600 - 2 * HOUR, False, T - DAY)),
        # An hour after the last full listing: the whole window again.
        (Marks(T - DAY, T - HOUR, T - 600), DEFAULT, Window(T - DAY, True, T - DAY)),
        # After an outage, a full listing reaches back to the last one minus a lookback,
        (
            Marks(T - 3 * DAY, T - 2 * DAY, T - 2 * DAY),
            DEFAULT,
            Window(T - 3 * DAY, True, T - 3 * DAY),
        ),
        # but never before the baseline.
        (
            Marks(T - DAY - 5, T - 2 * HOUR, T - 2 * HOUR),
            DEFAULT,
            Window(T - DAY - 5, True, T - DAY - 5),
        ),
        # A recent listing reaches back from the last poll's, not from now.
        (Marks(T - DAY, T - 1800, T - 1200), DEFAULT, Window(T - 1200 - 2 * HOUR, False, T - DAY)),
        # A clock set back: from now.
        (Marks(T - DAY, T - 1800, T + 600), DEFAULT, Window(T - 2 * HOUR, False, T - DAY)),
        # No full listings (0), or a window no longer than the recent one: every poll
        # lists the whole window.
        (
            Marks(T - 2 * DAY, T - 60, T - 60),
            Timing(DAY, full_list_interval=0),
            Window(T - DAY - 60, True, T - 2 * DAY),
        ),
        (Marks(T - DAY, T - 60, T - 60), Timing(HOUR), Window(T - HOUR - 60, True, T - DAY)),
    ],
)
def test_listing_window(marks: Marks, timing: Timing, expected: Window) -> None:
    assert listing_window(T, marks, timing) == expected


def test_marks_written() -> None:
    assert marks_written(T, Window(T - DAY, True, T - DAY), Marks()) == {
        "recent_at": repr(T), "listed_at": repr(T), "baseline": repr(T - DAY),
    }  # fmt: skip
    assert marks_written(T, Window(T - 600, False, T - DAY), Marks(T - DAY)) == {
        "recent_at": repr(T)
    }
    assert Marks.from_meta({"baseline": "1.5", "recent_at": "2"}) == Marks(1.5, None, 2.0)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def details(*streams: tuple[str, str, float, float | None]) -> TaskDetails:
    return TaskDetails(
        task=TaskInfo(id="t"),
        streams=[
            TaskStreamSummary(
                stream_id=s, status=status, created_at=at(created),
                completed_at=None if done is None else at(done),
            )
            for s, status, created, done in streams
        ],
    )  # fmt: skip


def test_ended_streams_are_those_details_call_finished_since_the_baseline() -> None:
    info = details(
        ("done", "completed", T - 100, T - 50),
        ("running", "running", T - 100, None),
        ("stopped-early", "running", T - 100, T - 10),  # completed_at says it ended
        ("unknown-status", "quarantined", T - 100, None),  # not a running word: ended
        ("old", "completed", T - 2 * DAY, T - DAY),  # before the baseline: history
    )
    assert ended_streams(info, T - DAY) == {"done", "stopped-early", "unknown-status"}
    assert ended_streams(TaskDetails(task=TaskInfo(id="t")), 0) == set()


def record(**fields: object) -> TaskRecord:
    base = {"model": "m", "status": "completed", "last_activity": T - 100, "active": False}
    return TaskRecord(**{**base, **fields})  # type: ignore[arg-type]


def test_awaited_runs_join_what_was_awaited_and_what_details_call_finished() -> None:
    records = [
        ("a", record(awaiting=("a1",), awaiting_since=T - 500)),
        ("b", record(active=True)),  # flagged, awaiting nothing
    ]
    infos = {
        "a": details(("a2", "completed", T - 90, T - 1)),
        "c": details(("c1", "error", T - 9, None)),
    }
    assert awaited_runs(records, infos, T - DAY, T) == {
        "a": Awaited(frozenset({"a1", "a2"}), T - 500),  # since the oldest
        "c": Awaited(frozenset({"c1"}), T),  # new: since now
    }


@pytest.mark.parametrize(
    ("awaited", "done", "following", "gone", "expected"),
    [
        ({"a": Awaited(frozenset({"x"}), 0)}, frozenset(), [], frozenset(), ["a"]),
        ({"a": Awaited(frozenset({"x"}), 0)}, frozenset({"x"}), [], frozenset(), []),
        (
            {"a": Awaited(frozenset({"x"}), 0)},
            frozenset({"x"}),
            ["b", "a"],
            frozenset(),
            ["a", "b"],
        ),
        ({"a": Awaited(frozenset({"x"}), 0)}, frozenset(), ["b"], frozenset({"a", "b"}), []),
    ],
)
def test_tasks_to_read(
    awaited: dict[str, Awaited], done: frozenset[str], following: list[str],
    gone: frozenset[str], expected: list[str],
) -> None:  # fmt: skip
    assert tasks_to_read(awaited, done, following, gone) == expected


def test_runs_in_doubt_are_awaited_and_not_done() -> None:
    awaited = {"a": Awaited(frozenset({"a1"}), T - 50)}
    doubts = [
        Doubt("a", "a2", first=True),
        Doubt("b", "b1", first=True),
        Doubt("c", "c1", first=False),
    ]
    result, done = await_doubtful(awaited, frozenset({"a1", "c1"}), doubts, [], {}, stamp=T)
    assert result == {
        "a": Awaited(frozenset({"a1", "a2"}), T - 50),
        "b": Awaited(frozenset({"b1"}), T),
    }
    assert done == frozenset({"a1"})  # c1 is in doubt: not done
    assert awaited == {"a": Awaited(frozenset({"a1"}), T - 50)}  # the argument is untouched


@pytest.mark.parametrize(
    ("run", "ended", "still_awaited"),
    [
        # Confirmed new and still running, and its details do not call it finished: they
        # will when it ends, so it is awaited no longer.
        (Confirmed("a", "a1", finished=False, baselined=False), {"a": set()}, False),
        # Its details already call it finished: awaited until its finished row counts.
        (Confirmed("a", "a1", finished=False, baselined=False), {"a": {"a1"}}, True),
        # Finished already, from before the baseline, or without details: kept.
        (Confirmed("a", "a1", finished=True, baselined=False), {"a": set()}, True),
        (Confirmed("a", "a1", finished=False, baselined=True), {"a": set()}, True),
        (Confirmed("a", "a1", finished=False, baselined=False), {}, True),
    ],
)
def test_confirmed_runs(run: Confirmed, ended: dict[str, set[str]], still_awaited: bool) -> None:
    awaited = {"a": Awaited(frozenset({"a1"}), T - 50)}
    result, _ = await_doubtful(awaited, frozenset(), [], [run], ended, stamp=T)
    assert ("a1" in result["a"].runs) == still_awaited


@pytest.mark.parametrize(
    ("run", "timing", "settles"),
    [
        # Ended just now, listed by its start 1h50 ago: it leaves the recent listing
        # before a settle could come, so it is followed.
        (Ended("t", T - 6600, 6600_000, T - 6600), DEFAULT, True),
        # Started 30 minutes ago: the recent listing shows it for another 90 minutes.
        (Ended("t", T - 1800, 1800_000, T - 1800), DEFAULT, False),
        # Ended more than SETTLE_GRACE ago (its execution time says): too late to settle.
        (Ended("t", T - 9000, 1000_000, T - 9000), DEFAULT, False),
        # Dated by its task (listed_at long before its start): followed.
        (Ended("t", T - 600, 600_000, T - 3 * DAY), DEFAULT, True),
        # Every poll lists the whole day: a run started 2 hours ago is not followed.
        (Ended("t", T - 7200, 7200_000, T - 7200), Timing(DAY, full_list_interval=0), False),
    ],
)
def test_settling_tasks(run: Ended, timing: Timing, settles: bool) -> None:
    assert settling_tasks([run], T, timing) == ({"t"} if settles else set())


def test_sort_waiting() -> None:
    doubted_at = {"recent": T - 100, "old": T - 2 * DAY, "plain": None}
    waiting = sort_waiting(["recent", "old", "plain", "unseen"], doubted_at, T, DAY)
    assert waiting.recent == ("recent",)
    assert waiting.unsure == ["old"]
    assert waiting.missing == ["plain", "unseen"]


@pytest.mark.parametrize(
    ("prior", "gone", "settling", "expected_until", "active"),
    [
        (record(follow_until=T + 60), False, False, T + 60, True),  # still followed
        (record(follow_until=T - 60), False, False, 0.0, True),  # lapsed
        (record(), False, True, T + HOUR, True),  # settling: followed for the grace
        (record(follow_until=T + 60), True, True, 0.0, False),  # gone: neither
    ],
)
def test_settled_record(
    prior: TaskRecord, gone: bool, settling: bool, expected_until: float, active: bool
) -> None:
    now = record(active=True)
    follow = T + HOUR if settling else None
    left = Awaited(frozenset({"r"}), T - 9)
    out = settled_record(now, prior, left, gone=gone, follow_until=follow, stamp=T)
    assert (out.follow_until, out.active) == (expected_until, active)
    assert (out.awaiting, out.awaiting_since) == (("r",), T - 9)
    nothing = Awaited(frozenset(), T - 9)
    out = settled_record(now, prior, nothing, gone=gone, follow_until=follow, stamp=T)
    assert (out.awaiting, out.awaiting_since) == ((), 0.0)


def test_task_records_from_rows_and_details() -> None:
    assert record_from_row(None, "m", "running", T) == TaskRecord("m", "active", T, True)
    assert record_from_row(None, "m", "failed", T) == TaskRecord("m", "error", T, False)
    assert record_from_row(record(last_activity=T), "m", "completed", T - 1) is None  # older
    info = TaskInfo(id="t", status="Pending", model=None)
    assert record_from_info(record(model="x"), info, T) == TaskRecord("x", "pending", T, True)
    done = TaskInfo(id="t", status="completed", model="y")
    assert record_from_info(record(), done, T) == TaskRecord("y", "completed", T - 100, False)
    assert record_from_info(None, done, T) == TaskRecord("y", "completed", 0.0, False)


@pytest.mark.parametrize(
    ("timing", "incremental", "span", "give_up", "evict"),
    [
        (Timing(DAY), True, 2 * HOUR, DAY, HOUR),
        (Timing(900), False, 900, HOUR, 900),
        (Timing(DAY, full_list_interval=0), False, DAY, DAY, HOUR),
    ],
)
def test_timing(
    timing: Timing, incremental: bool, span: float, give_up: float, evict: float
) -> None:
    assert (timing.incremental, timing.listed_span) == (incremental, span)
    assert (timing.give_up_after, timing.evict_every) == (give_up, evict)
    assert timing.hot_since(T) == T - 2 * timing.lookback


def test_counting_per_task_a_task_awaits_its_own_row() -> None:
    awaited = {"a": Awaited(frozenset({"s1", "s2"}), T - 9), "b": Awaited(frozenset(), T)}
    assert per_task_awaited(awaited) == {"a": Awaited(frozenset({"task:a"}), T - 9)}


def test_records_keep_when_their_task_was_listed_whole() -> None:
    whole = record(listed_whole=T - 50)
    assert record_from_row(whole, "m", "completed", T).listed_whole == T - 50  # type: ignore[union-attr]
    info = TaskInfo(id="t", status="active", model="m")
    assert record_from_info(whole, info, T).listed_whole == T - 50


@pytest.mark.parametrize(
    ("row_start", "listed_whole", "started"),
    [
        (T - 2 * DAY, 0.0, T - 2 * DAY),  # never listed whole: as its row says
        (T - 2 * DAY, T - HOUR, T - HOUR),  # not in that listing: after it
        (T - 10, T - HOUR, T - 10),  # dated since the baseline: at its word
    ],
)
def test_a_run_its_tasks_whole_listing_did_not_show_started_after_it(
    row_start: float, listed_whole: float, started: float
) -> None:
    assert started_unlisted(row_start, listed_whole, baseline=T - DAY) == started


def test_rows_contradicted_by_details_read_after_them() -> None:
    info = details(
        ("running", "running", T - 100, None),
        ("active", "Active", T - 100, None),
        ("ended", "completed", T - 100, T - 10),
        ("stopped", "running", T - 100, T - 10),  # completed_at says it ended
    )
    terminal_rows = {"running", "ended", "stopped", "elsewhere"}
    assert rows_contradicted(info, terminal_rows) == ["running"]
    assert rows_contradicted(info, set()) == []


@pytest.mark.parametrize(
    ("terminal", "trusted", "baselined", "told", "ends"),
    [
        (True, True, False, False, True),  # rows trusted: at the row's word
        (False, True, False, True, False),  # never on a row in progress
        (True, False, False, False, False),  # untrusted: details must have told
        (True, False, False, True, True),
        (True, False, True, False, True),  # history: nothing observes its end
        (False, False, True, True, False),
    ],
)
def test_run_ends(terminal: bool, trusted: bool, baselined: bool, told: bool, ends: bool) -> None:
    assert run_ends(terminal=terminal, trusted=trusted, baselined=baselined, told=told) == ends


def test_tasks_awaiting_their_details_word_are_read_a_hundred_a_poll() -> None:
    live = [("live", record(status="active", active=True)), ("done", record())]
    waiting = [(f"w{n:03}", record(active=True, last_activity=T - n)) for n in range(150)]
    found = live_by_record([*live, *waiting])
    assert "live" in found
    assert "done" not in found
    assert len(found) == 1 + UNENDED_READS
    assert {f"w{n:03}" for n in range(150 - UNENDED_READS, 150)} <= found  # longest waiting


def test_continued_tasks_are_old_tasks_updated_since_the_last_scan() -> None:
    def task(name: str, created: float | None, updated: float | None) -> TaskInfo:
        def at(t: float | None) -> datetime | None:
            return None if t is None else datetime.fromtimestamp(t, UTC)

        return TaskInfo(id=name, created_at=at(created), updated_at=at(updated))

    tasks = [
        task("continued", T - 2 * DAY, T - 60),
        task("untouched", T - 2 * DAY, T - 2 * HOUR),
        task("in-window", T - HOUR, T - 60),  # its rows are in the window's listings
        task("no-dates", None, None),
    ]
    assert continued_tasks(tasks, since=T - HOUR, window=T - DAY) == ["continued"]


@pytest.mark.parametrize(
    ("scanned_at", "since"),
    [
        (None, T - DAY),  # the first scan: since the baseline
        (T - 10 * 60, None),  # scanned ten minutes ago: not due
        (T - HOUR, T - 3 * HOUR),  # due: since the last scan, less the recent window
        (T - 30 * HOUR, T - DAY),  # never before the baseline
    ],
)
def test_scan_since(scanned_at: float | None, since: float | None) -> None:
    window = Window(T - DAY, full=True, baseline=T - DAY)
    marks = Marks(T - DAY, scanned_at=scanned_at)
    assert scan_since(T, marks, window, DEFAULT) == since
    assert scan_since(T, marks, window, Timing(DAY, scan_interval=0)) is None


def test_row_dating_as_task_details_show_it() -> None:
    created = datetime.fromtimestamp(T - DAY, UTC)
    info = TaskDetails(
        task=TaskInfo(id="t", created_at=created),
        streams=[
            TaskStreamSummary(stream_id="first", status="completed",
                              created_at=created + timedelta(seconds=5)),
            TaskStreamSummary(stream_id="later", status="completed",
                              created_at=datetime.fromtimestamp(T - HOUR, UTC)),
        ],
    )  # fmt: skip
    assert row_dating(info, {"later": T - HOUR}) == "run"
    assert row_dating(info, {"later": T - DAY}) == "task"
    # A run started with its task cannot tell; nor can a run without its row at hand.
    assert row_dating(info, {"first": T - DAY}) is None
    assert row_dating(info, {}) is None
    assert row_dating(TaskDetails(task=TaskInfo(id="t")), {"later": T}) is None
