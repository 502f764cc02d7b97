"""Histograms: bucket counts in stored units, and a poll's observations binned into them."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat

from exporter.accounting import Deltas

Labels = tuple[str, ...]
SeriesKey = tuple[str, Labels]
ExemplarKey = tuple[str, Labels, int]  # bucket index, or -1 for a counter's total
Exemplar = tuple[str, int, float]  # task ID, value in stored units, unix time


@dataclass
class Histogram:
    """Bucket counts (not cumulative, last one is +Inf), sum and count in stored units."""

    bounds: tuple[float, ...]  # served units, e.g. seconds
    scale: int
    buckets: list[int]
    sum: int = 0
    count: int = 0
    # Each bound in stored units, rounded down: stored values are integers, and an
    # integer is at most a bound exactly when it is at most its floor. Integers compare
    # with integers faster than with floats, a saving on every observation binned. A
    # bound too large for a float once scaled stays infinite (every value is below it).
    limits: list[float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.limits = [_floor(bound * self.scale) for bound in self.bounds]

    def copy(self) -> Histogram:
        return Histogram(self.bounds, self.scale, list(self.buckets), self.sum, self.count)


def _floor(limit: float) -> float:
    return math.floor(limit) if math.isfinite(limit) else limit


def bin_poll(
    deltas: Deltas, current: Callable[[str, Labels], Histogram], stamp: float
) -> tuple[dict[SeriesKey, Histogram], dict[ExemplarKey, Exemplar]]:
    """A poll's observations added to copies of the histograms they fall in (``current``
    gives a series' histogram so far), and each bucket's newest observation, with its
    task, as the bucket's exemplar."""
    histograms: dict[SeriesKey, Histogram] = {}
    exemplars: dict[ExemplarKey, Exemplar] = {}
    for (name, labels), series in deltas.observed.items():
        hist = histograms[(name, labels)] = current(name, labels)
        values, buckets = series.values, hist.buckets
        for index, count, newest in _tally(hist.limits, values):
            buckets[index] += count
            task_id = series.task_at(newest)
            if task_id:
                exemplars[(name, labels, index)] = (task_id, values[newest], stamp)
        hist.sum += sum(values)
        hist.count += len(values)
    for (name, labels), (task_id, amount) in deltas.counter_tasks.items():
        exemplars[(name, labels, -1)] = (task_id, amount, stamp)
    return histograms, exemplars


def _tally(limits: list[float], values: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """(bucket index, how many values fall in it, position of its newest value) for each
    bucket that ``values`` reach, all in C: each value's bucket by ``bisect``; then, with
    fewer than 256 buckets, the buckets as one byte each, counted and searched from the
    end like text; with more, counted by ``Counter`` and the newest found by a dict
    (which keeps the last of equal keys)."""
    indices = map(bisect_left, repeat(limits), values)
    if len(limits) < 256:
        codes = bytes(indices)
        for index in range(len(limits) + 1):
            count = codes.count(index)
            if count:
                yield index, count, codes.rfind(index)
        return
    positions = list(indices)
    newest = dict(zip(positions, range(len(positions)), strict=True))
    for index, count in Counter(positions).items():
        yield index, count, newest[index]
