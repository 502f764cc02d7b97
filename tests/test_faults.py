"""API faults and outages: the poll loop survives, reports itself, and ends exact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.client import NeoClient, RetryPolicy
from exporter.errors import ExporterError
from exporter.ledger import Ledger
from exporter.poll import Poller, PollReport, Timing
from exporter.selfmetrics import SelfMetrics
from tests.conftest import BUCKETS, usage_row
from tests.rig import DAY, Rig, assert_exact, make_rig, value
from tests.truth import Truth, counted


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
        assert value(poller.metrics, "neo_exporter_errors_total", reason="invalid_field") > 0
        assert value(poller.metrics, "neo_exporter_polls_total", result="success") > 0
        for name in ("error_rate", "truncate_rate", "garbage_rate", "wrong_type_rate"):
            setattr(faults, name, 0.0)
        faults.extra_fields = faults.null_fields = faults.unknown_status = False
        # A row served with null amounts is corrected by the next listing that shows it
        # (the next full one, for a run started over two hours ago) while it is in the
        # window; one that leaves the window before the API fixes it keeps what was seen.
        rig.clock.advance(Timing(DAY).full_list_interval)
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
    """Whatever the API answers, a poll either commits or fails with an ExporterError
    (counted by its reason); no other exception, no internal error, nothing negative."""
    answers = iter(pages)

    def handler(request: httpx.Request) -> httpx.Response:
        page = next(answers, [])
        body = {"data": page, "has_more": False} if isinstance(page, list) else page
        # json.dumps as a careless server would: NaN and Infinity go out as such.
        return httpx.Response(200, content=json.dumps(body).encode())

    path = tmp_path / f"state-{id(pages)}.db"
    ledger = Ledger(path, buckets=BUCKETS, max_label_values=10)
    client = NeoClient(
        "http://neo",
        ("api_key", "k" * 20),
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(0, 0.0, 0.0),
    )
    metrics = SelfMetrics(process=False)
    poller = Poller(client, ledger, metrics, timing=Timing(lookback=86_400))
    try:
        before = dict(ledger.counters)
        try:
            report: PollReport | None = poller.poll_once()  # anything else escapes: a bug
        except ExporterError:
            report = None
        if report is None:
            assert ledger.counters == before
        assert all(v >= 0 for v in ledger.counters.values())
    finally:
        poller.close()
        client.close()
        ledger.close()
        path.unlink(missing_ok=True)
