"""API faults and outages: the poll loop survives, reports itself, and ends exact."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.accounting import NON_TERMINAL
from exporter.catalogue import NANO
from exporter.client import NeoClient, RetryPolicy
from exporter.ledger import Ledger
from exporter.poller import DEFER_LIMIT, FULL_LIST_INTERVAL, Poller
from exporter.selfmetrics import SelfMetrics
from exporter.simulator import StreamTruth
from tests.conftest import BUCKETS, usage_row
from tests.test_poller import DAY, START, Rig, assert_exact, make_rig
from tests.truth import Truth, counted


def value(metrics: SelfMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_faults_everywhere_then_recovery_is_exact(tmp_path: Path) -> None:
    for rig in make_rig(tmp_path):
        truth = Truth(rig.world)
        poller = rig.open()
        faults = rig.api.faults
        faults.error_rate = 0.25
        faults.truncate_rate = 0.05
        faults.garbage_rate = 0.05
        faults.extra_fields = faults.null_fields = faults.unknown_status = True
        faults.wrong_type_rate = 0.02
        failures = 0
        for step in range(24):
            rig.clock.advance(600)
            if step % 6 == 0:
                faults.rate_limit(3, retry_after=1)
            if poller.poll_safely() is None:
                failures += 1
                assert value(poller.metrics, "neo_exporter_last_poll_success") == 0
            assert rig.ledger is not None
            truth.after_poll(rig.ledger)
        assert value(poller.metrics, "neo_exporter_errors_total", reason="invalid_row") > 0
        assert value(poller.metrics, "neo_exporter_polls_total", result="success") > 0
        for name in ("error_rate", "truncate_rate", "garbage_rate", "wrong_type_rate"):
            setattr(faults, name, 0.0)
        faults.extra_fields = faults.null_fields = faults.unknown_status = False
        # A row served with null amounts is corrected by the next listing that shows it
        # (the next full one, for a run started over two hours ago) while it is in the
        # window; one that leaves the window before the API fixes it keeps what was seen.
        rig.clock.advance(FULL_LIST_INTERVAL)
        report = poller.poll_safely()
        assert report is not None
        assert report.full_listing
        truth.after_poll(rig.ledger)  # type: ignore[arg-type]
        assert value(poller.metrics, "neo_exporter_last_poll_success") == 1
        horizon = rig.clock.now().timestamp() - DAY
        in_window = truth.expected(
            rig.baseline, only=lambda s, h=horizon: s.created_at.timestamp() >= h
        )
        got = counted(rig.ledger)  # type: ignore[arg-type]
        ceiling = truth.expected(rig.baseline)
        for name in ceiling:
            assert in_window.get(name, 0) <= got.get(name, 0) <= ceiling[name], name
        recent = counted_since(rig, horizon)
        assert recent == {k: v for k, v in in_window.items() if v and k != "tool_call_ms"}


def counted_since(rig: Rig, horizon: float) -> dict[str, int]:
    """The ledger's per-run values of runs started after ``horizon``, summed."""
    assert rig.ledger is not None
    ids = [s.stream_id for s in rig.world.visible_streams() if s.created_at.timestamp() >= horizon]
    totals: dict[str, int] = {}
    for run in rig.ledger.load_runs(ids).values():
        if run.baselined:
            continue
        for name in ("credits", "steps", "tool_calls", "agent_triggers", "llm_ms", "tool_ms",
                     "exec_ms", "llm_cost", "neo_cost"):  # fmt: skip
            totals[name] = totals.get(name, 0) + getattr(run, name)
        totals["tool_call_observations"] = totals.get("tool_call_observations", 0) + sum(
            end - start for start, end in run.tools_seen
        )
        totals["runs"] = totals.get("runs", 0) + int(run.finished)
    return {k: v for k, v in totals.items() if v}


def test_outage_longer_than_the_window_loses_nothing(tmp_path: Path) -> None:
    for rig in make_rig(tmp_path):
        truth = Truth(rig.world)
        poller = rig.open()
        assert poller.poll_safely() is not None
        truth.after_poll(rig.ledger)  # type: ignore[arg-type]
        rig.api.faults.burst(10_000, status=503)
        for _ in range(15):
            rig.clock.advance(2 * 3600)  # 30 hours of failed polls
            assert poller.poll_safely() is None
        assert value(poller.metrics, "neo_exporter_polls_total", result="failure") == 15
        rig.api.faults.burst(0)
        assert poller.poll_safely() is not None
        truth.after_poll(rig.ledger)  # type: ignore[arg-type]
        assert_exact(rig, truth)


def test_rejected_credentials_are_reported_and_not_retried(tmp_path: Path) -> None:
    for rig in make_rig(tmp_path):
        poller = rig.open()
        poller.client.close()
        poller.client = NeoClient(rig.api.url, ("api_key", "neo_sk_" + "x" * 32), timeout=5)
        assert poller.poll_safely() is None
        reason = {"reason": "credentials_rejected"}
        assert value(poller.metrics, "neo_exporter_errors_total", **reason) == 1
        assert sum(n for (_, code), n in rig.api.requests.items() if code == 401) == 1


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
ROW_FIELDS = list(usage_row())


@st.composite
def mangled_rows(draw: st.DrawFn) -> Any:
    """A usage row with some fields replaced by arbitrary JSON, or arbitrary JSON."""
    if draw(st.booleans()):
        return draw(JSON)
    row = usage_row(stream_id=draw(st.sampled_from(["s1", "s2", "s3"])))
    for name in draw(st.lists(st.sampled_from(ROW_FIELDS), max_size=4)):
        row[name] = draw(JSON)
    return row


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pages=st.lists(st.lists(mangled_rows(), max_size=5) | JSON, min_size=1, max_size=4))
def test_no_payload_escapes_the_poll_loop(tmp_path: Path, pages: list[Any]) -> None:
    """Whatever the API answers, a poll either commits or is counted as failed; never raises."""
    answers = iter(pages)

    def handler(request: httpx.Request) -> httpx.Response:
        page = next(answers, [])
        body = {"data": page, "has_more": False} if isinstance(page, list) else page
        return httpx.Response(200, json=body)

    path = tmp_path / f"state-{id(pages)}.db"
    ledger = Ledger(path, buckets=BUCKETS, max_label_values=10)
    client = NeoClient(
        "http://neo",
        ("api_key", "k" * 20),
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(0, 0.0, 0.0),
    )
    metrics = SelfMetrics(process=False)
    poller = Poller(client, ledger, metrics, lookback=86_400)
    try:
        before = dict(ledger.counters)
        report = poller.poll_safely()
        if report is None:
            assert ledger.counters == before
        assert all(v >= 0 for v in ledger.counters.values())
    finally:
        poller.close()
        client.close()
        ledger.close()
        path.unlink(missing_ok=True)


DETAILS = "/api/v1/tasks/{id}"


def continue_pinned_old_task(rig: Rig) -> tuple[Poller, str]:
    """Rows dated by their task: an old task, pinned and polled once, then continued (its
    new run starts now, and its row carries the task's old date)."""
    task_id = next(
        s.task_id for s in rig.world.visible_streams() if s.started_at < START - timedelta(days=2)
    )
    rig.pinned = (task_id,)
    poller = rig.open()
    assert poller.poll_safely() is not None
    rig.world.continue_task(task_id)
    return poller, task_id


def polls(rig: Rig, poller: Poller, count: int) -> int:
    """``count`` polls five minutes apart; returns the rows they deferred."""
    deferred = 0
    for _ in range(count):
        rig.clock.advance(300)
        report = poller.poll_safely()
        assert report is not None
        deferred += report.deferred_rows
    return deferred


def new_runs(rig: Rig, task_id: str) -> list[StreamTruth]:
    found = [
        s for s in rig.world.visible_streams() if s.task_id == task_id and s.started_at >= START
    ]
    assert found, "the continuation should have started"
    assert all(s.created_at.timestamp() < rig.baseline for s in found)  # dated by the task
    return found


def assert_taken_as_history(rig: Rig, task_id: str) -> None:
    """Each new run of the task is in the ledger once, as a run from before the baseline."""
    assert rig.ledger is not None
    new = new_runs(rig, task_id)
    runs = rig.ledger.load_runs([s.stream_id for s in new])
    assert runs.keys() == {s.stream_id for s in new}
    assert all(run.baselined for run in runs.values())


def test_a_row_of_uncertain_start_waits_until_its_task_answers(tmp_path: Path) -> None:
    """The new run of a pinned old task, read by ID, looks older than the baseline, and only
    task details tell its real start. While they are down the row waits, poll after poll;
    once they answer, the run counts in full (it used to be taken for history and counted
    only from there on)."""
    for rig in make_rig(tmp_path, stream_created_at="task"):
        poller, task_id = continue_pinned_old_task(rig)
        rig.api.faults.down[DETAILS] = 503
        assert polls(rig, poller, 10) >= 9  # every poll but the first leaves the row for later
        assert rig.ledger is not None
        assert not rig.ledger.known_runs(s.stream_id for s in new_runs(rig, task_id))

        rig.api.faults.down.clear()
        assert polls(rig, poller, 36) == 0
        new = new_runs(rig, task_id)
        assert all(s.status not in NON_TERMINAL for s in new), "the run should have finished"
        runs = rig.ledger.load_runs([s.stream_id for s in new])
        for stream in new:
            run = runs[stream.stream_id]
            assert (run.baselined, run.finished) == (False, True)
            assert (run.credits, run.steps, run.tool_calls, run.exec_ms) == (
                int(stream.credits * NANO), stream.steps, stream.tool_calls, stream.exec_ms,
            )  # fmt: skip
            assert sum(end - start for start, end in run.tools_seen) == len(stream.tool_durations)


def test_a_row_waits_for_its_task_an_hour_at_most(tmp_path: Path) -> None:
    """Task details down for three hours: the row waits DEFER_LIMIT, then is taken at its
    word, as history, and recorded once (never lost, never counted twice)."""
    for rig in make_rig(tmp_path, stream_created_at="task"):
        poller, task_id = continue_pinned_old_task(rig)
        rig.api.faults.down[DETAILS] = 503
        waited = polls(rig, poller, int(DEFER_LIMIT // 300) + 2)
        assert waited >= DEFER_LIMIT // 300
        assert polls(rig, poller, 30) == 0
        assert_taken_as_history(rig, task_id)
        assert not rig.ledger.task(task_id).awaiting  # type: ignore[union-attr]


def test_a_row_whose_task_never_answers_is_taken_at_its_word(tmp_path: Path) -> None:
    """Task details that answer 404 (a teammate's task, say) never will: the row does not
    wait but is folded at its own date, as history, once."""
    for rig in make_rig(tmp_path, stream_created_at="task"):
        poller, task_id = continue_pinned_old_task(rig)
        rig.api.faults.down[DETAILS] = 404
        assert polls(rig, poller, 36) == 0
        assert_taken_as_history(rig, task_id)
