"""Poller: decides what to fetch each interval and folds it into the ledger."""

from __future__ import annotations

import contextlib
import gc
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import structlog

from exporter.account import AccountReader
from exporter.accounting import (
    NON_TERMINAL,
    Deltas,
    FirstSight,
    Observation,
    RunState,
    apply,
    count_in_full,
    row_fingerprint,
    to_nano,
)
from exporter.client import Listing, NeoClient
from exporter.errors import ApiError, ApiStatusError, ExporterError, NotFound
from exporter.ledger import Ledger, PollChanges, TaskRecord
from exporter.models import TaskDetails, TaskInfo
from exporter.selfmetrics import SelfMetrics

log = structlog.get_logger(__name__)
T = TypeVar("T")

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
# How long a run that finished outside the listed window is still read by ID, in case
# its usage settles (grows once more) after the first finished row.
SETTLE_GRACE = 3600.0
# Between full listings of the lookback window, a poll lists only runs started within
# RECENT_WINDOW before it (or before the poll before it): the runs that can still grow.
# A run that ends later than its start plus RECENT_WINDOW - SETTLE_GRACE is read by ID
# for SETTLE_GRACE instead; anything else changes count at the next full listing.
RECENT_WINDOW = 2 * SETTLE_GRACE
FULL_LIST_INTERVAL = 3600.0  # default seconds between full listings of the window
ACCOUNT_INTERVAL = 300.0  # seconds between reads of the account balance
# Memory holds the runs that started within HOT_LOOKBACKS lookbacks and the tasks active
# within them (plus live, followed and pinned ones); older ones stay in the ledger file,
# evicted from memory every EVICT_INTERVAL (or lookback, if shorter).
HOT_LOOKBACKS = 2
EVICT_INTERVAL = 3600.0


@dataclass
class PollReport:
    """What one poll did, for the log line and the tests."""

    rows: int = 0
    unchanged: int = 0
    runs_new: int = 0
    runs_updated: int = 0
    invalid_rows: int = 0
    invalid_fields: int = 0  # values read as not reported, each costing only itself
    pages: int = 0
    task_requests: int = 0
    unconfirmed_rows: int = 0  # new rows taken for history until their task tells
    runs_confirmed: int = 0  # runs so taken that their task showed to be new after all
    full_listing: bool = True  # the whole lookback window was listed
    warnings: list[str] = field(default_factory=list)


class Poller:
    """Fetches usage and task state, and commits each poll to the ledger atomically."""

    def __init__(
        self,
        client: NeoClient,
        ledger: Ledger,
        metrics: SelfMetrics,
        *,
        lookback: float,
        full_list_interval: float = FULL_LIST_INTERVAL,
        pinned: Sequence[str] = (),
        max_workers: int = 4,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_commit: Callable[[], None] = lambda: None,
        account: AccountReader | None = None,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.metrics = metrics
        self.lookback = lookback
        self.full_list_interval = full_list_interval
        self.pinned = list(dict.fromkeys(pinned))
        self.clock = clock
        self.on_commit = on_commit
        self.account = account
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="neo-fetch")
        self._task_list_supported = True
        self._account_due = 0.0  # unix time (of the poller's clock) of the next balance read
        self._evict_due = 0.0  # and of the next eviction of old runs from memory
        self.polls_done = 0

    @property
    def incremental(self) -> bool:
        """Whether polls between full listings list only recent starts."""
        return bool(self.full_list_interval) and self.lookback > RECENT_WINDOW

    @property
    def listed_span(self) -> float:
        """How far back from its start every poll's listing reaches, at the least."""
        return RECENT_WINDOW if self.incremental else self.lookback

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- the loop ---------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        interval: float,
        *,
        after_each: Callable[[], object] = lambda: None,
    ) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set; a failed poll never ends it."""
        while not stop.is_set():
            started = time.monotonic()
            self.poll_safely()
            after_each()
            stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def poll_safely(self) -> PollReport | None:
        started = time.monotonic()
        try:
            report = self.poll_once()
        except ExporterError as exc:
            self.metrics.polls.labels("failure").inc()
            self.metrics.last_poll_success.set(0)
            self.metrics.errors.labels(exc.reason).inc()
            log.error("poll_failed", reason=exc.reason, error=str(exc))
            return None
        except Exception as exc:  # a bug must not stop the daemon from serving
            self.metrics.polls.labels("failure").inc()
            self.metrics.last_poll_success.set(0)
            self.metrics.errors.labels("internal").inc()
            log.exception("poll_crashed", error_type=type(exc).__name__)
            return None
        finally:
            self.metrics.poll_duration.observe(time.monotonic() - started)
        self.metrics.polls.labels("success").inc()
        self.metrics.last_poll_success.set(1)
        self.metrics.last_success_time.set(time.time())
        log.info(
            "poll_finished",
            rows=report.rows,
            rows_unchanged=report.unchanged,
            runs_new=report.runs_new,
            runs_updated=report.runs_updated,
            rows_invalid=report.invalid_rows,
            fields_invalid=report.invalid_fields,
            pages=report.pages,
            full_listing=report.full_listing,
            task_requests=report.task_requests,
            rows_unconfirmed=report.unconfirmed_rows,
            runs_confirmed=report.runs_confirmed,
            duration_seconds=round(time.monotonic() - started, 3),
        )
        return report

    # -- one poll ---------------------------------------------------------------

    def poll_once(self) -> PollReport:
        with _cycle_collector_paused():
            return self._poll_once()

    def load_index(self) -> None:
        """The ledger's tasks and runs that polling may need in memory (a no-op once
        loaded): those of the last HOT_LOOKBACKS lookbacks, live or followed ones, and
        pinned tasks."""
        self.ledger.load_index(self._hot_since(self.clock().timestamp()), keep=self.pinned)

    def _hot_since(self, stamp: float) -> float:
        return stamp - HOT_LOOKBACKS * self.lookback

    def _poll_once(self) -> PollReport:
        self.load_index()
        now = self.clock()
        meta = self.ledger.meta
        baseline = float(meta.get("baseline", now.timestamp() - self.lookback))
        since = now.timestamp() - self.lookback
        if "listed_at" in meta:  # after an outage, reach back to cover it
            since = min(since, float(meta["listed_at"]) - self.lookback)
        since = max(since, baseline)
        # Most polls list only recent starts, so that a poll costs what changed, not the
        # window: every FULL_LIST_INTERVAL the whole window is listed, and a change to an
        # older run that no task read by ID showed is counted then, later but once.
        stamp = now.timestamp()
        full = (
            not self.incremental
            or stamp - float(meta.get("listed_at", 0)) >= self.full_list_interval
        )
        if not full:
            last = min(stamp, float(meta.get("recent_at", stamp)))
            since = max(since, last - RECENT_WINDOW)
        report = PollReport(full_listing=full)
        known = self.ledger.fingerprints
        # Rows become observations page by page: a first poll holds a whole window.
        listing = self.client.read_stream_usage(
            Observation.from_row,
            since=datetime.fromtimestamp(since, UTC),
            fingerprint=row_fingerprint,
            known=known,
        )
        rows: dict[str, Observation] = {}
        self._take(listing, rows, report)
        # listed_at is the last listing of the whole window: an outage reaches back from it.
        changes = PollChanges(meta={"recent_at": repr(stamp)})
        if full:
            changes.meta["listed_at"] = repr(stamp)
        if "baseline" not in meta:
            changes.meta["baseline"] = repr(baseline)
        details: dict[str, TaskDetails] = {}
        gone: set[str] = set()
        self._poll_pinned(rows, report, changes)
        listed = self._poll_live_tasks(rows, report, details, gone)
        unanswered: set[str] = set()
        self._resolve_old_streams(rows, baseline, details, report, unanswered)
        awaited, done = self._fetch_awaited(rows, baseline, details, report, now, gone)
        # And those of the rows just read by ID, without asking a task twice.
        self._resolve_old_streams(rows, baseline, details, report, unanswered)
        unsure: list[tuple[RunState, bool]] = []  # taken for history in doubt: see _fold
        confirmed: list[RunState] = []  # and no longer in doubt
        ended = self._fold(
            rows, baseline, details, listed, changes, report, now, unanswered, unsure, confirmed
        )
        self._await_unconfirmed(unsure, confirmed, awaited, done, details, baseline, stamp)
        self._settle(awaited, done, ended, changes, now, gone)
        if self.account is not None and stamp >= self._account_due:
            # The balance moves slowly and its alerts look at hours: read it every
            # ACCOUNT_INTERVAL, not on every poll, to keep requests per poll to the usage.
            self._account_due = stamp + ACCOUNT_INTERVAL
            account_meta, errors = self.account.read(now)
            changes.meta.update(account_meta)
            if errors:
                self._account_due = 0.0  # try again on the next poll
            for exc in errors:
                self.metrics.errors.labels(exc.reason).inc()
                log.warning("account_read_failed", reason=exc.reason, error=str(exc))
        self.ledger.commit(changes)
        if stamp >= self._evict_due:
            # Memory follows the window: older runs and tasks stay in the file only.
            self._evict_due = stamp + min(EVICT_INTERVAL, self.lookback)
            self.ledger.evict(self._hot_since(stamp), keep=self.pinned)
        self._after_commit(changes.deltas)
        self.polls_done += 1
        self.on_commit()
        return report

    def _take(
        self,
        listing: Listing[Observation],
        rows: dict[str, Observation],
        report: PollReport,
    ) -> None:
        report.pages += listing.pages
        report.unchanged += len(listing.unchanged)
        for bad in listing.invalid:
            self.metrics.errors.labels("invalid_row").inc()
            report.invalid_rows += 1
            report.warnings.append(f"{bad.task_id}: {bad.reason}")
        for defect in listing.defects:
            self.metrics.errors.labels("invalid_field").inc()
            report.invalid_fields += 1
            log.warning(
                "field_skipped", task_id=defect.task_id, stream_id=defect.stream_id,
                field=defect.field, reason=defect.reason,
            )  # fmt: skip
        for kind in listing.inconsistent:
            self.metrics.errors.labels("paging_inconsistent").inc()
            report.warnings.append(f"paging: {kind}")
        for row in listing.rows:
            key = row.stream_id
            held = rows.get(key)
            # Seen twice (two endpoints, shifting pages): keep the copy that says more.
            if held is None or _volume(row) >= _volume(held):
                rows[key] = row

    def _fetch_all(self, fn: Callable[[str], T], ids: Iterable[str]) -> dict[str, T | ApiError]:
        futures = {task_id: self._pool.submit(fn, task_id) for task_id in ids}
        results: dict[str, T | ApiError] = {}
        for task_id, future in futures.items():
            try:
                results[task_id] = future.result()
            except ApiError as exc:
                results[task_id] = exc
        return results

    def _fetch_details(
        self,
        task_ids: set[str],
        details: dict[str, TaskDetails],
        report: PollReport,
        gone: set[str] | None = None,
        unanswered: set[str] | None = None,
    ) -> None:
        """Task details of ``task_ids`` into ``details``; failures are logged and counted,
        and those that asking again may mend are added to ``unanswered``."""
        fetched = self._fetch_all(self.client.get_task, sorted(task_ids))
        report.task_requests += len(fetched)
        for task_id, result in fetched.items():
            if isinstance(result, ApiError):
                self._task_error(task_id, result, report, gone)
                if unanswered is not None and not _lasting(result):
                    unanswered.add(task_id)
            else:
                details[task_id] = result

    def _task_streams(self, task_id: str) -> Listing[Observation]:
        return self.client.read_stream_usage(
            Observation.from_row,
            task_id=task_id,
            fingerprint=row_fingerprint,
            known=self.ledger.fingerprints,
        )

    def _poll_pinned(
        self,
        rows: dict[str, Observation],
        report: PollReport,
        changes: PollChanges,
    ) -> None:
        """Pinned tasks are read by ID every poll, whatever their age."""
        if not self.pinned:
            return
        usages = self._fetch_all(self.client.get_task_usage, self.pinned)
        report.task_requests += len(usages)
        refetch = []
        for task_id, usage in usages.items():
            if isinstance(usage, ApiError):
                self._task_error(task_id, usage, report)
                continue
            key = f"pinned:{task_id}"
            before = json.loads(self.ledger.meta.get(key, "{}"))
            figures = {
                "credits": to_nano(usage.neo_credits),
                "steps": usage.step_count,
                "tool_calls": usage.tool_calls,
                "runs": usage.stream_count if usage.stream_count is not None else 1,
                "model": usage.model,
                "status": usage.status,
            }
            # A figure not reported (or unreadable) keeps the one last reported.
            snapshot = json.dumps(
                {k: before.get(k) if v is None else v for k, v in figures.items()},
                sort_keys=True,
            )
            if self.ledger.meta.get(key) != snapshot:
                changes.meta[key] = snapshot
                refetch.append(task_id)
        for task_id, listing in self._fetch_all(self._task_streams, refetch).items():
            report.task_requests += 1
            if isinstance(listing, ApiError):
                self._task_error(task_id, listing, report)
            else:
                self._take(listing, rows, report)

    def _poll_live_tasks(
        self,
        rows: dict[str, Observation],
        report: PollReport,
        details: dict[str, TaskDetails],
        gone: set[str],
    ) -> dict[str, TaskInfo]:
        """Tasks still running are followed, so that their runs are known when they end.

        The caller's own live tasks come from the task list, two requests whatever their
        number. A task that was live and is no longer listed has just ended: its details
        name its runs, which are then awaited until counted. Tasks the list cannot show
        (teammates', revealed by running rows) are read by ID on every poll. Returns the
        listed tasks.
        """
        tasks = self.ledger.tasks
        live = {t for t in self.ledger.flagged if tasks[t].active}
        # Running rows reveal teammates' tasks too, which the task list never shows.
        live |= {row.task_id for row in rows.values() if row.status in NON_TERMINAL}
        listed: dict[str, TaskInfo] = {}
        complete = self._task_list_supported
        if complete:
            for status in sorted(LIVE_TASK_STATUSES):
                try:
                    found = self.client.list_tasks(status=status)
                    report.task_requests += 1
                except ApiError as exc:
                    if getattr(exc, "status", 0) in (400, 403, 404, 405):
                        self._task_list_supported = False  # not offered: rely on usage only
                    log.warning(
                        "task_list_failed", status=status, reason=exc.reason, error=str(exc)
                    )
                    complete = False
                    break
                listed.update((info.id, info) for info in found)
        if not complete:  # without both lists, every live task is read by ID
            live |= set(listed)
            listed = {}
        self._fetch_details(live - listed.keys(), details, report, gone)
        return {t: info for t, info in listed.items() if t not in details}

    def _fetch_awaited(
        self,
        rows: dict[str, Observation],
        baseline: float,
        details: dict[str, TaskDetails],
        report: PollReport,
        now: datetime,
        gone: set[str],
    ) -> tuple[dict[str, tuple[set[str], float]], set[str]]:
        """Runs that task details call finished must reach the ledger finished, however
        late their usage row appears and however long ago they started: until they do,
        their task's usage is read by ID. Returns task -> (awaited runs, awaited since),
        and the awaited runs already finished (in the ledger, or by a row of this poll)."""
        tasks = self.ledger.tasks
        flagged = [(task_id, tasks[task_id]) for task_id in self.ledger.flagged]
        awaited = {
            task_id: (set(record.awaiting), record.awaiting_since)
            for task_id, record in flagged
            if record.awaiting
        }
        for task_id, info in details.items():
            ended = _ended_streams(info, baseline)
            if ended:
                held, since = awaited.get(task_id, (set(), now.timestamp()))
                awaited[task_id] = (held | ended, since)
        wanted = {stream for ids, _ in awaited.values() for stream in ids}
        # A run taken for history in doubt is not done until its task tells its start:
        # its task is read by ID meanwhile, so that its row is at hand when it does.
        done = {
            s
            for s, state in self.ledger.load_runs(wanted).items()
            if state.finished and state.unconfirmed is None
        }
        done |= {s for s in wanted & rows.keys() if rows[s].status not in NON_TERMINAL}
        fetch = {t for t, (ids, _) in awaited.items() if ids - done}
        fetch |= {t for t, r in flagged if r.follow_until > now.timestamp()}
        for task_id, listing in self._fetch_all(self._task_streams, sorted(fetch - gone)).items():
            report.task_requests += 1
            if isinstance(listing, ApiError):
                self._task_error(task_id, listing, report, gone)
            else:
                self._take(listing, rows, report)
        return awaited, done

    def _settle(
        self,
        awaited: dict[str, tuple[set[str], float]],
        done: set[str],
        ended: list[tuple[RunState, float]],
        changes: PollChanges,
        now: datetime,
        gone: set[str],
    ) -> None:
        """Record what each task still awaits; give up on a run after a lookback.

        A run that has just finished while its start is about to leave what every poll
        lists keeps its task read by ID for SETTLE_GRACE, so a late change still counts.
        """
        stamp = now.timestamp()
        # A finished run stays finished: what was done before the fold still is.
        # (A run taken for history in doubt waits for its task to tell its start.)
        finished = done | {
            state.stream_id
            for state in changes.runs
            if state.finished and state.unconfirmed is None
        }
        span = self.listed_span
        settling = set()
        for state, listed_at in ended:
            # When the run ended, as far as its execution time tells; a settle may come
            # up to SETTLE_GRACE after that, and listings show its row until the row's
            # date (its start, or its task's) + span.
            end = min(stamp, state.started_at + state.exec_ms / 1000)
            if end > stamp - SETTLE_GRACE and listed_at + span < end + SETTLE_GRACE:
                settling.add(state.task_id)
        # Tasks whose following has lapsed are rewritten too, which unflags them.
        following = {t for t in self.ledger.flagged if self.ledger.tasks[t].follow_until}
        give_up = max(self.lookback, 3600.0)
        folded: dict[str, RunState] | None = None  # this poll's runs by ID, if needed
        for task_id in set(awaited) | gone | following | settling:
            ids, since = awaited.get(task_id, (set(), 0.0))
            left = tuple(sorted(ids - finished)) if task_id not in gone else ()
            if left and stamp - since > give_up:
                if folded is None:
                    folded = {state.stream_id: state for state in changes.runs}
                left = self._give_up(task_id, left, stamp, since, give_up, changes, folded)
            prior = self.ledger.task(task_id)
            record = changes.tasks.get(task_id) or prior
            if record is None:
                continue
            until = prior.follow_until if prior and prior.follow_until > stamp else 0.0
            if task_id in settling:
                until = stamp + SETTLE_GRACE
            changes.tasks[task_id] = record._replace(
                active=record.active and task_id not in gone,
                awaiting=left,
                awaiting_since=since if left else 0.0,
                follow_until=0.0 if task_id in gone else until,
            )

    def _resolve_old_streams(
        self,
        rows: dict[str, Observation],
        baseline: float,
        details: dict[str, TaskDetails],
        report: PollReport,
        unanswered: set[str],
    ) -> None:
        """A new stream whose row looks older than the baseline may carry its task's date
        (or a broken one): ask the task for the stream's own start before treating it as
        history, and ask again for a run taken for history while its task did not answer
        (``RunState.unconfirmed``, see ``_fold``). ``unanswered`` gathers the tasks that
        did not answer in this poll but may later; they are not asked twice in a poll."""
        older = {key: row.task_id for key, row in rows.items() if row.started_at < baseline}
        if not older:
            return
        settled = self.ledger.settled_runs(older)
        doubtful = {task_id for key, task_id in older.items() if key not in settled}
        self._fetch_details(
            doubtful - details.keys() - unanswered, details, report, unanswered=unanswered
        )

    def _await_unconfirmed(
        self,
        unsure: list[tuple[RunState, bool]],
        confirmed: list[RunState],
        awaited: dict[str, tuple[set[str], float]],
        done: set[str],
        details: dict[str, TaskDetails],
        baseline: float,
        stamp: float,
    ) -> None:
        """Runs first taken for history in doubt (see ``_fold``) are awaited: their task
        is read by ID, and asked for its details, at every poll until it tells their
        start, or until ``_settle`` gives up. None of them is done while in doubt. Once
        confirmed new, a run still running is awaited no longer, unless its task's details
        already call it finished: they will when it ends. (Not so for one confirmed from
        before the baseline, or at its word: it stays awaited until it finishes.)"""
        for state, first in unsure:
            done.discard(state.stream_id)
            if first:
                ids, since = awaited.get(state.task_id, (set(), stamp))
                awaited[state.task_id] = (ids | {state.stream_id}, since)
        for state in confirmed:
            held = awaited.get(state.task_id)
            info = details.get(state.task_id)
            # Details that never answer (403, 404) will not tell its end, nor will they
            # for a run from before the baseline: those stay awaited until they finish.
            if held is None or state.finished or info is None or state.baselined:
                continue
            if state.stream_id not in _ended_streams(info, baseline):
                held[0].discard(state.stream_id)

    def _give_up(
        self,
        task_id: str,
        left: tuple[str, ...],
        stamp: float,
        since: float,
        limit: float,
        changes: PollChanges,
        folded: dict[str, RunState],
    ) -> tuple[str, ...]:
        """Stop awaiting runs that a task has been awaiting longer than ``limit``. Those
        in doubt are taken for history for good once they have been in doubt that long
        themselves (they may have joined the task's awaited runs later); returns the
        runs still awaited."""
        waited = stamp - since
        states = {s: folded[s] for s in left if s in folded}  # this poll's (``folded``)
        stored = self.ledger.load_runs(s for s in left if s not in states)
        states.update(stored)
        doubts = {s: states[s].unconfirmed for s in left if s in states}
        recent = tuple(s for s, d in doubts.items() if d is not None and stamp - d.at <= limit)
        unsure = [s for s, d in doubts.items() if d is not None and s not in recent]
        missing = [s for s in left if doubts.get(s) is None]
        if missing:
            self.metrics.errors.labels("usage_missing").inc(len(missing))
            log.warning(
                "run_usage_missing", task_id=task_id, stream_ids=missing,
                awaited_seconds=round(waited),
            )  # fmt: skip
        if unsure:
            # History for good, counted from its first sight on: a history backfill adds
            # what it held then (see exporter.backfill), whenever it started.
            log.warning(
                "run_start_unconfirmed", task_id=task_id, stream_ids=unsure,
                awaited_seconds=round(waited),
            )  # fmt: skip
        for stream_id in unsure:
            states[stream_id].unconfirmed = None
            if stream_id in stored:  # not folded in this poll: written all the same
                changes.runs.append(stored[stream_id])
        return recent

    def _fold(
        self,
        rows: dict[str, Observation],
        baseline: float,
        details: dict[str, TaskDetails],
        listed: dict[str, TaskInfo],
        changes: PollChanges,
        report: PollReport,
        now: datetime,
        unanswered: set[str],
        unsure: list[tuple[RunState, bool]],
        confirmed: list[RunState],
    ) -> list[tuple[RunState, float]]:
        """Apply every row to its run; returns the runs seen finished for the first
        time in this poll, each with its row's own date.

        A new run whose row says it started before the baseline, while its task's details
        (which alone tell its own start) did not answer, is taken for history, as its row
        says, but in doubt (``unconfirmed``): its task is asked again at every poll, and
        when it answers that the run started after the baseline, the run is counted in
        full from then on (``count_in_full``). Such runs are added to ``unsure``, with
        whether this is their first sight, and to ``confirmed`` once their start is known.
        """
        ended: list[tuple[RunState, float]] = []
        starts = {
            stream.stream_id: stream.created_at.timestamp()
            for info in details.values()
            for stream in info.streams or ()
        }
        states = self.ledger.load_runs(rows)
        report.runs_updated += len(states)
        report.runs_new += len(rows) - len(states)
        deltas, guard, runs = changes.deltas, self.ledger.guard, changes.runs
        known = self.ledger.task
        tasks: dict[str, TaskRecord] = {}
        for key, obs in rows.items():  # every row of the poll: kept lean
            listed_at = obs.started_at  # the row's own date, by which listings find it
            started = starts.get(key, listed_at)
            obs.started_at = started
            old = states.get(key)
            was_finished = old is not None and old.finished  # apply updates old in place
            if old is not None and old.unconfirmed is not None and obs.task_id not in unanswered:
                self._confirm(old, started, baseline, report)
                confirmed.append(old)
            state = apply(old, obs, baselined=started < baseline, guard=guard, deltas=deltas)
            if state.baselined and (
                state.unconfirmed is not None
                or (old is None and key not in starts and obs.task_id in unanswered)
            ):
                self._doubt(state, old is None, report, now.timestamp())
                unsure.append((state, old is None))
            runs.append(state)
            if state.finished and not was_finished:
                ended.append((state, listed_at))
            task_id = obs.task_id
            prior = tasks.get(task_id) or known(task_id)
            if prior is None or started >= prior.last_activity:
                status = DETAILS_STATUS.get(obs.status, obs.status)
                tasks[task_id] = TaskRecord(
                    obs.model, status, started, status in LIVE_TASK_STATUSES
                )
        infos = [*listed.items(), *((t, d.task) for t, d in details.items())]
        for task_id, task in infos:
            prior = tasks.get(task_id) or self.ledger.task(task_id)
            status = task.status.lower()
            model = task.model or (prior.model if prior else "unknown")
            last = (
                now.timestamp()
                if status in LIVE_TASK_STATUSES
                else (prior.last_activity if prior else 0.0)
            )
            tasks[task_id] = TaskRecord(model, status, last, active=status in LIVE_TASK_STATUSES)
        changes.tasks = tasks
        report.rows = len(rows)
        return ended

    @staticmethod
    def _confirm(state: RunState, started: float, baseline: float, report: PollReport) -> None:
        """A run taken for history in doubt, now that its start is known: from its task's
        details, or from its row when they answered without it or never will (403, 404)."""
        state.started_at = started
        if started >= baseline:
            count_in_full(state)  # the fold of its row counts the rest
            report.runs_confirmed += 1
            log.info("run_counted_in_full", task_id=state.task_id, stream_id=state.stream_id)
        else:
            state.unconfirmed = None  # history indeed

    @staticmethod
    def _doubt(state: RunState, first: bool, report: PollReport, stamp: float) -> None:
        """Keep what a run taken for history in doubt held when first seen, and have its
        row read and folded at every poll (no fingerprint to find it unchanged by)."""
        if first:
            state.unconfirmed = FirstSight(
                dict(state.agents), [r[:] for r in state.tools_seen], stamp
            )
            report.unconfirmed_rows += 1
            log.warning(
                "row_start_unconfirmed", task_id=state.task_id, stream_id=state.stream_id,
                reason="its row dates it before the baseline and its task's details did not "
                "answer: counted as history until they do",
            )  # fmt: skip
        state.fingerprint = None

    def _after_commit(self, deltas: Deltas) -> None:
        for name, count in deltas.decreases.items():
            self.metrics.value_decreases.labels(name).inc(count)
        for task_id, stream_id, name in deltas.decreased_runs:
            log.warning("value_decreased", task_id=task_id, stream_id=stream_id, field=name)
        for label, count in self.ledger.guard.overflow.items():
            self.metrics.label_overflow.labels(label).inc(count)
        self.ledger.guard.overflow.clear()
        self.metrics.ledger_runs.set(self.ledger.run_count)
        self.metrics.ledger_size.set(self.ledger.size_bytes())

    def _task_error(
        self, task_id: str, exc: ApiError, report: PollReport, gone: set[str] | None = None
    ) -> None:
        if isinstance(exc, NotFound) and gone is not None:
            gone.add(task_id)  # deleted, or no longer visible: stop following it
        self.metrics.errors.labels(exc.reason).inc()
        report.warnings.append(f"{task_id}: {exc}")
        event = "task_not_found" if isinstance(exc, NotFound) else "task_fetch_failed"
        log.warning(event, task_id=task_id, reason=exc.reason, error=str(exc))


@contextlib.contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a poll runs.

    A poll builds objects that all live until its commit (a first poll: a whole window's
    observations), and the collector, triggered by those allocations, would walk them
    again and again for nothing: about a tenth of a first poll's CPU. What a poll drops
    is freed by reference counting as before; the few cycles it leaves (httpx's
    responses, whose bodies the client does not keep on them) and any made meanwhile in
    other threads wait for the collector's next run.
    """
    if not gc.isenabled():  # paused by someone else: theirs to resume
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _lasting(exc: ApiError) -> bool:
    """Whether asking again cannot help: the API said the thing is not there or not
    for this key (a 4xx other than 401, 408 and 429)."""
    return isinstance(exc, ApiStatusError) and 400 <= exc.status < 500 and exc.status not in (
        401, 408, 429,
    )  # fmt: skip


def _ended_streams(info: TaskDetails, baseline: float) -> set[str]:
    """The runs that task details call finished, of those started since ``baseline``."""
    return {
        stream.stream_id
        for stream in info.streams or ()
        if (stream.completed_at is not None or stream.status.lower() not in NON_TERMINAL)
        and stream.created_at.timestamp() >= baseline
    }


def _volume(row: Observation) -> tuple[int, int, int, int, int]:
    values = row.values
    return (
        values.get("credits", 0),
        values.get("steps", 0),
        values.get("tool_calls", 0),
        len(row.tools),
        values.get("exec_ms", 0),
    )
