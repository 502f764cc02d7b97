"""The poller: one poll cycle every interval, committed to the ledger atomically."""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import structlog

from exporter.accounting import Deltas
from exporter.balance import BalanceReader
from exporter.catalogue import CREDITS
from exporter.client import NeoClient
from exporter.errors import ApiInterrupted, ExporterError
from exporter.ledger import Ledger
from exporter.models import UsageSummary
from exporter.poll.cycle import PollCycle
from exporter.poll.fetch import Fetcher
from exporter.poll.report import PollReport
from exporter.poll.timing import Timing
from exporter.reconcile import AUDIT_KEY, counted_by_model, reconcile
from exporter.selfmetrics import SelfMetrics

log = structlog.get_logger(__name__)


class Poller:
    """Runs a ``PollCycle`` every interval and commits what it found; keeps what lasts
    from one poll to the next (when the balance and an eviction are due, whether the
    task list is offered)."""

    # Fixed attributes: a setting assigned under a wrong name fails instead of being kept.
    __slots__ = (
        "_account_due", "_evict_due", "_task_list_offered", "account", "before_poll",
        "clock", "fetch", "ledger", "metrics", "on_commit", "pinned", "polls_done", "timing",
    )  # fmt: skip

    def __init__(  # noqa: PLR0913 - the three parts, then keyword-only options
        self,
        client: NeoClient,
        ledger: Ledger,
        metrics: SelfMetrics,
        *,
        timing: Timing,
        pinned: Sequence[str] = (),
        max_workers: int = 4,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_commit: Callable[[], None] = lambda: None,
        account: BalanceReader | None = None,
        before_poll: Callable[[], None] = lambda: None,
    ) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.timing = timing
        self.pinned = list(dict.fromkeys(pinned))
        self.clock = clock
        self.on_commit = on_commit
        self.account = account
        # What must hold for a poll to count anything (the state file is in place, the
        # ledger's account is the API's): raises an ExporterError, and the poll fails.
        self.before_poll = before_poll
        self.fetch = Fetcher(client, metrics, ledger.fingerprints, max_workers=max_workers)
        self._task_list_offered = True
        self._account_due = 0.0  # unix time (of the poller's clock) of the next balance read
        self._evict_due = 0.0  # and of the next eviction of old runs from memory
        self.polls_done = 0

    @property
    def client(self) -> NeoClient:
        return self.fetch.client

    @client.setter
    def client(self, client: NeoClient) -> None:
        self.fetch.client = client

    def close(self) -> None:
        self.fetch.close()

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
        except ApiInterrupted:  # the exporter is stopping: not a failure of the API
            log.info("poll_interrupted")
            return None
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

    def load_index(self) -> None:
        """The ledger's tasks and runs that polling may need in memory (a no-op once
        loaded): those of the last few lookbacks, live or followed ones, and pinned tasks."""
        self.ledger.load_index(self.timing.hot_since(self.clock().timestamp()), keep=self.pinned)

    def poll_once(self) -> PollReport:
        self.before_poll()
        with _cycle_collector_paused():
            self.load_index()
            now = self.clock()
            cycle = PollCycle(
                self.fetch, self.ledger, self.timing, now,
                pinned=self.pinned, task_list_offered=self._task_list_offered,
            )  # fmt: skip
            try:
                changes = cycle.run()
            finally:  # what the task list said holds even if the poll fails after it
                self._task_list_offered = cycle.task_list_offered
            stamp = now.timestamp()
            summary = None
            if self.account is not None and stamp >= self._account_due:
                account, summary = self._read_account(now)
                changes.meta.update(account)
            changes.meta.update(self._audit(stamp, summary, changes.deltas, changes.meta))
            overflow = self.ledger.commit(changes)
            if stamp >= self._evict_due:
                # Memory follows the window: older runs and tasks stay in the file only.
                self._evict_due = stamp + self.timing.evict_every
                self.ledger.evict(self.timing.hot_since(stamp), keep=self.pinned)
            self._after_commit(changes.deltas, overflow)
            self.polls_done += 1
            self.on_commit()
            return cycle.report

    def _read_account(self, now: datetime) -> tuple[dict[str, str], UsageSummary | None]:
        """The balance moves slowly and its alerts look at hours: it is read every
        ``account_interval``, not on every poll, to keep requests per poll to the usage.
        Returns its meta, and the all-time usage summary read with it, if it answered."""
        assert self.account is not None
        self._account_due = now.timestamp() + self.timing.account_interval
        read = self.account.read(now)
        if read.errors:
            self._account_due = 0.0  # try again on the next poll
        for exc in read.errors:
            self.metrics.errors.labels(exc.reason).inc()
            log.warning("account_read_failed", reason=exc.reason, error=str(exc))
        return read.meta, read.summary

    def _audit(
        self, stamp: float, summary: UsageSummary | None, deltas: Deltas, meta: dict[str, str]
    ) -> dict[str, str]:
        """The poll's part in the self-audit (``exporter.reconcile``): what the ledger
        counted, this poll's ``deltas`` included, with the summary if one was read.
        ``meta``: what the poll writes (its audit first, if it has one)."""
        if self.account is None:
            return {}
        counted = {
            model: before + after
            for model, before, after in _merged(
                counted_by_model(self.ledger.counters, CREDITS.name),
                counted_by_model(deltas.counters, CREDITS.name),
            )
        }
        stored = meta.get(AUDIT_KEY, self.ledger.meta.get(AUDIT_KEY))
        return reconcile(stored, summary, counted, stamp)

    def _after_commit(self, deltas: Deltas, overflow: dict[str, int]) -> None:
        for name, count in deltas.decreases.items():
            self.metrics.value_decreases.labels(name).inc(count)
        for task_id, stream_id, name in deltas.decreased_runs:
            log.warning("value_decreased", task_id=task_id, stream_id=stream_id, field=name)
        for label, count in overflow.items():
            self.metrics.label_overflow.labels(label).inc(count)
        self.metrics.ledger_runs.set(self.ledger.run_count)
        self.metrics.ledger_size.set(self.ledger.size_bytes())


def _merged(a: dict[str, int], b: dict[str, int]) -> Iterator[tuple[str, int, int]]:
    for key in a.keys() | b.keys():
        yield key, a.get(key, 0), b.get(key, 0)


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
