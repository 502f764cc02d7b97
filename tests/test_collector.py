"""The collector: tasks in view kept up to date from what the ledger touched, equal to a
walk over every task (exporter.collector)."""

from __future__ import annotations

import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.collector import EDGE_BUCKET, TasksInView
from exporter.ledger import Ledger, PollChanges, TaskRecord
from tests.conftest import BUCKETS

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


_VIEW_LOOKBACK = 3 * EDGE_BUCKET // 2
_MOMENTS = st.one_of(
    st.integers(-3 * EDGE_BUCKET, 3 * EDGE_BUCKET),
    st.sampled_from(
        [-2 * EDGE_BUCKET, -_VIEW_LOOKBACK, -EDGE_BUCKET, -1, 0, 1, EDGE_BUCKET - 1, EDGE_BUCKET]
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(
                st.just("write"),
                st.dictionaries(
                    st.sampled_from([f"task-{n}" for n in range(12)]),
                    st.tuples(
                        st.sampled_from(["gpt-5", "sonnet-4.6"]),
                        st.sampled_from(["active", "completed", "error"]),
                        _MOMENTS,  # last activity
                        st.booleans(),
                    ),
                    max_size=5,
                ),
            ),
            st.tuples(st.just("clock"), _MOMENTS),  # may go back
            st.tuples(st.just("evict"), _MOMENTS),  # tasks last active before then
            st.tuples(st.just("reload"), st.none()),
        ),
        max_size=25,
    ),
    pinned=st.sets(st.sampled_from([f"task-{n}" for n in range(14)]), max_size=3),
    origin=st.sampled_from([NOW.timestamp(), 0.0, -5000.0]),  # the clock at the start
)
def test_tasks_in_view_equal_a_walk_over_every_task(
    steps: list[tuple[str, object]], pinned: set[str], origin: float
) -> None:
    """neo_tasks follows commits, evictions and the window's edge instead of walking the
    ledger's every task: after any writes, evictions, clock moves (back too) and reloads
    it counts exactly what a walk over all tasks counts."""
    lookback = _VIEW_LOOKBACK
    now = origin
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        ledger = Ledger(path, buckets=BUCKETS, max_label_values=100)
        try:
            view = TasksInView(ledger, pinned)
            for kind, arg in steps:
                if kind == "write":
                    tasks = {
                        task_id: TaskRecord(model, status, now + offset, active=active)
                        for task_id, (model, status, offset, active) in arg.items()  # type: ignore[attr-defined]
                    }
                    ledger.commit(PollChanges(tasks=tasks))
                elif kind == "clock":
                    now += arg  # type: ignore[operator]
                elif kind == "evict":
                    ledger.evict(now + arg, keep=pinned)  # type: ignore[operator]
                else:  # a restart: the daemon counts before and after the tasks load
                    ledger.close()
                    ledger = Ledger(path, buckets=BUCKETS, max_label_values=100, defer_index=True)
                    view = TasksInView(ledger, pinned)
                    assert view.count(now - lookback) == Counter()
                    ledger.load_index()
                horizon = now - lookback
                walked = Counter(
                    (record.model, record.status)
                    for task_id, record in ledger.tasks.items()
                    if record.active or record.last_activity >= horizon or task_id in pinned
                )
                assert view.count(horizon) == walked
        finally:
            ledger.close()


def test_tasks_in_view_keep_nothing_behind_the_window_edge(tmp_path: Path) -> None:
    """A long-running exporter's view of the tasks stays the size of the window: what it
    files by last activity, and the shared keys it files them under, go once the edge
    has passed, however often the same tasks were written meanwhile."""
    ledger = Ledger(tmp_path / "state.db", buckets=BUCKETS, max_label_values=100)
    try:
        view = TasksInView(ledger, pinned=["task-pinned"])
        start = NOW.timestamp()
        lookback = 2.0 * EDGE_BUCKET
        for poll in range(40):  # a poll every fifth of a bucket: ten buckets go by
            now = start + poll * EDGE_BUCKET / 5
            ledger.commit(
                PollChanges(
                    tasks={
                        f"task-{n}": TaskRecord("gpt-5", "completed", now - n * 50, active=False)
                        for n in range(8)
                    }
                    | {"task-live": TaskRecord("gpt-5", "active", start, active=True)}
                    | {"task-pinned": TaskRecord("gpt-5", "completed", start, active=False)}
                )
            )
            assert view.count(now - lookback)[("gpt-5", "completed")] == 9
        edge = int((now - lookback) // EDGE_BUCKET)
        assert all(bucket >= edge for bucket in view._leaving)
        assert all(bucket is None or bucket >= edge for bucket in view._shared)
        later = now + 2 * lookback
        assert view.count(later - lookback) == Counter(
            {("gpt-5", "active"): 1, ("gpt-5", "completed"): 1}  # live and pinned stay
        )
        assert not view._leaving
        assert set(view._shared) == {None}
    finally:
        ledger.close()
