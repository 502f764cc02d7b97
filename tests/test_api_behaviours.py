"""The exporter against API behaviours the seeds and the reference allow but do not
promise: exact under each, compared with the simulator's ground truth."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from exporter.simulator import StreamTruth
from tests.rig import DAY, Rig, assert_exact, make_rig, poll, run_polls, value
from tests.truth import Truth, compare, counted, units

# (page_cap, has_more, total): a capped limit with has_more worked out from the limit
# asked for, has_more omitted beside a true total, has_more always true without a total,
# and a capped limit without a total.
PAGING = [(50, "requested", "truthful"), (50, "omitted", "truthful"), (0, "always", "omitted"),
          (37, "truthful", "omitted")]  # fmt: skip


@pytest.mark.parametrize(("cap", "has_more", "total"), PAGING)
def test_exact_whatever_the_paging(tmp_path: Path, cap: int, has_more: str, total: str) -> None:
    for rig in make_rig(tmp_path, live_rows=True):
        faults = rig.api.faults
        faults.page_cap, faults.has_more, faults.total = cap, has_more, total
        truth = Truth(rig.world)
        poller = rig.open()
        poll(rig, truth)
        assert counted(rig.ledger)["runs"] > 500  # type: ignore[arg-type]
        for _ in range(8):
            run_polls(rig, truth, 1, 900)
            assert_exact(rig, truth)
        told = total == "truthful"
        contradicts = told and (has_more == "always" or (has_more == "requested" and cap != 0))
        noted = value(poller.metrics, "neo_exporter_errors_total", reason="paging_inconsistent")
        assert (noted > 0) == contradicts


def spoiled_running(rig: Rig) -> list[StreamTruth]:
    faults = rig.api.faults
    return [
        s
        for s in rig.world.visible_streams()
        if s.status == "running" and faults.spoils_running(s.stream_id)
    ]


def test_unreadable_values_cost_only_themselves_then_count_once_readable(
    tmp_path: Path,
) -> None:
    """Rows whose credits read NaN and whose last tool call reads -1 while their run is
    in progress, beside NaN, 1e400, lone surrogates and deep nesting in fields nobody
    reads, on every poll: everything else of those rows counts at once, exactly; what
    could not be read counts once it can, and nothing twice."""
    for rig in make_rig(tmp_path, live_rows=True):
        truth = Truth(rig.world)
        poller = rig.open()
        poll(rig, truth)
        faults = rig.api.faults
        faults.hostile_values = faults.spoil_running = True
        unreadable = 0
        for _ in range(12):
            run_polls(rig, truth, 1, 600)
            diff = compare(truth.expected(rig.baseline), counted(rig.ledger))  # type: ignore[arg-type]
            # Only credits and tool calls of runs spoiled right now may be missing.
            assert set(diff) <= {"credits", "tool_call_observations", "tool_call_ms"}, diff
            spoiled = spoiled_running(rig)
            credits = sum(units(s, "credits") for s in spoiled)
            calls = sum(len(s.tool_durations) for s in spoiled)
            for name, (expected, got) in diff.items():
                assert got < expected, name  # missing, never counted twice
                if name == "credits":
                    assert expected - got <= credits
                if name == "tool_call_observations":
                    assert expected - got <= calls
            unreadable += "credits" in diff
        assert unreadable > 0, "the test must see credits that could not be read"
        assert value(poller.metrics, "neo_exporter_errors_total", reason="invalid_field") > 0
        assert value(poller.metrics, "neo_exporter_errors_total", reason="invalid_row") == 0
        # The values become readable (the runs end, or the API mends them): all counted.
        faults.spoil_running = False
        run_polls(rig, truth, 1, 600)
        assert_exact(rig, truth)
        run_polls(rig, truth, 6, 600)
        assert_exact(rig, truth)


def test_tool_call_indices_that_all_read_zero_count_every_call(tmp_path: Path) -> None:
    for rig in make_rig(tmp_path, live_rows=True):
        rig.api.faults.tool_index_zero = True
        truth = Truth(rig.world)
        rig.open()
        poll(rig, truth)
        run_polls(rig, truth, 6, 600)
        got = counted(rig.ledger)  # type: ignore[arg-type]
        assert got["tool_call_observations"] > 1000
        assert_exact(rig, truth)


def test_a_row_no_one_can_read_costs_only_itself_poll_after_poll(tmp_path: Path) -> None:
    """Every row of a stable share carries values msgspec refuses, for as long as the
    test runs: no poll fails, and every run counts."""
    for rig in make_rig(tmp_path):
        rig.api.faults.hostile_values = True
        truth = Truth(rig.world)
        poller = rig.open()
        failures = Counter[bool]()
        for _ in range(10):
            rig.clock.advance(600)
            failures[poller.poll_safely() is None] += 1
            truth.after_poll(rig.ledger)  # type: ignore[arg-type]
            assert_exact(rig, truth)
        assert failures == {False: 10}


def test_per_task_rows_count_where_stream_rows_are_not_offered(tmp_path: Path) -> None:
    """/usage/streams answers 404 while /usage/tasks works: the exporter counts each task
    as one run from its own row, asking the streams endpoint once. At each full listing,
    every task created since the baseline and still in the window reads exactly what its
    runs used, continuations included (between full listings a continuation of a task
    older than two hours waits for the next one: README, Limits)."""
    for rig in make_rig(tmp_path, tasks_per_day=1000):
        rig.api.faults.down["/api/v1/usage/streams"] = 404
        poller = rig.open()
        assert poller.poll_safely() is not None
        for step in range(1, 19):  # full listings at 0, 1 h, 2 h and 3 h
            rig.clock.advance(600)
            if step == 12:  # continue tasks in the window, but not in recent listings
                hours_ago = rig.clock.now().timestamp() - 5 * 3600
                created = {t: rig.world.task_by_id[t].created / 1000 for t in rig.world.task_ids()}
                older = [t for t, at in created.items() if rig.baseline <= at < hours_ago]
                for task_id in older[-30:]:
                    rig.world.continue_task(task_id)
            report = poller.poll_safely()
            assert report is not None
        assert report.full_listing
        assert rig.ledger is not None
        assert rig.api.requests[("/api/v1/usage/streams", 404)] == 1
        # A task awaits its own row, never a stream no ledger row is keyed by.
        assert all(a.startswith("task:") for r in rig.ledger.tasks.values() for a in r.awaiting)
        now = rig.clock.now().timestamp()
        streams: dict[str, list[StreamTruth]] = {}
        for stream in rig.world.visible_streams():
            streams.setdefault(stream.task_id, []).append(stream)
        checked = continued = 0
        for task_id, runs in streams.items():
            created = rig.world.task_by_id[task_id].created / 1000
            if created < max(rig.baseline, now - DAY):
                continue  # history, or left the window
            state = rig.ledger.load_runs([f"task:{task_id}"])[f"task:{task_id}"]
            expected = {
                name: sum(units(s, name) for s in runs)
                for name in ("credits", "steps", "tool_calls", "exec_ms")
            }
            assert {name: getattr(state, name) for name in expected} == expected, task_id
            calls = sum(end - start for start, end in state.tools_seen)
            assert calls == sum(len(s.tool_durations) for s in runs)
            checked += 1
            continued += len(runs) > 1
        assert checked > 300
        assert continued >= 20
