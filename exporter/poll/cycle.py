"""One poll cycle: the working set of one poll, and its phases in order."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import structlog

from exporter.accounting import (
    NON_TERMINAL,
    Deltas,
    Observation,
    RunState,
    apply,
    confirm_start,
    hold_in_doubt,
    is_task_run,
)
from exporter.client import Listing
from exporter.errors import ApiError, ApiStatusError, NotFound
from exporter.ledger import Ledger, PollChanges, TaskRecord
from exporter.models import TaskDetails, TaskInfo
from exporter.poll.fetch import Fetcher
from exporter.poll.policy import (
    LIVE_TASK_STATUSES,
    ROW_DATING,
    ROW_STATUS,
    UPDATED_SCAN_PAGES,
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
from exporter.poll.report import PollReport
from exporter.poll.sweep import Sweep
from exporter.poll.timing import Timing
from exporter.reconcile import AUDIT_KEY, Audit
from exporter.snapshots import PinnedFigures

log = structlog.get_logger(__name__)


@dataclass
class Fold:
    """What folding a poll's rows into their runs produced."""

    runs: list[RunState] = field(default_factory=list)
    deltas: Deltas = field(default_factory=Deltas)
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    ended: list[Ended] = field(default_factory=list)  # runs seen finished for the first time
    doubts: list[Doubt] = field(default_factory=list)  # runs taken for history in doubt
    confirmed: list[Confirmed] = field(default_factory=list)  # and no longer in doubt
    # Tasks with a run whose row calls it finished while its details have not yet.
    unended: set[str] = field(default_factory=set)
    new: set[str] = field(default_factory=set)  # runs new to the ledger


class PollCycle:
    """One poll. It owns what the poll finds: the rows read (by run), the task details
    read, the tasks found gone (404: deleted, or no longer visible) and those whose
    details did not answer but may (``unanswered``). ``run`` reads top to bottom; each
    phase returns what it decided, and the rules it follows are in ``policy``.
    """

    def __init__(
        self,
        fetch: Fetcher,
        ledger: Ledger,
        timing: Timing,
        now: datetime,
        *,
        pinned: Collection[str] = (),
        task_list_offered: bool = True,
    ) -> None:
        self.fetch = fetch
        self.ledger = ledger
        self.metrics = fetch.metrics
        self.timing = timing
        self.pinned = pinned
        self.stamp = now.timestamp()
        self.marks = Marks.from_meta(ledger.meta)
        self.baseline = 0.0  # set by run(), from the marks
        self.task_list_offered = task_list_offered  # False once the task list refused
        self.report = PollReport()
        self.rows: dict[str, Observation] = {}
        self.details: dict[str, TaskDetails] = {}
        self.gone: set[str] = set()
        self.unanswered: set[str] = set()
        self.whole: set[str] = set()  # tasks all of whose runs were listed by ID
        # Row statuses are trusted until a row is caught calling a running run finished
        # (``policy.rows_contradicted``); then a run ends when its task's details say so:
        # ``told`` holds the runs they called finished in an earlier poll.
        self.trusted = ledger.meta.get(ROW_STATUS) != "untrusted"
        self.contradicted: list[str] = []
        self.told: set[str] = set()
        self.refused: set[str] = set()  # tasks whose details never answer (403, 404)
        # What date the rows carry, as task details showed it (``policy.row_dating``):
        # rows known to carry their runs' starts need no details to tell them.
        self.dating = ledger.meta.get(ROW_DATING)
        self.unasked: frozenset[str] = frozenset()  # rows whose start is not asked for

    def run(self) -> PollChanges:
        """The poll's data path; returns what to commit."""
        window = listing_window(self.stamp, self.marks, self.timing)
        self.baseline, self.report.full_listing = window.baseline, window.full
        self.take(self.fetch.window(window.since))
        meta = marks_written(self.stamp, window, self.marks)
        meta.update(self.read_pinned())
        sweep = Sweep(self.fetch, self.ledger, self.timing, self.stamp)
        if not self.fetch.per_task:  # per-task rows have no day to list by
            for listing in sweep.listings(window, self.rows.keys(), self.dating == "run"):
                self.take(listing)
            if self.dating == "run":  # what it found is dated by its start: history
                self.unasked = frozenset(sweep.found)
        trusted = self.trusted
        listed = self.follow_live_tasks()
        meta.update(self.read_continued(window))
        self.ask_old_starts()
        awaited, done = self.read_awaited()
        self.ask_old_starts()  # and those of the rows just read by ID, no task twice
        fold = self.fold(listed)
        meta.update(sweep.progress(fold.runs))
        meta.update(self.ended_before_reference(fold))
        ended = {t: ended_streams(info, self.baseline) for t, info in self.details.items()}
        awaited, done = await_doubtful(
            awaited, done, fold.doubts, fold.confirmed, ended, stamp=self.stamp
        )
        tasks, runs = self.settle(awaited, done, fold)
        if trusted and not self.trusted:
            meta[ROW_STATUS] = "untrusted"
        if self.dating is not None and self.dating != self.ledger.meta.get(ROW_DATING):
            meta[ROW_DATING] = self.dating
        return PollChanges(runs=runs, deltas=fold.deltas, tasks=tasks, meta=meta)

    # -- reading ------------------------------------------------------------------------

    def take(self, listing: Listing[Observation]) -> None:
        """A listing's rows into the poll's rows; its problems into the report."""
        self.report.pages += listing.pages
        self.report.unchanged += len(listing.unchanged)
        self.fetch.problems(listing, self.report)
        rows = self.rows
        for row in listing.rows:
            held = rows.get(row.stream_id)
            # Seen twice (two endpoints, shifting pages): keep the copy that says more.
            if held is None or _volume(row) >= _volume(held):
                rows[row.stream_id] = row

    def read_pinned(self) -> dict[str, str]:
        """Pinned tasks are read by ID every poll, whatever their age; the runs of those
        whose figures changed are read too. Returns their figures, as meta."""
        if not self.pinned:
            return {}
        usages = self.fetch.usage(self.pinned)
        self.report.task_requests += len(usages)
        meta: dict[str, str] = {}
        changed = []
        for task_id, answer in usages.items():
            if isinstance(answer, ApiError):
                self.fetch.failed(task_id, answer, self.report)
                continue
            usage, defects = answer
            self.fetch.defects(defects, self.report)
            key = PinnedFigures.key(task_id)
            before = PinnedFigures.read(self.ledger.meta.get(key))
            unreadable = {d.field for d in defects}
            text = PinnedFigures.from_usage(usage, before, unreadable).dump()
            if self.ledger.meta.get(key) != text:
                meta[key] = text
                changed.append(task_id)
        self.take_task_runs(changed, gone_if_missing=False)
        return meta

    def ended_before_reference(self, fold: Fold) -> dict[str, str]:
        """Runs new to the ledger, counted in full, that ended (by their own figures)
        before the self-audit's reference: the API's totals held them then, so what
        they hold is left out of the comparison (``Audit.leaving_out``). Returns the
        audit, as meta, if any."""
        audit = Audit.read(self.ledger.meta.get(AUDIT_KEY))
        since = audit.reference_at
        if since is None or not fold.new:
            return {}
        held: dict[str, int] = {}
        for state in fold.runs:
            ended = state.finished and state.started_at + state.exec_ms / 1000 <= since
            if state.stream_id in fold.new and ended and not state.baselined:
                model = self.ledger.guard.known("model", state.model)
                held[model] = held.get(model, 0) + state.credits
        return {AUDIT_KEY: audit.leaving_out(held).dump()} if held else {}

    def follow_live_tasks(self) -> dict[str, TaskInfo]:
        """Tasks still running are followed, so that their runs are known when they end.

        The caller's own live tasks come from the task list, two requests whatever their
        number. A task that was live and is no longer listed has just ended: its details
        name its runs, which are then awaited until counted. Tasks the list cannot show
        (teammates', revealed by running rows) are read by ID on every poll. Returns the
        listed tasks whose details were not read.
        """
        live = live_by_record(self.ledger.flagged_tasks())
        # Running rows reveal teammates' tasks too, which the task list never shows.
        live |= {row.task_id for row in self.rows.values() if row.status in NON_TERMINAL}
        listed: dict[str, TaskInfo] = {}
        complete = self.task_list_offered
        if complete:
            listed, answered, error = self.fetch.live_tasks(sorted(LIVE_TASK_STATUSES))
            self.report.task_requests += answered
            if error is not None:
                if isinstance(error, ApiStatusError) and error.not_offered:
                    self.task_list_offered = False  # from now on, usage and IDs only
                complete = False
        if not complete:  # without both lists, every live task is read by ID
            live |= set(listed)
            listed = {}
        self.read_details((live - listed.keys()) | self._probed(listed), why="live")
        return {t: info for t, info in listed.items() if t not in self.details}

    def read_continued(self, window: Window) -> dict[str, str]:
        """Every ``Timing.scan_interval``, the caller's own tasks created before the
        window and updated since the last scan (continued: their new runs may be dated by
        their task, before the window) have their runs read by ID. Tasks read by ID
        anyway are left out; a teammate's task is in no task list. Returns the scan's
        time, as meta, whether the list answered or not (a list that fails is not read
        again at every poll: the next scan reaches back over this one)."""
        since = scan_since(self.stamp, self.marks, window, self.timing)
        if since is None or not self.task_list_offered:
            return {}
        tasks, error = self.fetch.own_tasks(UPDATED_SCAN_PAGES)
        self.report.task_requests += max(1, math.ceil(len(tasks) / 100))  # pages of 100
        if error is not None:  # tried again at the next scan, which reaches back over this
            return {"scanned_at": repr(self.stamp)}
        read = {t for t, _ in self.ledger.flagged_tasks()} | set(self.pinned)
        continued = [t for t in continued_tasks(tasks, since, window.since) if t not in read]
        if continued:
            log.info("continued_tasks_found", tasks=len(continued))
        self.take_task_runs(continued, gone_if_missing=False)
        return {"scanned_at": repr(self.stamp)}

    def _probed(self, listed: Mapping[str, TaskInfo]) -> set[str]:
        """While row statuses are trusted: listed live tasks with a row that newly calls
        a run finished, whose details are read to check it (a task continued right after
        a run ended, with a truthful API; every live task, with an API whose rows call
        runs in progress finished)."""
        if not self.trusted or not listed:
            return set()
        ending = {
            key: row.task_id
            for key, row in self.rows.items()
            if row.terminal and row.task_id in listed and not is_task_run(key)
        }
        if not ending:
            return set()
        finished = {s for s, state in self.ledger.load_runs(ending).items() if state.finished}
        return {task_id for key, task_id in ending.items() if key not in finished}

    def ask_old_starts(self) -> None:
        """A new run whose row looks older than the baseline may carry its task's date (or
        a broken one): its task's details, which tell the run's own start, are asked
        before it is taken for history; and asked again for a run taken for history in
        doubt. Tasks that did not answer are not asked twice in a poll. Not for the runs
        a sweep found where rows are known to carry their runs' starts (``unasked``):
        a sweep lists old days, and those would cost a request a task."""
        # A task's own row (``task:<id>``, counting per task) is dated by its task: one
        # from before the baseline is history, as it says.
        baseline, unasked = self.baseline, self.unasked
        older = {
            key: row.task_id
            for key, row in self.rows.items()
            if row.started_at < baseline and not is_task_run(key) and key not in unasked
        }
        if not older:
            return
        settled = self.ledger.settled_runs(older)
        doubtful = {task_id for key, task_id in older.items() if key not in settled}
        self.read_details(doubtful - self.details.keys() - self.unanswered, why="start")

    def read_details(self, task_ids: Iterable[str], *, why: Literal["live", "start"]) -> None:
        """Task details. Failures are counted and logged. A live task's details that
        answer 404 mean the task is gone: it is followed no more. Details asked for a
        run's start that may answer later (not ``lasting``) are asked again next poll;
        a 404 there only means the start cannot be told: the row is taken at its word."""
        terminal = {key for key, row in self.rows.items() if row.terminal}  # read before
        fetched = self.fetch.details(sorted(task_ids))
        self.report.task_requests += len(fetched)
        for task_id, result in fetched.items():
            if not isinstance(result, ApiError):
                self.details[task_id] = result
                self._check_row_status(task_id, rows_contradicted(result, terminal))
                self._learn_dating(result)
                continue
            if result.lasting:
                self.refused.add(task_id)
            self.fetch.failed(task_id, result, self.report)
            if why == "live" and isinstance(result, NotFound):
                self.gone.add(task_id)
            if why == "start" and not result.lasting:
                self.unanswered.add(task_id)

    def _learn_dating(self, info: TaskDetails) -> None:
        if self.dating == "task":
            return
        dates = {s.stream_id: self.rows[s.stream_id].started_at for s in info.streams or ()
                 if s.stream_id in self.rows}  # fmt: skip
        shown = row_dating(info, dates)
        if shown is not None and shown != self.dating:
            self.dating = shown
            log.info("row_dating_learned", rows_carry=shown)

    def _check_row_status(self, task_id: str, contradicted: list[str]) -> None:
        if not contradicted or not self.trusted:
            return
        self.trusted = False
        self.metrics.errors.labels("status_untrusted").inc()
        log.warning(
            "row_status_untrusted", task_id=task_id, stream_ids=contradicted,
            reason="usage rows called runs finished that task details show in progress: "
            "from now on a run ends when its task's details say so",
        )  # fmt: skip

    def read_awaited(self) -> tuple[dict[str, Awaited], frozenset[str]]:
        """Runs that task details call finished must reach the ledger finished, however
        late their usage row appears and however long ago they started: until they do,
        their task's runs are read by ID (and those of settling tasks). Returns what each
        task awaits, and the awaited runs already finished (in the ledger, or by a row of
        this poll)."""
        flagged = self.ledger.flagged_tasks()
        awaited = awaited_runs(flagged, self.details, self.baseline, self.stamp)
        if self.fetch.per_task:  # a task is one run: it awaits its own row
            awaited = per_task_awaited(awaited)
        wanted = {stream for held in awaited.values() for stream in held.runs}
        # A run taken for history in doubt is not done until its task tells its start:
        # its task is read by ID meanwhile, so that its row is at hand when it does.
        held = self.ledger.load_runs(wanted)
        done = {s for s, state in held.items() if state.finished and state.unconfirmed is None}
        # Runs whose end details told in an earlier poll: their rows of this poll were
        # read a poll interval or more after the end (a row may lag its run's end). Not
        # the runs awaited because they are in doubt: no detail has told their end.
        doubted = {s for s, state in held.items() if state.unconfirmed is not None}
        self.told = {s for _, record in flagged for s in record.awaiting} - doubted
        if self.trusted:  # else a run ends by such a row only
            done |= {s for s in wanted & self.rows.keys() if self.rows[s].terminal}
        following = [task_id for task_id, r in flagged if r.follow_until > self.stamp]
        wanted_tasks = tasks_to_read(awaited, frozenset(done), following, frozenset(self.gone))
        self.take_task_runs(wanted_tasks, gone_if_missing=True)
        return awaited, frozenset(done)

    def take_task_runs(self, task_ids: Iterable[str], *, gone_if_missing: bool) -> None:
        """Every run of each task, read by its ID, into the poll's rows. A listing that
        answered with every row readable shows all the task's runs (``whole``); one that
        answered 404 means the task is gone, where ``gone_if_missing``."""
        for task_id, listing in self.fetch.task_runs(task_ids).items():
            self.report.task_requests += 1
            if isinstance(listing, ApiError):
                self.fetch.failed(task_id, listing, self.report)
                if gone_if_missing and isinstance(listing, NotFound):
                    self.gone.add(task_id)
                continue
            self.take(listing)
            if not listing.invalid:
                self.whole.add(task_id)

    # -- counting -----------------------------------------------------------------------

    def fold(self, listed: dict[str, TaskInfo]) -> Fold:
        """Apply every row to its run, and make the task records of the poll.

        A new run whose row says it started before the baseline, while its task's details
        (which alone tell its own start) did not answer, is taken for history, as its row
        says, but in doubt (``RunState.unconfirmed``): its task is asked again at every
        poll, and when it answers that the run started after the baseline, the run is
        counted in full from then on (``accounting.count_in_full``).
        """
        report, baseline, unanswered = self.report, self.baseline, self.unanswered
        dating = self.dating
        rows = self.rows
        starts = {
            stream.stream_id: stream.created_at.timestamp()
            for info in self.details.values()
            for stream in info.streams or ()
        }
        states = self.ledger.load_runs(rows)
        report.runs_updated += len(states)
        report.runs_new += len(rows) - len(states)
        fold = Fold(new=rows.keys() - states.keys())
        deltas, guard, known, tasks = fold.deltas, self.ledger.guard, self.ledger.task, fold.tasks
        for key, obs in rows.items():  # every row of the poll: kept lean
            listed_at = obs.started_at  # the row's own date, by which listings find it
            old = states.get(key)
            started = starts.get(key, listed_at)
            # Rows known to carry their runs' starts are taken at their word.
            if old is None and started < baseline and key not in starts and dating != "run":
                started = self._started_unlisted(obs, baseline)
            if started != listed_at:
                obs = dataclasses.replace(obs, started_at=started)  # noqa: PLW2901
            was_finished = old is not None and old.finished  # apply updates old in place
            confirming = (
                old is not None and old.unconfirmed is not None and obs.task_id not in unanswered
            )
            if confirming and confirm_start(old, started, baseline):  # type: ignore[arg-type]
                report.runs_confirmed += 1
                log.info("run_counted_in_full", task_id=obs.task_id, stream_id=key)
            baselined = old.baselined if old is not None else started < baseline
            ends = run_ends(
                terminal=obs.terminal, trusted=self.trusted or obs.task_id in self.refused,
                baselined=baselined, told=key in self.told,
            )  # fmt: skip
            state = apply(old, obs, baselined=baselined, guard=guard, deltas=deltas, ends=ends)
            if obs.terminal and not state.finished:  # read and folded again until it ends
                state.fingerprint = None
                fold.unended.add(obs.task_id)
            if confirming:
                fold.confirmed.append(
                    Confirmed(state.task_id, key, state.finished, state.baselined)
                )
            if state.baselined and (
                state.unconfirmed is not None
                or (old is None and key not in starts and obs.task_id in unanswered)
            ):
                self._doubt(state, first=old is None)
                fold.doubts.append(Doubt(state.task_id, key, old is None))
            fold.runs.append(state)
            if state.finished and not was_finished:
                ended = Ended(state.task_id, state.started_at, state.exec_ms, listed_at)
                fold.ended.append(ended)
            task_id = obs.task_id
            record = record_from_row(
                tasks.get(task_id) or known(task_id), obs.model, obs.status, started
            )
            if record is not None:
                tasks[task_id] = record
        fold.tasks = self._task_records(tasks, listed, fold.unended)
        report.rows = len(rows)
        return fold

    def _task_records(
        self,
        from_rows: Mapping[str, TaskRecord],
        listed: Mapping[str, TaskInfo],
        unended: Collection[str],
    ) -> dict[str, TaskRecord]:
        """The records of the tasks of the poll: from their rows (``from_rows``), then
        from the task list and task details, which say more; and when all their runs
        were first listed by ID. A task with a run that its row calls finished and its
        details have not (``unended``) is live: its details are read until they do."""
        known, stamp = self.ledger.task, self.stamp
        tasks = dict(from_rows)
        infos = [*listed.items(), *((t, d.task) for t, d in self.details.items())]
        for task_id, task in infos:
            tasks[task_id] = record_from_info(tasks.get(task_id) or known(task_id), task, stamp)
        for task_id in self.whole - self.gone:  # the first listing of all its runs
            record = tasks.get(task_id) or known(task_id)
            if record is not None and not record.listed_whole:
                tasks[task_id] = record._replace(listed_whole=stamp)
        for task_id in set(unended) - self.details.keys() - self.refused:
            record = tasks.get(task_id) or known(task_id)
            if record is not None and not record.active:
                tasks[task_id] = record._replace(active=True, last_activity=stamp)
        return tasks

    def _started_unlisted(self, obs: Observation, baseline: float) -> float:
        """The start of a new run whose row dates it before the baseline and whose
        task's details did not tell it: after the first listing of all its task's runs,
        if that listing did not show it (``policy.started_unlisted``)."""
        if is_task_run(obs.stream_id):
            return obs.started_at  # a task's own row, dated by its task
        record = self.ledger.task(obs.task_id)
        if record is None or not record.listed_whole:
            return obs.started_at
        started = started_unlisted(obs.started_at, record.listed_whole, baseline)
        self.report.runs_after_listing += 1
        log.info(
            "run_started_after_listing", task_id=obs.task_id, stream_id=obs.stream_id,
            listed_whole=record.listed_whole,
        )  # fmt: skip
        return started

    def _doubt(self, state: RunState, *, first: bool) -> None:
        hold_in_doubt(state, first, self.stamp)
        if first:
            self.report.unconfirmed_rows += 1
            log.warning(
                "row_start_unconfirmed", task_id=state.task_id, stream_id=state.stream_id,
                reason="its row dates it before the baseline and its task's details did not "
                "answer: counted as history until they do",
            )  # fmt: skip

    # -- what each task awaits next -----------------------------------------------------

    def settle(
        self, awaited: dict[str, Awaited], done: frozenset[str], fold: Fold
    ) -> tuple[dict[str, TaskRecord], list[RunState]]:
        """Record what each task still awaits, and how long it is followed; give up on a
        run awaited for longer than ``Timing.give_up_after``. Returns the task records
        and the runs to write."""
        stamp = self.stamp
        tasks, runs = dict(fold.tasks), list(fold.runs)
        # A finished run stays finished: what was done before the fold still is.
        # (A run taken for history in doubt waits for its task to tell its start.)
        finished = done | {s.stream_id for s in fold.runs if s.finished and s.unconfirmed is None}
        settling = settling_tasks(fold.ended, stamp, self.timing)
        # Tasks whose following has lapsed are rewritten too, which unflags them.
        following = {task_id for task_id, r in self.ledger.flagged_tasks() if r.follow_until}
        folded: dict[str, int] | None = None  # this poll's runs: where each is in ``runs``
        for task_id in set(awaited) | self.gone | following | settling:
            held = awaited.get(task_id, Awaited(frozenset(), 0.0))
            left = tuple(sorted(held.runs - finished)) if task_id not in self.gone else ()
            if left and stamp - held.since > self.timing.give_up_after:
                if folded is None:
                    folded = {state.stream_id: n for n, state in enumerate(runs)}
                left, settled = self.give_up(task_id, left, held.since, runs, folded)
                for state in settled:  # in doubt no more: history for good
                    if state.stream_id in folded:
                        runs[folded[state.stream_id]] = state
                    else:  # not folded in this poll: written all the same
                        runs.append(state)
            prior = self.ledger.task(task_id)
            record = tasks.get(task_id) or prior
            if record is None:
                continue
            follow = stamp + self.timing.settle_grace if task_id in settling else None
            tasks[task_id] = settled_record(
                record, prior, Awaited(frozenset(left), held.since),
                gone=task_id in self.gone, follow_until=follow, stamp=stamp,
            )  # fmt: skip
        return tasks, runs

    def give_up(
        self,
        task_id: str,
        left: tuple[str, ...],
        since: float,
        runs: Sequence[RunState],
        folded: Mapping[str, int],
    ) -> tuple[tuple[str, ...], list[RunState]]:
        """Stop awaiting runs that a task has awaited for too long. Those in doubt are
        taken for history for good once they have been in doubt that long themselves
        (they may have joined the task's awaited runs later). Returns the runs still
        awaited, and new states of the runs taken for history for good (``runs`` and
        ``folded``, where each of this poll's runs is in it, are left as they are)."""
        stamp, limit = self.stamp, self.timing.give_up_after
        waited = stamp - since
        states = {s: runs[folded[s]] for s in left if s in folded}  # this poll's
        stored = self.ledger.load_runs(s for s in left if s not in states)
        states.update(stored)
        doubted_at = {
            s: None if state.unconfirmed is None else state.unconfirmed.at
            for s, state in states.items()
        }
        waiting = sort_waiting(left, doubted_at, stamp, limit)
        if waiting.missing:
            self.metrics.errors.labels("usage_missing").inc(len(waiting.missing))
            log.warning(
                "run_usage_missing", task_id=task_id, stream_ids=waiting.missing,
                awaited_seconds=round(waited),
            )  # fmt: skip
        if waiting.unsure:
            # History for good, counted from its first sight on: a history backfill adds
            # what it held then (see exporter.backfill), whenever it started.
            log.warning(
                "run_start_unconfirmed", task_id=task_id, stream_ids=waiting.unsure,
                awaited_seconds=round(waited),
            )  # fmt: skip
        settled = [dataclasses.replace(states[s], unconfirmed=None) for s in waiting.unsure]
        return waiting.recent, settled


def _volume(row: Observation) -> tuple[int, int, int, int, int]:
    values = row.values
    return (
        values.get("credits", 0),
        values.get("steps", 0),
        values.get("tool_calls", 0),
        len(row.tools),
        values.get("exec_ms", 0),
    )
