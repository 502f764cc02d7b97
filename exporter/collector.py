"""Collector: turns the ledger's committed state into metric families, with no I/O."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from prometheus_client.core import (
    CounterMetricFamily,
    Exemplar,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample

from exporter.catalogue import (
    ACCOUNT,
    COUNTERS,
    HISTOGRAMS,
    PINNED,
    PINNED_INFO,
    RECONCILED_AT,
    TASKS,
    TEAM,
    TRACKED_TASKS,
    UNRECONCILED,
    MetricSpec,
)
from exporter.histograms import Histogram
from exporter.ledger import Ledger
from exporter.reconcile import AUDIT_KEY, TOTAL, Audit
from exporter.snapshots import ACCOUNT_KEY, TEAM_KEY, BalanceFigures, PinnedFigures, TeamFigures

# Task-details statuses are a closed, documented vocabulary: always allowed as labels.
TASK_STATUSES = frozenset(
    {"active", "pending", "completed", "error", "aborted", "suspended", "failed", "blocked"}
)

IN_FLIGHT = ("active", "pending", "suspended")


# Tasks in view by their last activity are filed by it, this many seconds to a bucket.
EDGE_BUCKET = 600
Placed = tuple[tuple[str, str], int | None]  # a task's (model, status), and its bucket


class TasksInView:
    """The tasks that neo_tasks counts: live, pinned, or last active within the lookback.

    The ledger holds the tasks of two lookbacks in memory, and in a large account most
    of them are in view: counting them on each refresh would make every poll's cost
    grow with the window, not with what changed. The counts are kept instead. A count
    moves the tasks written or evicted since the last one (the ledger notes them), and
    the tasks whose last activity the window's edge has passed: a task in view by its
    last activity alone is filed under it, EDGE_BUCKET seconds to a bucket, and a count
    looks only at the buckets the edge has reached. A filing moves its task only while
    the task is counted under that bucket, so one left behind by a later write moves
    nothing. Only tasks loaded anew, or a clock set back, count every task again.
    Refreshes run one at a time, on the thread that commits or before polling starts.
    (A clock set back by more than a lookback does not bring back tasks already evicted
    from memory: the gauge only, never a counter.)
    """

    def __init__(self, ledger: Ledger, pinned: Iterable[str]) -> None:
        self._ledger = ledger
        self._pinned = frozenset(pinned)
        self._lock = threading.Lock()
        # Each task in view: its (model, status) and the bucket it is filed under (None:
        # live or pinned, not filed), one shared tuple for all tasks alike, kept by
        # bucket until the edge has passed it.
        self._counted: dict[str, Placed] = {}
        self._shared: dict[int | None, dict[tuple[str, str], Placed]] = {}
        self._counts: Counter[tuple[str, str]] = Counter()  # never holds a zero
        self._leaving: dict[int, list[str]] = {}  # bucket -> tasks filed under it
        self._loads = -1  # the ledger's tasks_loads when the counts were last built whole
        self._horizon = float("-inf")

    def count(self, horizon: float) -> Counter[tuple[str, str]]:
        """Tasks in view at ``horizon`` (unix time), by (model, status)."""
        ledger = self._ledger
        with self._lock:
            touched: Iterable[str] = ledger.take_touched_tasks()
            if ledger.tasks_loads != self._loads or horizon < self._horizon:
                # Loaded anew, or the clock went back: tasks may have come into view.
                self._loads = ledger.tasks_loads
                self._counted, self._shared, self._counts, self._leaving = {}, {}, Counter(), {}
                touched = ledger.tasks
            self._horizon = horizon
            for task_id in touched:
                self._place(task_id, horizon)
            edge = int(horizon // EDGE_BUCKET)
            for bucket in sorted(b for b in self._leaving if b <= edge):
                staying: list[str] = []
                for task_id in dict.fromkeys(self._leaving.pop(bucket)):
                    placed = self._counted.get(task_id)
                    if placed is None or placed[1] != bucket:
                        continue  # filed before its task was written again
                    if ledger.tasks[task_id].last_activity >= horizon:
                        staying.append(task_id)  # in the edge's own bucket, still in view
                    else:
                        self._move(task_id, placed, None)
                if staying:
                    self._leaving[bucket] = staying
                else:  # no task is counted under it any more
                    self._shared.pop(bucket, None)
            return Counter(self._counts)

    def _place(self, task_id: str, horizon: float) -> None:
        """Count ``task_id`` as its current record says, instead of as it was counted."""
        record = self._ledger.tasks.get(task_id)
        placed: Placed | None = None
        if record is not None:
            lasting = record.active or task_id in self._pinned
            if lasting or record.last_activity >= horizon:
                bucket = None if lasting else int(record.last_activity // EDGE_BUCKET)
                pair = (record.model, record.status)
                shared = self._shared.setdefault(bucket, {})
                placed = shared.get(pair)
                if placed is None:
                    placed = shared[pair] = (pair, bucket)
        old = self._counted.get(task_id)
        if placed is not old:
            self._move(task_id, old, placed)

    def _move(self, task_id: str, old: Placed | None, new: Placed | None) -> None:
        if old is not None:
            left = self._counts[old[0]] - 1
            if left:
                self._counts[old[0]] = left
            else:
                del self._counts[old[0]]
        if new is None:
            self._counted.pop(task_id, None)
            return
        self._counted[task_id] = new
        self._counts[new[0]] += 1
        if new[1] is not None and (old is None or old[1] != new[1]):
            self._leaving.setdefault(new[1], []).append(task_id)


class UsageCollector:
    """Yields the usage families from the ledger, for example::

    # HELP neo_credits_total Neo credits spent by task runs (1 credit = 10 USD ...).
    # TYPE neo_credits_total counter
    neo_credits_total{model="sonnet-4.6",status="completed"} 412.5
    # TYPE neo_tool_call_duration_seconds histogram
    neo_tool_call_duration_seconds_bucket{le="0.1",model="sonnet-4.6",tool="bash"} 17.0
    # TYPE neo_tasks gauge
    neo_tasks{model="sonnet-4.6",status="active"} 3.0
    neo_pinned_task_credits{task_id="0f1c..."} 12.25
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        lookback: float,
        pinned: list[str],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        team_view: bool = False,
    ) -> None:
        self.ledger = ledger
        self.team_view = team_view  # off: no member series, even from an older ledger
        self.lookback = lookback
        self.pinned = pinned
        self.clock = clock
        self._in_view = TasksInView(ledger, pinned)
        # Each histogram series' samples, with the ledger's Histogram they were made of:
        # a commit replaces the Histogram (and its exemplars) of every series it changes,
        # so an unchanged series hands on its samples instead of making them again.
        self._made: dict[tuple[str, tuple[str, ...]], tuple[Histogram, list[Sample]]] = {}

    def collect(self) -> Iterator[Metric]:
        yield from self._counters()
        yield from self._histograms()
        yield from self._tasks()
        yield from self._pinned()
        yield from self._account()
        yield from self._audit()

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def _counters(self) -> Iterator[Metric]:
        by_name: dict[str, list[tuple[tuple[str, ...], int]]] = {}
        for (name, labels), value in self.ledger.counters.items():
            by_name.setdefault(name, []).append((labels, value))
        for spec in COUNTERS:
            family = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
            for labels, value in sorted(by_name.get(spec.name, ())):
                family.add_metric(
                    labels, value / spec.scale, exemplar=self._exemplar(spec, labels, -1)
                )
            yield family

    def _histograms(self) -> Iterator[Metric]:
        by_name: dict[str, list[tuple[str, ...]]] = {}
        for name, labels in self.ledger.histograms:
            by_name.setdefault(name, []).append(labels)
        made: dict[tuple[str, tuple[str, ...]], tuple[Histogram, list[Sample]]] = {}
        for spec in HISTOGRAMS:
            family = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
            for labels in sorted(by_name.get(spec.name, ())):
                key = (spec.name, labels)
                hist = self.ledger.histograms[key]
                before = self._made.get(key)
                if before is not None and before[0] is hist:
                    family.samples.extend(before[1])
                    made[key] = before
                    continue
                start = len(family.samples)
                running = 0
                buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
                bounds = (*hist.bounds, float("inf"))
                for index, (bound, count) in enumerate(zip(bounds, hist.buckets, strict=True)):
                    running += count
                    exemplar = self._exemplar(spec, labels, index)
                    if exemplar is None:
                        buckets.append((_le(bound), float(running)))
                    else:
                        buckets.append((_le(bound), float(running), exemplar))
                family.add_metric(labels, buckets, hist.sum / spec.scale)
                made[key] = (hist, family.samples[start:])
            yield family
        self._made = made

    def _exemplar(self, spec: MetricSpec, labels: tuple[str, ...], index: int) -> Exemplar | None:
        """The task behind a series' latest increment (OpenMetrics only; text drops it)."""
        found = self.ledger.exemplars.get((spec.name, labels, index))
        if found is None:
            return None
        task_id, value, stamp = found
        # OpenMetrics caps exemplar label names and values at 128 characters together.
        return Exemplar({"task_id": task_id[: 128 - len("task_id")]}, value / spec.scale, stamp)

    def _tasks(self) -> Iterator[Metric]:
        raw = self._in_view.count(self.clock().timestamp() - self.lookback)
        # Label values go through the guard once per distinct pair, not once per task.
        counts: dict[tuple[str, str], int] = {}
        guard = self.ledger.guard
        for (model, status), count in raw.items():
            shown = status if status in TASK_STATUSES else guard.known("status", status)
            key = (guard.known("model", model), shown)
            counts[key] = counts.get(key, 0) + count
        # The in-flight statuses are there for every model, at 0 when no task has them:
        # a panel or alert then reads 0, not "no data", between bursts.
        for model in {model for model, _ in counts}:
            for status in IN_FLIGHT:
                counts.setdefault((model, status), 0)
        family = GaugeMetricFamily(TASKS.name, TASKS.help, labels=TASKS.labels)
        for labels, count in sorted(counts.items()):
            family.add_metric(labels, count)
        yield family
        yield GaugeMetricFamily(TRACKED_TASKS.name, TRACKED_TASKS.help, value=sum(counts.values()))

    def _pinned(self) -> Iterator[Metric]:
        snapshots = {}
        for task_id in self.pinned:
            snap = PinnedFigures.read(self.ledger.meta.get(PinnedFigures.key(task_id)))
            if snap is not None:
                snapshots[task_id] = snap
        for spec in PINNED:
            field = spec.name.removeprefix("neo_pinned_task_")
            family = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
            for task_id, snap in snapshots.items():
                figure = getattr(snap, field)
                if figure is not None:  # None: never reported readably yet
                    family.add_metric([task_id], figure / spec.scale)
            yield family
        info = GaugeMetricFamily(PINNED_INFO.name, PINNED_INFO.help, labels=PINNED_INFO.labels)
        for task_id, snap in snapshots.items():
            info.add_metric([task_id, snap.model[:120], snap.status[:60]], 1)
        yield info

    def _account(self) -> Iterator[Metric]:
        balance = BalanceFigures.read(self.ledger.meta.get(ACCOUNT_KEY))
        for spec, key in zip(ACCOUNT, ACCOUNT_FIELDS, strict=True):
            figure = getattr(balance, key)
            if figure is not None:
                yield GaugeMetricFamily(spec.name, spec.help, value=figure)
        team = TeamFigures.read(self.ledger.meta.get(TEAM_KEY))
        if team is None or not self.team_view:
            return
        for position, spec in enumerate(TEAM):
            family = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
            for member, figures in sorted(team.members.items()):
                family.add_metric([member], figures[position])
            yield family

    def _audit(self) -> Iterator[Metric]:
        audit = Audit.read(self.ledger.meta.get(AUDIT_KEY))
        if audit.gap is not None:
            family = GaugeMetricFamily(
                UNRECONCILED.name, UNRECONCILED.help, labels=UNRECONCILED.labels
            )
            by_model = {k: v for k, v in audit.gap.items() if k != TOTAL}
            # What cannot be told by model (carried over a sweep, or no by_model at
            # all) is the empty model's: the series always add up to the whole gap.
            rest = audit.gap.get(TOTAL, 0) - sum(by_model.values())
            if rest or not by_model:
                by_model[TOTAL] = rest
            for model, gap in sorted(by_model.items()):
                family.add_metric([model], gap / UNRECONCILED.scale)
            yield family
        if audit.at is not None:
            yield GaugeMetricFamily(RECONCILED_AT.name, RECONCILED_AT.help, value=audit.at)


# The balance's figures, in the order of catalogue.ACCOUNT (BalanceFigures keeps it).
ACCOUNT_FIELDS = tuple(f.name for f in dataclasses.fields(BalanceFigures))


def _le(bound: float) -> str:
    """A bucket bound the way Prometheus writes it: 0.5, 1.0, +Inf."""
    return "+Inf" if bound == float("inf") else repr(float(bound))
