"""The poll's timing rules, in one object handed to the poller (no module constants)."""

from __future__ import annotations

from dataclasses import dataclass

HOUR = 3600.0
DAY = 24 * HOUR


@dataclass(frozen=True)
class Timing:
    """How far back a poll reaches, and how long it waits, follows and remembers.

    ``lookback``: the window whose runs a poll lists (LOOKBACK).
    ``full_list_interval``: seconds between full listings of the window; between them a
    poll lists only runs started within ``recent_window`` before it (0: every poll lists
    the window). A run that ends later than its start plus ``recent_window`` minus
    ``settle_grace`` is read by ID for ``settle_grace`` after it ended instead; any other
    change to an older run counts at the next full listing.
    ``settle_grace``: how long a run that ended outside what polls list is still read by
    ID, in case its usage settles (grows once more) after its first finished row.
    ``account_interval``: seconds between reads of the account balance and the usage
    summary, which reconciles the counters with the API's totals (RECONCILE_INTERVAL).
    ``hot_lookbacks``: memory holds the runs that started within this many lookbacks and
    the tasks active within them (with live, followed and pinned ones); older ones stay in
    the ledger file, evicted from memory every ``evict_interval`` (or lookback, if shorter).
    ``sweep_lookback``, ``sweep_budget``, ``sweep_requests``: how far back a sweep
    lists, and the requests it may make in all and in one poll (``exporter.poll.sweep``).
    ``scan_interval``: seconds between scans of the caller's own task list for older
    tasks continued since the last scan (whose new rows may carry their task's date); 0:
    never.
    """

    lookback: float
    full_list_interval: float = HOUR
    settle_grace: float = HOUR
    recent_window: float = 2 * HOUR
    account_interval: float = 300.0
    hot_lookbacks: int = 2
    evict_interval: float = HOUR
    scan_interval: float = HOUR
    sweep_lookback: float = 30 * DAY
    sweep_budget: int = 5000
    sweep_requests: int = 100

    @property
    def incremental(self) -> bool:
        """Whether polls between full listings list only recent starts."""
        return bool(self.full_list_interval) and self.lookback > self.recent_window

    @property
    def listed_span(self) -> float:
        """How far back from its start every poll's listing reaches, at the least."""
        return self.recent_window if self.incremental else self.lookback

    @property
    def give_up_after(self) -> float:
        """How long a task's runs are awaited (and a run held in doubt) before the
        exporter stops asking: a lookback, and at least an hour."""
        return max(self.lookback, HOUR)

    @property
    def evict_every(self) -> float:
        return min(self.evict_interval, self.lookback)

    def hot_since(self, stamp: float) -> float:
        """The oldest start (unix time) that memory keeps at ``stamp``."""
        return stamp - self.hot_lookbacks * self.lookback
