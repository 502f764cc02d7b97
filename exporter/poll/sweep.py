"""Sweeps: listings further back than the lookback window, made while the counters and
the API's own totals disagree (``exporter.reconcile``), to find what the regular
listings could not show: a continuation of an old task dated by its task, a settle long
after its run left the window, a teammate's run longer than the lookback.

A sweep lists ``/usage/streams`` a day at a time (less where a day costs more requests
than a poll may make, an hour at least), newest first, from the start of the window back
to ``Timing.sweep_lookback``. Its requests are the pages it lists and the
task details asked for the runs it finds dated before the baseline (only they tell
whether such a run started after it): about ``Timing.sweep_requests`` a poll and
``Timing.sweep_budget`` in all. Rows already counted are skipped by their
fingerprints; what it finds is counted by the same rules as every other row. Its progress is kept in
the ledger with each poll, so a restart goes on where the last committed poll left it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, replace

import structlog

from exporter.accounting import Observation, RunState
from exporter.catalogue import NANO
from exporter.client import Listing
from exporter.errors import ApiError
from exporter.ledger import Ledger
from exporter.poll.fetch import Fetcher
from exporter.poll.policy import Window
from exporter.poll.timing import DAY, Timing
from exporter.reconcile import AUDIT_KEY, ROUNDING, TOTAL, Audit

log = structlog.get_logger(__name__)

SWEEP_KEY = "sweep"  # ledger meta key of the stored ``SweepState``
THRESHOLD = 10 * ROUNDING  # a gap above a hundredth of a credit is worth a sweep
SLICE = DAY  # listed a day at a time at most,
MIN_SLICE = DAY / 24  # an hour at least: shorter where a day would cost too many requests


@dataclass(frozen=True)
class SweepState:
    """A sweep in progress (``next`` > 0), and what starts the next one."""

    since: float = 0.0  # the oldest start the sweep lists (unix time)
    next: float = 0.0  # the end of the next day to list; 0: no sweep in progress
    requests: int = 0  # requests made by the sweep so far (pages and task details)
    found: int = 0  # runs it found that count in full, so far
    gap_since: float | None = None  # since when the gap has stood above THRESHOLD
    swept_gap: int | None = None  # the gap (nano-credits) the last sweep left
    gap: int = 0  # the gap when the sweep started (nano-credits)
    found_credits: int = 0  # what the runs it found held when counted in full
    span: float = SLICE  # how much of its history it lists at a time (seconds)

    @property
    def active(self) -> bool:
        return self.next > 0

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def read(cls, text: str | None) -> SweepState:
        """The stored state; a fresh one for none, or for one that does not read."""
        if not text:
            return cls()
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return cls()


def sweep_due(
    state: SweepState, gap: int | None, stamp: float, window_since: float, timing: Timing
) -> SweepState:
    """The state once the settled ``gap`` (nano-credits; None: not known) is taken in.
    A sweep starts when a positive gap has stood above THRESHOLD for two
    reconciliations and is larger than the one the last sweep left (which may be
    spend that no listing shows: the sweep is not made again for it)."""
    if gap is None or gap <= THRESHOLD or not timing.sweep_lookback:
        return replace(state, gap_since=None)
    since = state.gap_since if state.gap_since is not None else stamp
    state = replace(state, gap_since=since)
    if state.active:
        return state
    lasting = stamp - since >= 2 * timing.account_interval
    grown = state.swept_gap is None or gap > state.swept_gap + THRESHOLD
    if not (lasting and grown):
        return state
    return replace(
        state, since=stamp - timing.sweep_lookback, next=window_since, requests=0, found=0,
        gap=gap, found_credits=0,
    )  # fmt: skip


def next_slice(state: SweepState, spent: int, timing: Timing) -> tuple[float, float] | None:
    """The day to list next ([since, until)), while the sweep is in progress and this
    poll (``spent``: the requests made by it so far) and the sweep are within their
    budgets."""
    if not state.active or state.next <= state.since or not timing.sweep_lookback:
        return None
    if spent >= timing.sweep_requests or state.requests >= timing.sweep_budget:
        return None
    return max(state.since, state.next - state.span), state.next


def after_slice(
    state: SweepState, listed: tuple[float, float], requests: int, timing: Timing
) -> SweepState:
    """The state once a span is listed (with ``requests`` made for it); ended (``next``
    0) once the oldest is, or once the budget is spent. The next span is as long as
    this poll's requests allow at the rate this one cost (an hour to a day)."""
    rate = requests / max(listed[1] - listed[0], 1.0)
    fits = timing.sweep_requests / rate if rate else SLICE
    span = min(SLICE, max(MIN_SLICE, fits))
    state = replace(state, next=listed[0], requests=state.requests + requests, span=span)
    if state.next <= state.since or state.requests >= timing.sweep_budget:
        state = replace(state, next=0.0)
    return state


def left_after(state: SweepState) -> int:
    """The gap a sweep that ended is taken to leave: the gap it started for, less what
    the runs it found held when counted (never below nothing: a run found may have
    spent some of that before the comparison began). It is not swept for again."""
    return max(0, state.gap - state.found_credits)


class Sweep:
    """One poll's part of a sweep: the days it lists, and the runs new to the ledger it
    finds (``found``); its state before the poll (``before``) and after (``state``)."""

    def __init__(self, fetch: Fetcher, ledger: Ledger, timing: Timing, stamp: float) -> None:
        self.fetch, self.ledger, self.timing, self.stamp = fetch, ledger, timing, stamp
        self.before = SweepState.read(ledger.meta.get(SWEEP_KEY))
        self.state = self.before
        self.found: set[str] = set()

    def listings(
        self, window: Window, seen: Collection[str], dated_by_run: bool = False
    ) -> Iterator[Listing[Observation]]:
        """While the counters and the API's totals disagree (a settled gap that lasts),
        the days further back than the window, each listing as it is read, within the
        sweep's budgets; ``seen``: the runs the poll holds rows of already. The tasks of
        the runs found dated before the baseline are asked for their details (the
        poll's ``ask_old_starts``), unless rows are known to carry their runs' starts
        (``dated_by_run``): each counts as a request of the sweep. A page that fails ends
        the sweep's work for this poll, not the poll."""
        window_since = window.since
        gap = Audit.read(self.ledger.meta.get(AUDIT_KEY)).gap
        total = None if gap is None else gap.get(TOTAL)
        state = sweep_due(self.before, total, self.stamp, window_since, self.timing)
        if state.active and not self.before.active:
            log.warning(
                "sweep_started", gap_credits=(total or 0) / NANO, back_to=state.since,
                reason="the API's totals hold spend the counters do not: listing further "
                "back than the window",
            )  # fmt: skip
        self.state, spent, metrics, asked = state, 0, self.fetch.metrics, set[str]()
        while (day := next_slice(self.state, spent, self.timing)) is not None:
            try:
                listing = self.fetch.days(*day)
            except ApiError as exc:
                metrics.errors.labels(exc.reason).inc()
                log.warning("sweep_page_failed", reason=exc.reason, error=str(exc))
                return
            rows = {row.stream_id: row for row in listing.rows if row.stream_id not in seen}
            found = rows.keys() - self.ledger.load_runs(rows).keys()
            self.found |= found
            tasks = set() if dated_by_run else {
                rows[s].task_id for s in found if rows[s].started_at < window.baseline
            }  # fmt: skip
            requests = listing.pages + len(tasks - asked)
            asked |= tasks
            spent += requests
            metrics.sweep_requests.inc(requests)
            self.state = after_slice(self.state, day, requests, self.timing)
            yield listing

    def progress(self, runs: Sequence[RunState]) -> dict[str, str]:
        """The sweep's progress as meta, with what the runs it found held once folded
        (``runs``: the poll's). A sweep that ended is not made again for the gap it
        leaves (``left_after``)."""
        counted = [r for r in runs if r.stream_id in self.found and not r.baselined]
        self.fetch.metrics.sweep_runs_found.inc(len(counted))
        state = replace(
            self.state,
            found=self.state.found + len(counted),
            found_credits=self.state.found_credits + sum(r.credits for r in counted),
        )
        if self.before.active and not state.active:
            state = replace(state, swept_gap=left_after(state))
            log.warning(
                "sweep_finished", runs_found=state.found, requests=state.requests,
                found_credits=state.found_credits / NANO,
            )  # fmt: skip
        return {SWEEP_KEY: state.dump()} if state != self.before else {}
