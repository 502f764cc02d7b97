"""The exporter against API behaviours the seeds and the reference allow but do not
promise: exact under each, compared with the simulator's ground truth."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from datetime import timedelta
from pathlib import Path

import pytest

from exporter.reconcile import AUDIT_KEY, TOTAL, Audit
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


@pytest.mark.parametrize("served", ["running", "completed", "final"])
def test_a_run_ends_when_its_task_says_so_whatever_its_row_says(
    tmp_path: Path, served: str
) -> None:
    """Rows of runs in progress served with a documented status (the usage enums have
    none for work in progress): the counters stay exact at every poll, and each run is
    observed once (neo_task_runs_total, the per-run histograms), when it has ended, with
    the values and status its row then has. (A smaller account: once the exporter learns
    that rows cannot tell, the runs it took in at its first poll wait for their tasks'
    details, a hundred tasks a poll.)"""
    for rig in make_rig(tmp_path, live_rows=True, tasks_per_day=400):
        rig.api.faults.running_status = served
        truth = Truth(rig.world)
        poller = rig.open()
        observed: dict[str, tuple[str, str, int, int]] = {}
        for step in range(13):
            run_polls(rig, truth, 1, 300 if step else 0)
            expected, got = truth.expected(rig.baseline), counted(rig.ledger)  # type: ignore[arg-type]
            expected.pop("runs", None), got.pop("runs", None)
            assert compare(expected, got) == {}
            observed.update(newly_observed(rig, observed))
        untrusted = value(poller.metrics, "neo_exporter_errors_total", reason="status_untrusted")
        assert untrusted == (served != "running")
        assert_observed(rig, observed)


def newly_observed(
    rig: Rig, before: Collection[str], only: Callable[[StreamTruth], bool] = lambda s: True
) -> dict[str, tuple[str, str, int, int]]:
    """The runs counted in full (``only`` those) that the last poll observed as ended,
    each with its model, status, credits and execution time; each must have ended, with
    its row showing that."""
    assert rig.ledger is not None
    world = {s.stream_id: s for s in rig.world.visible_streams() if only(s)}
    found = {}
    for stream_id, state in rig.ledger.load_runs(world.keys() - set(before)).items():
        if state.finished and not state.baselined:
            stream = world[stream_id]
            assert stream.finished_at is not None, "observed while running"
            assert (state.credits, state.exec_ms) == (units(stream, "credits"), stream.exec_ms)
            found[stream_id] = (stream.model, stream.status, state.credits, state.exec_ms)
    return found


def assert_observed(rig: Rig, observed: dict[str, tuple[str, str, int, int]]) -> None:
    """The per-run histograms and neo_task_runs_total hold each observed run once, and
    every run counted in full that ended ten minutes ago or more is observed."""
    assert rig.ledger is not None
    now = rig.clock.now()
    world = {s.stream_id: s for s in rig.world.visible_streams()}
    new = {k for k, st in rig.ledger.load_runs(world).items() if not st.baselined}
    ended = {k for k in new if (world[k].finished_at or now) < now - timedelta(minutes=10)}
    assert ended
    assert ended <= observed.keys()
    runs = Counter((model, status) for model, status, _, _ in observed.values())
    shown = {
        labels: count
        for (name, labels), count in rig.ledger.counters.items()
        if name == "neo_task_runs_total"
    }
    assert shown == dict(runs)
    sums = {"neo_task_run_credits": 0, "neo_task_run_execution_seconds": 0}
    counts = 0
    for (name, _labels), hist in rig.ledger.histograms.items():
        if name in sums:
            sums[name] += hist.sum
        counts += hist.count if name == "neo_task_run_credits" else 0
    assert counts == len(observed)
    assert sums == {
        "neo_task_run_credits": sum(credits for _, _, credits, _ in observed.values()),
        "neo_task_run_execution_seconds": sum(ms for *_, ms in observed.values()),
    }


def test_exact_under_every_behaviour_at_once(tmp_path: Path) -> None:
    """A team admin's view (teammates' tasks in no task list, their details private), a
    page cap with has_more worked out from the limit asked for and no total, values no
    parser takes in fields nobody reads, unreadable values in runs in progress, tool-call
    indices all 0, and rows of runs in progress with the status they will end with: no
    value is ever counted twice, only the unreadable ones are missing while unreadable,
    and the counters are exact once they are readable. The runs of the key owner's tasks
    are observed only once they have ended (teammates' private tasks cannot say when
    their runs end: their rows are taken at their word, README)."""
    for rig in make_rig(tmp_path, live_rows=True, team=True):
        rig.audit = True
        faults = rig.api.faults
        faults.page_cap, faults.has_more, faults.total = 50, "requested", "omitted"
        faults.hostile_values = faults.spoil_running = faults.tool_index_zero = True
        faults.running_status, faults.private_details = "final", True
        truth = Truth(rig.world)
        poller = rig.open()
        observed: dict[str, tuple[str, str, int, int]] = {}
        for step in range(10):
            run_polls(rig, truth, 1, 300 if step else 0)
            diff = compare(truth.expected(rig.baseline), counted(rig.ledger))  # type: ignore[arg-type]
            diff.pop("runs", None)
            assert set(diff) <= {"credits", "tool_call_observations", "tool_call_ms"}, diff
            assert all(got < expected for expected, got in diff.values()), diff
            if step == 1:  # the self-audit's reference: what could not be read then
                unread = diff.get("credits", (0, 0))
            mine = {t.task_id for t in rig.world.tasks if rig.world.owns(t)}
            observed.update(newly_observed(rig, observed, lambda s, m=mine: s.task_id in m))
        assert len(observed) > 100
        assert value(poller.metrics, "neo_exporter_errors_total", reason="status_untrusted") == 1
        faults.spoil_running = False  # every value readable
        for _ in range(3):
            run_polls(rig, truth, 1, 300)
            diff = compare(truth.expected(rig.baseline), counted(rig.ledger))  # type: ignore[arg-type]
            diff.pop("runs", None)
            assert diff == {}
        # The self-audit: the counters grew by what they could not read at its reference
        # besides what the API's total grew by (README, Self-audit); to the nano-credit.
        assert rig.ledger is not None
        gap = Audit.read(rig.ledger.meta.get(AUDIT_KEY)).gap
        assert gap is not None
        assert unread[0] > unread[1], "some credits should have been unreadable then"
        assert gap[TOTAL] == unread[1] - unread[0]


def continue_old_tasks(rig: Rig, count: int) -> Truth:
    """The first poll, then ``count`` of the caller's tasks continued; the truth kept."""
    truth = Truth(rig.world)
    rig.open()
    poll(rig, truth)
    for task_id in sorted({s.task_id for s in rig.world.visible_streams()})[:count]:
        rig.world.continue_task(task_id)
    return truth


def test_continued_old_tasks_count_by_the_next_full_listing(tmp_path: Path) -> None:
    """Rows dated by their task and shown once their run ends: the continuations of the
    caller's own old tasks, most of which start and end between two polls, are in no
    listing of the window. The task list's updated_at finds them at the next full
    listing (an hour on), where they count exactly, each once."""
    for rig in make_rig(tmp_path, stream_created_at="task"):
        truth = continue_old_tasks(rig, 150)
        run_polls(rig, truth, 11, 300)
        missing = compare(truth.expected(rig.baseline), counted(rig.ledger))  # type: ignore[arg-type]
        assert missing["credits"][1] < missing["credits"][0]
        run_polls(rig, truth, 1, 300)  # the full listing
        assert_exact(rig, truth)
        run_polls(rig, truth, 2, 300)
        assert_exact(rig, truth)


@pytest.mark.parametrize(("dated", "filtered"), [("stream", "task"), ("task", "stream")])
def test_exact_whatever_date_rows_carry_and_from_filters_on(
    tmp_path: Path, dated: str, filtered: str
) -> None:
    """Rows dated by their run while `from` filters on their task's creation (a
    continuation of an old task is in no listing of the window, its row's date recent),
    or the other way round (its row in the window's listings, dated long before): the
    caller's own continued old tasks count exactly by the next full listing."""
    world = {"stream_created_at": dated, "stream_filtered_by": filtered}
    for rig in make_rig(tmp_path, tasks_per_day=800, **world):
        truth = continue_old_tasks(rig, 100)
        run_polls(rig, truth, 12, 300)  # the full listing at an hour
        assert_exact(rig, truth)
