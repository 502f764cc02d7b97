"""A poll's observations binned into histograms, with each bucket's newest exemplar."""

from __future__ import annotations

from bisect import bisect_left

from hypothesis import given
from hypothesis import strategies as st

from exporter.accounting import Deltas, LabelGuard
from exporter.catalogue import RUN_CREDITS, TOOL_DURATION
from exporter.histograms import Histogram, _tally, bin_poll

BOUNDS = {TOOL_DURATION.name: (0.1, 1.0, 10.0), RUN_CREDITS.name: (1.0, 5.0)}
SCALES = {TOOL_DURATION.name: 1000, RUN_CREDITS.name: 1}
STAMP = 1_700_000_000.0

# A row's new calls: model, task (maybe none), and its (tool, duration in ms) calls.
rows = st.lists(
    st.tuples(
        st.sampled_from(["sonnet", "opus"]),
        st.sampled_from(["", "t1", "t2", "t3"]),
        st.lists(
            st.tuples(
                st.sampled_from(["bash", "grep", "nmap", "curl"]),
                st.sampled_from([0, 50, 100, 101, 999, 1000, 5000, 10_000, 10_001, 86_400_000]),
            ),
            min_size=1,
            max_size=6,
        ),
    ),
    max_size=30,
)


def empty(name: str, labels: tuple[str, ...]) -> Histogram:
    bounds = BOUNDS[name]
    return Histogram(bounds, SCALES[name], [0] * (len(bounds) + 1))


@given(rows=rows, limit=st.integers(min_value=1, max_value=5))
def test_tool_calls_bin_as_if_observed_one_by_one(
    rows: list[tuple[str, str, list[tuple[str, int]]]], limit: int
) -> None:
    """Counts, sums and exemplars equal a call-by-call walk: each row's calls grouped by
    tool, tools past the label cap folded into ``other`` (each sighting counted as an
    overflow), and a bucket's newest observation as its exemplar."""
    guard, expected_guard = LabelGuard(limit), LabelGuard(limit)
    deltas = Deltas()
    for model, task, calls in rows:
        deltas.observe_calls(model, [t for t, _ in calls], [d for _, d in calls], task, guard)
    histograms, exemplars = bin_poll(deltas, empty, STAMP)

    name = TOOL_DURATION.name
    limits = [bound * 1000 for bound in BOUNDS[name]]
    want: dict[tuple[str, ...], Histogram] = {}
    want_exemplars: dict[tuple[str, tuple[str, ...], int], tuple[str, int, float]] = {}
    for model, task, calls in rows:
        for tool in dict.fromkeys(tool for tool, _ in calls):
            labels = (model, expected_guard.admit("tool", tool))
            for duration in (d for t, d in calls if t == tool):
                hist = want.setdefault(labels, empty(name, labels))
                index = bisect_left(limits, duration)
                hist.buckets[index] += 1
                hist.sum += duration
                hist.count += 1
                if task:
                    want_exemplars[(name, labels, index)] = (task, duration, STAMP)
                else:
                    want_exemplars.pop((name, labels, index), None)
    assert {labels: h for (_, labels), h in histograms.items()} == want
    assert exemplars == want_exemplars
    assert guard.new == expected_guard.new
    assert guard.overflow == expected_guard.overflow


@given(
    bounds=st.lists(
        st.floats(min_value=1e-6, max_value=1e6, allow_nan=False), min_size=1, unique=True
    ).map(sorted),
    scale=st.sampled_from([1, 1000, 10**9]),
    values=st.lists(st.integers(min_value=0, max_value=10**16), max_size=20),
)
def test_integer_limits_bin_integers_as_the_bounds_do(
    bounds: list[float], scale: int, values: list[int]
) -> None:
    """A stored value lands in the first bucket whose bound it does not exceed."""
    hist = Histogram(tuple(bounds), scale, [0] * (len(bounds) + 1))
    edges = [int(bound * scale) + step for bound in bounds for step in (-1, 0, 1)]
    for value in values + [edge for edge in edges if edge >= 0]:
        expected = next(
            (i for i, bound in enumerate(bounds) if value <= bound * scale), len(bounds)
        )
        assert bisect_left(hist.limits, value) == expected


@given(
    size=st.sampled_from([1, 3, 254, 255, 256, 400]),
    values=st.lists(st.integers(min_value=0, max_value=1000), max_size=80),
)
def test_tally_counts_each_bucket_and_finds_its_newest_value(size: int, values: list[int]) -> None:
    """Both ways of tallying, a byte per bucket (up to 256 buckets) and a Counter (more),
    give each bucket reached its count and the position of its newest value."""
    limits: list[float] = list(range(0, 2 * size, 2))
    expected: dict[int, tuple[int, int]] = {}
    for position, value in enumerate(values):
        index = bisect_left(limits, value)
        expected[index] = (expected.get(index, (0, 0))[0] + 1, position)
    assert {index: (count, newest) for index, count, newest in _tally(limits, values)} == expected


def test_a_bound_too_large_to_scale_bins_everything_below_it() -> None:
    """A finite bound whose scaled value overflows a float still bins (it used to be
    accepted by the settings and stored in ledgers)."""
    hist = Histogram((0.1, 1e306), 1000, [0, 0, 0])
    assert [bisect_left(hist.limits, v) for v in (100, 101, 10**300)] == [0, 1, 1]


def test_histograms_add_to_what_the_series_held() -> None:
    """A series' copy so far is added to, and its newest observation is the exemplar."""
    held = empty(RUN_CREDITS.name, ("sonnet", "completed"))
    held.buckets[:] = [2, 0, 1]
    held.sum, held.count = 12, 3
    deltas = Deltas()
    deltas.observe(RUN_CREDITS.name, ("sonnet", "completed"), 3, "t1")
    deltas.observe(RUN_CREDITS.name, ("sonnet", "completed"), 4, "t2")
    deltas.add("neo_credits_total", ("sonnet", "completed"), 7, "t2")

    histograms, exemplars = bin_poll(deltas, lambda *_: held.copy(), STAMP)

    hist = histograms[(RUN_CREDITS.name, ("sonnet", "completed"))]
    assert (hist.buckets, hist.sum, hist.count) == ([2, 2, 1], 19, 5)
    assert held.buckets == [2, 0, 1]  # the held histogram is not touched
    assert exemplars == {
        (RUN_CREDITS.name, ("sonnet", "completed"), 1): ("t2", 4, STAMP),
        ("neo_credits_total", ("sonnet", "completed"), -1): ("t2", 7, STAMP),
    }
