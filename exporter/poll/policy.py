"""The poll's rules as pure functions over plain values: what to list, which tasks to
read by ID, which runs to await, when to follow a settling task and when to give up.
Nothing here does I/O or changes its arguments; ``tests/test_poll_policy.py`` tests each
rule by table."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from exporter.accounting import NON_TERMINAL, task_run_key
from exporter.ledger import TaskRecord
from exporter.models import TaskDetails, TaskInfo
from exporter.poll.timing import Timing

# Task-details vocabulary for a task whose latest run has this usage status.
DETAILS_STATUS = {
    "completed": "completed",
    "error": "error",
    "failed": "error",
    "aborted": "aborted",
    "blocked": "suspended",
    "running": "active",
}
LIVE_TASK_STATUSES = frozenset({"active", "pending"})
# Meta key: "untrusted" once a usage row called a run finished that its task's details,
# read after the row, showed still running. From then on a run ends when details say so.
ROW_STATUS = "row_status"


@dataclass(frozen=True)
class Marks:
    """What earlier polls left in the ledger's meta (unix times): the baseline, the last
    full listing of the window and the last poll's listing."""

    baseline: float | None = None
    listed_at: float | None = None
    recent_at: float | None = None
    scanned_at: float | None = None  # the last scan of the own task list for updates

    @classmethod
    def from_meta(cls, meta: Mapping[str, str]) -> Marks:
        def read(key: str) -> float | None:
            return float(meta[key]) if key in meta else None

        return cls(read("baseline"), read("listed_at"), read("recent_at"), read("scanned_at"))


class Window(NamedTuple):
    """What a poll lists: runs started since ``since``; ``full``: the whole lookback
    window (else only recent starts); ``baseline``: runs started before it are history."""

    since: float
    full: bool
    baseline: float


def listing_window(stamp: float, marks: Marks, timing: Timing) -> Window:
    """Every FULL_LIST_INTERVAL the whole window is listed (after an outage, from the
    last full listing minus a lookback); in between, only starts within RECENT_WINDOW of
    the last poll, so that a poll costs what changed. Never before the baseline."""
    baseline = marks.baseline if marks.baseline is not None else stamp - timing.lookback
    since = stamp - timing.lookback
    if marks.listed_at is not None:  # after an outage, reach back to cover it
        since = min(since, marks.listed_at - timing.lookback)
    since = max(since, baseline)
    listed_at = marks.listed_at if marks.listed_at is not None else 0.0
    full = not timing.incremental or stamp - listed_at >= timing.full_list_interval
    if not full:
        last = min(stamp, marks.recent_at if marks.recent_at is not None else stamp)
        since = max(since, last - timing.recent_window)
    return Window(since, full, baseline)


def marks_written(stamp: float, window: Window, marks: Marks) -> dict[str, str]:
    """The meta a poll writes: its listing's time, the full listing's, the baseline."""
    written = {"recent_at": repr(stamp)}
    if window.full:  # listed_at is the last listing of the whole window
        written["listed_at"] = repr(stamp)
    if marks.baseline is None:
        written["baseline"] = repr(window.baseline)
    return written


def ended_streams(info: TaskDetails, baseline: float) -> set[str]:
    """The runs that task details call finished, of those started since ``baseline``."""
    return {
        stream.stream_id
        for stream in info.streams or ()
        if (stream.completed_at is not None or stream.status.lower() not in NON_TERMINAL)
        and stream.created_at.timestamp() >= baseline
    }


# Tasks read by ID in a poll because a row called one of their runs finished before their
# details did (where row statuses are not trusted): at most this many, the longest
# waiting first, so that learning the API's habit does not read every task at once.
UNENDED_READS = 100


def live_by_record(records: Iterable[tuple[str, TaskRecord]]) -> set[str]:
    """The tasks whose records call them live: those live by their last status, and the
    ``UNENDED_READS`` longest waiting of those that are only awaiting their details'
    word on a run whose row called it finished."""
    live, unended = set(), []
    for task_id, record in records:
        if not record.active:
            continue
        if record.status in LIVE_TASK_STATUSES:
            live.add(task_id)
        else:
            unended.append((record.last_activity, task_id))
    live.update(task_id for _, task_id in sorted(unended)[:UNENDED_READS])
    return live


# Pages of the caller's own task list (100 tasks each, newest first) scanned at each full
# listing for older tasks that were continued: the 5,000 newest tasks.
UPDATED_SCAN_PAGES = 50


def scan_since(stamp: float, marks: Marks, window: Window, timing: Timing) -> float | None:
    """Whether this poll scans the task list for continued tasks (every
    ``scan_interval``), and for those updated since when: the last scan, less the
    recent window for the API's lag in updating them; the baseline at the first.
    A ``scan_interval`` of 0 scans never."""
    if not timing.scan_interval:
        return None
    if marks.scanned_at is None:
        return window.baseline
    if stamp - marks.scanned_at < timing.scan_interval:
        return None
    return max(window.baseline, marks.scanned_at - timing.recent_window)


def continued_tasks(tasks: Iterable[TaskInfo], since: float, window: float) -> list[str]:
    """Tasks created before the listing window (``window``) and updated since ``since``:
    continued, and their new runs' rows may carry their task's date, which no listing
    of the window shows. Their runs are read by ID."""
    found = []
    for task in tasks:
        created = task.created_at.timestamp() if task.created_at else None
        updated = task.updated_at.timestamp() if task.updated_at else None
        if created is not None and created < window and updated is not None and updated >= since:
            found.append(task.id)
    return sorted(found)


# Meta key: what date the usage rows carry, as task details showed it: "run" (its own
# start) or "task" (its task's creation); absent until shown. "task" is kept for good.
ROW_DATING = "row_dating"
_CLEAR = 60.0  # seconds between a run's start and its task's creation that tell them apart


def row_dating(info: TaskDetails, row_dates: Mapping[str, float]) -> str | None:
    """What date rows carry, as these details show it for the runs whose rows are at
    hand (``row_dates``: row date by run): "task" if a row carries its task's creation
    where the run started well after it, "run" if rows carry their runs' starts where
    those are well after the task's creation; None if these runs cannot tell."""
    created = info.task.created_at.timestamp() if info.task.created_at else None
    if created is None:
        return None
    told = None
    for stream in info.streams or ():
        start = stream.created_at.timestamp()
        dated = row_dates.get(stream.stream_id)
        if dated is None or start - created < _CLEAR:
            continue
        if abs(dated - created) < 1:
            return "task"
        if abs(dated - start) < 1:
            told = "run"
    return told


def running_by_details(info: TaskDetails) -> set[str]:
    """The runs that task details show in progress."""
    return {
        stream.stream_id
        for stream in info.streams or ()
        if stream.completed_at is None and stream.status.lower() in NON_TERMINAL
    }


def rows_contradicted(info: TaskDetails, terminal_rows: Collection[str]) -> list[str]:
    """The runs whose usage row, read before these details, called them finished while
    the details show them in progress: a run cannot start again, so the row's status
    was not the run's."""
    return sorted(running_by_details(info) & set(terminal_rows))


def run_ends(*, terminal: bool, trusted: bool, baselined: bool, told: bool) -> bool:
    """Whether a run ends with this row: its row's status is terminal and, unless row
    statuses are trusted, task details called the run finished before the row was read
    (``told``). A run taken for history is observed by nothing when it ends: its row is
    taken at its word."""
    return terminal and (trusted or baselined or told)


class Awaited(NamedTuple):
    """Runs a task awaits (its usage read by ID until each reaches the ledger finished),
    and since when (unix time)."""

    runs: frozenset[str]
    since: float


def awaited_runs(
    records: Iterable[tuple[str, TaskRecord]],
    details: Mapping[str, TaskDetails],
    baseline: float,
    stamp: float,
) -> dict[str, Awaited]:
    """What each task awaits: what its record awaited, and the runs its details (read
    in this poll) call finished; a task new to awaiting awaits since ``stamp``."""
    awaited = {
        task_id: Awaited(frozenset(record.awaiting), record.awaiting_since)
        for task_id, record in records
        if record.awaiting
    }
    for task_id, info in details.items():
        ended = ended_streams(info, baseline)
        if ended:
            held = awaited.get(task_id, Awaited(frozenset(), stamp))
            awaited[task_id] = Awaited(held.runs | ended, held.since)
    return awaited


def per_task_awaited(awaited: Mapping[str, Awaited]) -> dict[str, Awaited]:
    """Where runs are counted per task (``Fetcher.per_task``), a task awaits its own
    row (``task:<id>``), not its streams, which no row of the ledger is keyed by."""
    return {
        task_id: Awaited(frozenset({task_run_key(task_id)}), held.since)
        for task_id, held in awaited.items()
        if held.runs
    }


def tasks_to_read(
    awaited: Mapping[str, Awaited],
    done: frozenset[str],
    following: Iterable[str],
    gone: frozenset[str],
) -> list[str]:
    """Tasks whose runs are read by ID in this poll: those awaiting a run not done, and
    those followed (settling); never one that is gone."""
    wanted = {task_id for task_id, held in awaited.items() if held.runs - done}
    wanted.update(following)
    return sorted(wanted - gone)


class Doubt(NamedTuple):
    """A run taken for history in doubt, as the fold left it."""

    task_id: str
    stream_id: str
    first: bool  # first seen in this poll


class Confirmed(NamedTuple):
    """A run no longer in doubt, as the fold left it."""

    task_id: str
    stream_id: str
    finished: bool
    baselined: bool


def await_doubtful(
    awaited: Mapping[str, Awaited],
    done: frozenset[str],
    doubts: Iterable[Doubt],
    confirmed: Iterable[Confirmed],
    ended: Mapping[str, set[str]],
    *,
    stamp: float,
) -> tuple[dict[str, Awaited], frozenset[str]]:
    """Runs first taken for history in doubt are awaited: their task is read by ID, and
    asked for its details, at every poll until it tells their start, or until the
    exporter gives up. None of them is done while in doubt. Once confirmed new, a run
    still running is awaited no longer, unless its task's details (``ended``: the runs
    they call finished, by task, for the tasks whose details answered) already call it
    finished: they will when it ends. Not so for one confirmed from before the baseline,
    or at its word: it stays awaited until it finishes. Returns the new awaited and done."""
    result = dict(awaited)
    doubts = list(doubts)
    left_done = done - {d.stream_id for d in doubts}
    for doubt in doubts:
        if doubt.first:
            held = result.get(doubt.task_id, Awaited(frozenset(), stamp))
            result[doubt.task_id] = Awaited(held.runs | {doubt.stream_id}, held.since)
    for run in confirmed:
        kept = result.get(run.task_id)
        finished_by_details = ended.get(run.task_id)
        # Details that never answer (403, 404) will not tell its end, nor will they for
        # a run from before the baseline: those stay awaited until they finish.
        if kept is None or run.finished or finished_by_details is None or run.baselined:
            continue
        if run.stream_id not in finished_by_details:
            result[run.task_id] = Awaited(kept.runs - {run.stream_id}, kept.since)
    return result, left_done


class Ended(NamedTuple):
    """A run seen finished for the first time in this poll."""

    task_id: str
    started_at: float
    exec_ms: int
    listed_at: float  # its row's own date, by which listings find it


def settling_tasks(ended: Iterable[Ended], stamp: float, timing: Timing) -> set[str]:
    """Tasks of runs that just finished while their start is about to leave what every
    poll lists: they are read by ID for SETTLE_GRACE, so a late change still counts."""
    settling = set()
    for run in ended:
        # When the run ended, as far as its execution time tells; a settle may come up
        # to SETTLE_GRACE after that, and listings show its row until the row's date
        # (its start, or its task's) + the span every poll lists.
        end = min(stamp, run.started_at + run.exec_ms / 1000)
        if end > stamp - timing.settle_grace and run.listed_at + timing.listed_span < end + (
            timing.settle_grace
        ):
            settling.add(run.task_id)
    return settling


class Waiting(NamedTuple):
    """A task's awaited runs sorted by what awaiting them longer can still do."""

    recent: tuple[str, ...]  # in doubt for less than the limit: still awaited
    unsure: list[str]  # in doubt for longer: history for good
    missing: list[str]  # never seen, or seen and not finished: given up


def sort_waiting(
    left: Iterable[str], doubted_at: Mapping[str, float | None], stamp: float, limit: float
) -> Waiting:
    """``doubted_at``: for each awaited run the ledger has, when it was first taken for
    history in doubt (None: not in doubt)."""
    doubts = {s: doubted_at[s] for s in left if s in doubted_at}
    recent = tuple(s for s, at in doubts.items() if at is not None and stamp - at <= limit)
    unsure = [s for s, at in doubts.items() if at is not None and s not in recent]
    missing = [s for s in left if doubts.get(s) is None]
    return Waiting(recent, unsure, missing)


def settled_record(
    record: TaskRecord,
    prior: TaskRecord | None,
    left: Awaited,
    *,
    gone: bool,
    follow_until: float | None,
    stamp: float,
) -> TaskRecord:
    """A task's record once its awaited runs are known: what it still awaits (``left``),
    and until when it is followed: ``follow_until`` for a task that starts settling now,
    else as before, while that lasts. A task gone (404) is neither live nor followed."""
    until = prior.follow_until if prior and prior.follow_until > stamp else 0.0
    if follow_until is not None:
        until = follow_until
    return record._replace(
        active=record.active and not gone,
        awaiting=tuple(sorted(left.runs)),
        awaiting_since=left.since if left.runs else 0.0,
        follow_until=0.0 if gone else until,
    )


def record_from_row(
    prior: TaskRecord | None, model: str, status: str, started: float
) -> TaskRecord | None:
    """A task's record from one of its rows, if that row is its latest activity."""
    if prior is not None and started < prior.last_activity:
        return None
    shown = DETAILS_STATUS.get(status, status)
    whole = prior.listed_whole if prior else 0.0
    return TaskRecord(model, shown, started, shown in LIVE_TASK_STATUSES, listed_whole=whole)


def record_from_info(prior: TaskRecord | None, task: TaskInfo, stamp: float) -> TaskRecord:
    """A task's record from its details or the task list: a live task is active now."""
    status = task.status.lower()
    model = task.model or (prior.model if prior else "unknown")
    live = status in LIVE_TASK_STATUSES
    last = stamp if live else (prior.last_activity if prior else 0.0)
    whole = prior.listed_whole if prior else 0.0
    return TaskRecord(model, status, last, active=live, listed_whole=whole)


def started_unlisted(row_start: float, listed_whole: float, baseline: float) -> float:
    """The start of a run new to the ledger, as far as its task's listings tell, when
    its task's details did not tell it. A run that the first listing of all its task's
    runs (at ``listed_whole``) did not show started after that listing, whatever the
    date on its row: rows may carry their task's date. A row that dates it since the
    baseline is new anyway, and taken at its word."""
    if listed_whole and row_start < baseline:
        return max(row_start, listed_whole)
    return row_start
