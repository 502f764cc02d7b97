"""Collector and exposition: ledger totals rendered exactly, in both formats, plain and gzip."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import zlib
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client import exposition as text_format
from prometheus_client.core import (
    CounterMetricFamily,
    Exemplar,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.samples import Sample

from exporter import exposition as exposition_module
from exporter.accounting import Observation, RunState, apply
from exporter.collector import UsageCollector
from exporter.exposition import Exposition, accepts_gzip, wants_openmetrics
from exporter.ledger import Ledger, PollChanges, TaskRecord
from exporter.models import read_usage
from exporter.selfmetrics import SelfMetrics
from tests.conftest import usage_row

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def fill(ledger: Ledger) -> None:
    changes = PollChanges()
    rows = [
        usage_row(),
        usage_row(stream_id="stream-2", neo_credits=0.1, status="error", tool_call_history=[]),
        usage_row(stream_id="stream-3", neo_credits=0.2, status="error", tool_call_history=[]),
        usage_row(stream_id="stream-4", task_id="task-2", model="gpt-5", neo_credits=40),
    ]
    for raw in rows:
        obs = Observation.from_row(read_usage(raw))
        state = apply(None, obs, baselined=False, guard=ledger.guard, deltas=changes.deltas)
        changes.runs.append(state)
    now = NOW.timestamp()
    changes.tasks = {
        "task-1": TaskRecord("sonnet-4.6", "completed", now - 60, active=False),
        "task-2": TaskRecord("gpt-5", "active", now - 90_000, active=True),
        "task-old": TaskRecord("gpt-5", "completed", now - 90_000, active=False),
    }
    ledger.commit(changes)


def build(ledger: Ledger) -> Exposition:
    disable_created_metrics()
    usage = CollectorRegistry(auto_describe=False)
    usage.register(UsageCollector(ledger, lookback=86_400, pinned=[], clock=lambda: NOW))
    own = SelfMetrics(process=False)
    exposition = Exposition(usage, own.registry)
    exposition.refresh()
    return exposition


def samples(families: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in families:  # type: ignore[attr-defined]
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_text_values_equal_the_ledger(ledger: Ledger) -> None:
    fill(ledger)
    body, content_type = build(ledger).render(openmetrics=False, compress=False)
    assert content_type.startswith("text/plain; version=0.0.4")
    got = samples(parse_text(body.decode()))
    assert got[("neo_credits_total", (("model", "sonnet-4.6"), ("status", "completed")))] == 1.25
    # 0.1 + 0.2 summed in nano-credits: exactly 0.3, not 0.30000000000000004
    assert got[("neo_credits_total", (("model", "sonnet-4.6"), ("status", "error")))] == 0.3
    assert got[("neo_task_runs_total", (("model", "sonnet-4.6"), ("status", "error")))] == 2
    assert got[("neo_llm_time_seconds_total", (("model", "gpt-5"), ("status", "completed")))] == 4
    tool = (("le", "0.1"), ("model", "sonnet-4.6"), ("tool", "bash"))
    assert got[("neo_tool_call_duration_seconds_bucket", tool)] == 0
    tool = (("le", "1.0"), ("model", "sonnet-4.6"), ("tool", "bash"))
    assert got[("neo_tool_call_duration_seconds_bucket", tool)] == 1
    assert got[("neo_tool_call_duration_seconds_sum", tool[1:])] == 0.5
    run = (("le", "100.0"), ("model", "gpt-5"), ("status", "completed"))
    assert got[("neo_task_run_credits_bucket", run)] == 1
    run = (("le", "10.0"), ("model", "gpt-5"), ("status", "completed"))
    assert got[("neo_task_run_credits_bucket", run)] == 0
    # task-old fell out of the window; task-2 is old but still active
    assert got[("neo_tasks", (("model", "gpt-5"), ("status", "active")))] == 1
    assert ("neo_tasks", (("model", "gpt-5"), ("status", "completed"))) not in got
    # In-flight statuses read 0, not "no data", for every model with tracked tasks.
    for model in ("gpt-5", "sonnet-4.6"):
        for status in ("pending", "suspended"):
            assert got[("neo_tasks", (("model", model), ("status", status)))] == 0
    assert got[("neo_tasks", (("model", "sonnet-4.6"), ("status", "active")))] == 0
    assert got[("neo_tracked_tasks", ())] == 2
    assert got[("neo_exporter_last_poll_success", ())] == 0


def test_openmetrics_parses_and_ends_once(ledger: Ledger) -> None:
    fill(ledger)
    exposition = build(ledger)
    body, content_type = exposition.render(openmetrics=True, compress=False)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    assert body.count(b"# EOF") == 1
    got = samples(parse_openmetrics(body.decode()))
    text = samples(parse_text(exposition.render(openmetrics=False, compress=False)[0].decode()))
    key = ("neo_credits_total", (("model", "gpt-5"), ("status", "completed")))
    assert got[key] == text[key] == 40


def test_gzip_members_concatenate_to_the_plain_body(ledger: Ledger) -> None:
    fill(ledger)
    exposition = build(ledger)
    for openmetrics in (False, True):
        plain, _ = exposition.render(openmetrics=openmetrics, compress=False)
        packed, _ = exposition.render(openmetrics=openmetrics, compress=True)
        assert gzip.decompress(packed) == plain
        single = zlib.decompressobj(16 + zlib.MAX_WBITS)  # reads one member only
        assert single.decompress(packed) == plain
        assert single.eof
        assert single.unused_data == b""


def test_render_serves_the_last_refresh_until_the_next(ledger: Ledger) -> None:
    fill(ledger)
    exposition = build(ledger)
    before, _ = exposition.render(openmetrics=False, compress=False)
    changes = PollChanges()
    obs = Observation.from_row(read_usage(usage_row(stream_id="late")))
    changes.runs.append(
        apply(None, obs, baselined=False, guard=ledger.guard, deltas=changes.deltas)
    )
    ledger.commit(changes)
    assert exposition.render(openmetrics=False, compress=False)[0] == before
    exposition.refresh()
    after = samples(parse_text(exposition.render(openmetrics=False, compress=False)[0].decode()))
    assert after[("neo_credits_total", (("model", "sonnet-4.6"), ("status", "completed")))] == 2.5


def test_a_refresh_renders_only_what_changed_and_equals_a_whole_render(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Families whose samples did not change keep their bytes; the body is always exactly
    what rendering every family afresh gives, in both formats."""
    fill(ledger)
    exposition = build(ledger)
    usage = exposition._usage
    rendered: list[str] = []
    real = text_format.generate_latest
    lines = exposition_module._sample_lines

    def counting(family: Metric, samples: list[Sample]) -> tuple[list[bytes], list[bytes]] | None:
        rendered.append(family.name)
        written = lines(family, samples)
        assert written is not None, f"{family.name} left to prometheus_client"
        return written

    def whole(openmetrics: bool) -> bytes:
        if openmetrics:
            return openmetrics_latest(usage).removesuffix(b"# EOF\n")
        return real(usage)

    def own(openmetrics: bool) -> bytes:
        registry = exposition._own
        return openmetrics_latest(registry) if openmetrics else real(registry)

    monkeypatch.setattr(exposition_module, "_sample_lines", counting)
    exposition.refresh()  # nothing changed: nothing rendered
    assert rendered == []
    changes = PollChanges()
    obs = Observation.from_row(read_usage(usage_row(stream_id="late")))
    changes.runs.append(
        apply(None, obs, baselined=False, guard=ledger.guard, deltas=changes.deltas)
    )
    ledger.commit(changes)
    exposition.refresh()
    assert "neo_credits" in rendered  # the counters that grew
    assert "neo_tasks" not in rendered  # the task gauge did not change
    monkeypatch.undo()
    for openmetrics in (False, True):
        body, _ = exposition.render(openmetrics=openmetrics, compress=False)
        assert body == whole(openmetrics) + own(openmetrics)


@pytest.mark.prometheus
def test_promtool_check_metrics_is_silent(ledger: Ledger) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install the Debian package prometheus"
    fill(ledger)
    body, _ = build(ledger).render(openmetrics=False, compress=False)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    assert result.stderr == b""


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4", True),
        ("application/openmetrics-text; version=0.0.1", True),
        ("application/openmetrics-text;version=2.0.0", False),
        ("application/openmetrics-text;q=0", False),
        ("text/plain", False),
        ("", False),
    ],
)
def test_content_negotiation(accept: str, expected: bool) -> None:
    assert wants_openmetrics(accept) is expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True), ("deflate, gzip;q=0.5", True), ("gzip;q=0", False), ("br", False),
        ("GZIP;Q=0", False), ("gzip;q=0.000", False), ("gzip ; q = 0", False),
        ("gzip;q=junk", False), ("*", True), ("br, *;q=0", False), ("*;q=0, gzip", True),
    ],
)  # fmt: skip
def test_gzip_negotiation(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


def test_openmetrics_carries_task_exemplars(ledger: Ledger) -> None:
    fill(ledger)
    exposition = build(ledger)
    body = exposition.render(openmetrics=True, compress=False)[0].decode()
    credits = [line for line in body.splitlines() if line.startswith("neo_credits_total{")]
    gpt = next(line for line in credits if 'model="gpt-5"' in line)
    assert ' # {task_id="task-2"} 40.0 ' in gpt
    bucket = next(
        line
        for line in body.splitlines()
        if line.startswith('neo_task_run_credits_bucket{le="100.0",model="gpt-5"')
    )
    assert '# {task_id="task-2"} 40.0' in bucket
    families = {f.name: f for f in parse_openmetrics(body)}
    exemplars = [s.exemplar for s in families["neo_credits"].samples if s.exemplar]
    assert {e.labels["task_id"] for e in exemplars} == {"task-1", "task-2"}
    text = exposition.render(openmetrics=False, compress=False)[0].decode()
    assert "task_id" not in text  # the text format has no exemplars, and no task label


class _Families:
    """A collector serving whatever families a test hands it."""

    def __init__(self) -> None:
        self.families: list[object] = []

    def collect(self) -> list[object]:
        return self.families


label_values = st.text(alphabet=st.characters(codec="utf-8"), max_size=6)
values = st.floats(allow_nan=False, width=64) | st.sampled_from([0.0, 1e6, 1.5e7, 1e22, 2**53])
exemplars = st.none() | st.tuples(
    label_values, st.floats(0, 1e9), st.none() | st.floats(1e9, 2e9)
).map(lambda e: Exemplar({"task_id": e[0]}, e[1], e[2]))
series_specs = st.lists(
    st.tuples(label_values, label_values, values, exemplars),
    max_size=8,
    unique_by=lambda t: t[:2],
)


@given(before=series_specs, after=series_specs, odd=st.sampled_from(["", "dot", "stamp"]))
@settings(max_examples=80, deadline=None)
def test_series_rendered_apart_join_into_the_whole_family(
    before: list[tuple[str, str, float, Exemplar | None]],
    after: list[tuple[str, str, float, Exemplar | None]],
    odd: str,
) -> None:
    """Label values with quotes, backslashes and newlines, any float, exemplars with and
    without a timestamp, series that come, change and go: what a refresh serves is always
    byte for byte what rendering the whole registry with prometheus_client gives, in both
    formats. A family only prometheus_client can write (a label name outside the legacy
    set, a sample with a timestamp) is left to it, with the same result."""
    disable_created_metrics()
    source = _Families()
    usage = CollectorRegistry(auto_describe=False)
    usage.register(source)  # type: ignore[arg-type]
    exposition = Exposition(usage, CollectorRegistry(auto_describe=False))

    def families(spec: list[tuple[str, str, float, Exemplar | None]]) -> list[object]:
        counter = CounterMetricFamily("x_spent", "Spent.\nIn total.", labels=["a", "b"])
        gauge = GaugeMetricFamily("x_open", 'Open "now".', labels=["a", "b"])
        hist = HistogramMetricFamily("x_seconds", "Durations.", labels=["a", "b"])
        extra = GaugeMetricFamily("x_odd", "Odd.", labels=["a.b" if odd == "dot" else "c"])
        for a, b, value, exemplar in spec:
            counter.add_metric([a, b], abs(value), exemplar=exemplar)
            gauge.add_metric([a, b], value, timestamp=1.5e9 if odd == "stamp" else None)
            buckets = [("0.5", 1.0, exemplar), ("+Inf", 2.0)] if exemplar else [("+Inf", 0.0)]
            hist.add_metric([a, b], buckets, abs(value))  # type: ignore[arg-type]
            extra.add_metric([a + b], value)
        return [counter, gauge, hist, extra]

    for spec in (before, after, before):
        source.families = families(spec)
        exposition.refresh()
        assert exposition.render(openmetrics=False, compress=False)[
            0
        ] == text_format.generate_latest(usage)
        assert exposition.render(openmetrics=True, compress=False)[0] == openmetrics_latest(usage)


# Seconds from the clock, over several of the view's buckets, their edges and the
# window's edge included.
def test_histogram_samples_handed_on_equal_samples_made_afresh(ledger: Ledger) -> None:
    """A collector hands on the samples of histogram series that no commit changed; over
    commits that grow some series, add others and move their exemplars, what it yields
    is always what a new collector on the same ledger makes from scratch."""
    disable_created_metrics()

    def registry() -> CollectorRegistry:
        usage = CollectorRegistry(auto_describe=False)
        usage.register(UsageCollector(ledger, lookback=86_400, pinned=[], clock=lambda: NOW))
        return usage

    fill(ledger)
    kept = registry()
    rows = [
        usage_row(stream_id="late-1", tool_call_history=[{"tool_name": "bash", "duration_ms": 7}]),
        usage_row(stream_id="late-2", model="gpt-5", task_id="task-9"),
        usage_row(
            stream_id="late-1",
            tool_call_history=[
                {"tool_name": "bash", "duration_ms": 7},
                {"tool_name": "grep", "duration_ms": 90_000},
            ],
        ),
        None,  # a commit that changes nothing
    ]
    states: dict[str, RunState] = {}
    for raw in rows:
        assert openmetrics_latest(kept) == openmetrics_latest(registry())
        changes = PollChanges()
        if raw is not None:
            obs = Observation.from_row(read_usage(raw))
            old = states.get(obs.stream_id)
            state = apply(old, obs, baselined=False, guard=ledger.guard, deltas=changes.deltas)
            states[obs.stream_id] = state
            changes.runs.append(state)
        ledger.commit(changes)
        body = openmetrics_latest(kept)
        assert body == openmetrics_latest(registry())
        assert text_format.generate_latest(kept) == text_format.generate_latest(registry())
    assert b'tool="grep"' in body  # a series the commits added
    assert b"# {task_id=" in body  # with its exemplars
