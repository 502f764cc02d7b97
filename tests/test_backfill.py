"""History backfill: dense timestamped OpenMetrics, and exact when added to the live counters."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from _pytest.capture import CaptureFixture

from exporter.accounting import NON_TERMINAL, Observation, apply
from exporter.backfill import (
    Event,
    collect_events,
    counted_in_full,
    fetch_rows,
    read_live_state,
    run_backfill,
    sample_times,
    write_openmetrics,
)
from exporter.catalogue import NANO
from exporter.cli import EXIT_STATE, EXIT_USAGE, main
from exporter.client import NeoClient, RetryPolicy
from exporter.errors import ExporterError
from exporter.ledger import Ledger, PollChanges
from exporter.models import TaskUsage, read_usage
from exporter.poll import Poller, Timing
from exporter.progress import fetch_progress
from exporter.selfmetrics import SelfMetrics
from exporter.settings import Settings
from exporter.simulator import DEMO_API_KEY, ManualClock, SimulatedApi, World
from exporter.simulator.model import to_ms
from tests.conftest import BUCKETS, usage_row

START = datetime(2026, 11, 20, 9, tzinfo=UTC)
HOUR = 3600.0


def samples(text: str, name: str) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(model, status) -> [(timestamp, value)] of one family in backfill output."""
    found: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        selector, value, stamp = line.rsplit(" ", 2)
        labels = dict(part.split("=", 1) for part in selector[len(name) + 1 : -1].split(","))
        key = (labels["model"].strip('"'), labels["status"].strip('"'))
        found.setdefault(key, []).append((float(stamp), float(value)))
    return found


def test_sample_times_cover_the_range_and_end_just_inside_it() -> None:
    assert sample_times(0, 1000, 300) == [0, 300, 600, 900, 999.999]
    assert sample_times(0, 900, 300) == [0, 300, 600, 899.999]


def test_every_series_is_sampled_at_every_step_from_its_first_run() -> None:
    labels = ("sonnet-4.6", "completed")
    events = [
        Event(250.0, labels, {"credits": 2 * NANO, "steps": 3}),
        Event(700.0, labels, {"credits": NANO // 2, "steps": 1}),
    ]
    out = io.StringIO()
    result = write_openmetrics(events, out, start=0, end=1500, step=300, progress=lambda *_: None)
    text = out.getvalue()
    assert text.endswith("# EOF\n")
    credits = samples(text, "neo_credits_total")[labels]
    # The first run lands at the first sample at or after it finished (300), then every
    # step: an instant query anywhere in the range finds the series.
    assert credits == [(300.0, 2.0), (600.0, 2.0), (900.0, 2.5), (1200.0, 2.5), (1499.999, 2.5)]
    assert samples(text, "neo_task_runs_total")[labels][-1] == (1499.999, 2.0)
    assert samples(text, "neo_steps_total")[labels][-1] == (1499.999, 4.0)
    # A family with nothing in it (no BYOK cost here) writes no series at all.
    assert "neo_byok_llm_cost_credits_total{" not in text
    assert result.runs == 2
    assert result.samples == sum(len(v) for v in samples(text, "neo_credits_total").values()) * 3


def test_collect_events_selects_finished_runs_started_in_the_range() -> None:
    def row(stream: str, created: str, status: str = "completed") -> TaskUsage:
        return read_usage(usage_row(stream_id=stream, created_at=created, status=status))

    start = datetime(2026, 11, 20, 9, tzinfo=UTC).timestamp()
    end = start + HOUR
    rows = [
        row("before", "2026-11-20T08:59:59Z"),
        row("inside", "2026-11-20T09:10:00Z"),
        row("running", "2026-11-20T09:20:00Z", status="running"),
        row("at-end", "2026-11-20T10:00:00Z"),
        row("baselined", "2026-11-20T09:30:00Z", status="running"),
    ]
    events = collect_events(rows, start, end, {"baselined": {"credits": 7}})
    assert sorted(e.values.get("credits", 0) for e in events) == [7, int(1.25 * NANO)]
    # A run that finished after the end is placed just inside it.
    late = collect_events([row("x", "2026-11-20T09:59:59Z")], start, end)
    assert late[0].at == pytest.approx(end - 0.001)
    # Runs the live exporter counts in full (their rows dated by their task), or took for
    # history in doubt, are left to it.
    rows += [row("in-doubt", "2026-11-20T09:40:00Z"), row("counted", "2026-11-20T09:41:00Z")]
    uncounted = {"in-doubt": {"credits": 5}, "baselined": {"credits": 7}}
    events = collect_events(rows, start, end, uncounted, live_only=["in-doubt", "counted"])
    assert sorted(e.values.get("credits", 0) for e in events) == [7, int(1.25 * NANO)]


def test_backfill_and_live_counters_add_up_to_the_ground_truth(tmp_path: Path) -> None:
    """Runs in progress at the baseline: the backfill adds what they held when the live
    exporter first saw them, the live counters their growth; each credit counts once."""
    clock = ManualClock(START)
    world = World(seed=5, clock=clock, tasks_per_day=3000, live_rows=True)
    # Pinned tasks whose run began before the baseline and still runs: the exporter
    # sees those runs part-way, so they hold a part it never counts live.
    now = to_ms(START)
    pinned = [
        task.task_id
        for task in world.tasks
        if task.streams and task.streams[-1].start < now - HOUR * 1000 < now < task.streams[-1].end
    ]
    assert pinned
    state = tmp_path / "state.db"
    with SimulatedApi(world) as api:
        client = NeoClient(
            api.url,
            ("api_key", DEMO_API_KEY),
            retry=RetryPolicy(max_retries=3, backoff_base=0, backoff_max=0),
            sleep=lambda _: None,
        )
        ledger = Ledger(state, buckets=BUCKETS, max_label_values=100)
        poller = Poller(
            client, ledger, SelfMetrics(process=False), timing=Timing(lookback=HOUR), pinned=pinned,
            clock=clock.now,
        )  # fmt: skip
        try:
            for _ in range(12):
                poller.poll_once()
                clock.advance(900)
            poller.poll_once()
            baseline = float(ledger.meta["baseline"])
            every = [stream_id for (stream_id,) in ledger.query("SELECT stream_id FROM runs")]
            assert len(every) == ledger.run_count > len(ledger.fingerprints)  # some evicted
            runs = ledger.load_runs(every)
            live_credits = sum(
                v for (n, _), v in ledger.counters.items() if n == "neo_credits_total"
            )
            live_runs = sum(
                v for (n, _), v in ledger.counters.items() if n == "neo_task_runs_total"
            )
        except BaseException:
            client.close()
            raise
        finally:
            poller.close()
            ledger.close()
        grew = [r for r in runs.values() if r.uncounted and r.credits > r.uncounted["credits"] > 0]
        assert grew, "the world must have runs that grew after the exporter first saw them"

        start = baseline - 6 * HOUR
        live = read_live_state(state)
        assert live.baseline == datetime.fromtimestamp(baseline, UTC)
        listing = client.list_stream_usage(
            since=datetime.fromtimestamp(start, UTC), until=datetime.fromtimestamp(baseline, UTC)
        )
        client.close()
        counted = counted_in_full(state, [str(r.stream_id) for r in listing.rows])
        events = collect_events(listing.rows, start, baseline, live.uncounted, counted)
        out = io.StringIO()
        write_openmetrics(events, out, start=start, end=baseline, step=300)
        text = out.getvalue()

        def final(name: str) -> Decimal:
            return sum(
                (Decimal(str(points[-1][1])) for points in samples(text, name).values()),
                Decimal(0),
            )

        expected = Decimal(0)  # credits of every run started since the backfill's start
        expected_runs = 0
        for stream in world.visible_streams():
            began = stream.started_at.timestamp()
            finished = stream.status not in NON_TERMINAL
            if began >= baseline:  # live: every credit, and the run once it finished
                expected += stream.credits
                expected_runs += finished
            elif began >= start and (finished or stream.stream_id in runs):
                expected += stream.credits  # backfill and live growth together
                expected_runs += 1
    assert final("neo_credits_total") + Decimal(live_credits) / NANO == expected
    assert final("neo_task_runs_total") + live_runs == expected_runs


@pytest.fixture
def frozen_api() -> Iterator[SimulatedApi]:
    world = World(seed=3, clock=ManualClock(START), tasks_per_day=500)
    with SimulatedApi(world) as api:
        yield api


def test_a_backfill_past_the_baseline_is_refused(frozen_api: SimulatedApi, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    Ledger(state, buckets=BUCKETS, max_label_values=10).close()
    db = sqlite3.connect(state)
    baseline = START - timedelta(hours=2)
    db.execute("INSERT INTO meta VALUES ('baseline', ?)", (repr(baseline.timestamp()),))
    db.commit()
    db.close()
    settings = Settings(api_url=frozen_api.url, state_path=state)
    with pytest.raises(ExporterError, match="after the baseline"):
        run_backfill(
            settings, ("api_key", DEMO_API_KEY), start=START - timedelta(hours=6),
            end=START, step=300, output=tmp_path / "out.om",
        )  # fmt: skip
    # Without --to it ends at the baseline.
    summary = run_backfill(
        settings, ("api_key", DEMO_API_KEY), start=START - timedelta(hours=6),
        end=None, step=300, output=tmp_path / "out.om",
    )  # fmt: skip
    assert f"to {baseline.isoformat()}" in summary
    written = (tmp_path / "out.om").read_text()
    stamps = [float(line.rsplit(" ", 1)[1]) for line in written.splitlines() if "{" in line]
    assert stamps
    assert max(stamps) < baseline.timestamp()


def test_a_progress_bar_is_drawn_on_a_terminal_only() -> None:
    import os
    import pty

    from exporter.backfill import terminal_progress

    master, replica = pty.openpty()
    with os.fdopen(replica, "w") as terminal:
        show = terminal_progress(terminal)
        show(1, 4)
        show(4, 4)
    drawn = ""
    while True:  # a terminal hands over what was drawn in pieces, then EIO once closed
        try:
            piece = os.read(master, 4096)
        except OSError:
            break
        if not piece:
            break
        drawn += piece.decode()
    os.close(master)
    assert "[#######.......................] 1/4 families" in drawn
    assert "[##############################] 4/4 families" in drawn
    quiet = io.StringIO()
    terminal_progress(quiet)(1, 4)
    assert quiet.getvalue() == ""


def test_counted_in_full_names_the_runs_the_live_counters_count_in_full(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    ledger = Ledger(state, buckets=BUCKETS, max_label_values=100)
    changes = PollChanges()
    for stream_id, baselined in (("new", False), ("history", True)):
        obs = Observation.from_row(read_usage(usage_row(stream_id=stream_id)))
        changes.runs.append(
            apply(None, obs, baselined=baselined, guard=ledger.guard, deltas=changes.deltas)
        )
    ledger.commit(changes)
    ledger.close()
    ids = ["new", "history", "unknown", *(f"x{i}" for i in range(600))]  # over one chunk
    assert counted_in_full(state, ids) == {"new"}
    assert counted_in_full(tmp_path / "absent.db", ids) == set()


def test_the_fetch_reaches_the_exact_end_of_the_range() -> None:
    """The API takes whole seconds: an end with a fraction (the baseline has one) is sent
    rounded up, so that a run started in its last fraction of a second is backfilled.
    With this world and end, one run started 0.35 s before the end (sent truncated, it
    was left out: 0.1445 credits)."""
    now = datetime(2026, 12, 4, 14, 57, 7, 751471, tzinfo=UTC)
    end = now - timedelta(days=1)
    start = end - timedelta(hours=6)
    world = World(seed=9, clock=ManualClock(now), tasks_per_day=2000)
    truth = {
        s.stream_id
        for s in world.visible_streams()
        if start <= s.created_at < end and s.status not in NON_TERMINAL
    }
    assert any(end - timedelta(seconds=1) < s.created_at < end for s in world.visible_streams())
    with SimulatedApi(world) as api, NeoClient(api.url, ("api_key", DEMO_API_KEY)) as client:
        rows, invalid = fetch_rows(client, start, end)
    events = collect_events(rows, start.timestamp(), end.timestamp())
    assert invalid == 0
    assert len(events) == len(truth)


@pytest.fixture
def backfill_env(frozen_api: SimulatedApi, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a backfill against the frozen world (no ledger of its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEO_EXPORTER_")}
    env.update(NEO_EXPORTER_API_KEY=DEMO_API_KEY, NEO_EXPORTER_API_URL=frozen_api.url)
    for name in [k for k in os.environ if k.startswith("NEO_EXPORTER_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def backfill(state: Path, *args: str) -> int:
    hours = ("--from", (START - timedelta(hours=6)).isoformat())
    return main(["backfill", "--state-path", str(state), *hours, *args])


def test_without_a_ledger_the_backfill_needs_an_explicit_to(
    frozen_api: SimulatedApi, backfill_env: object, tmp_path: Path, capsys: CaptureFixture[str]
) -> None:
    """A typo in STATE_PATH must not end the range at now: the live counters would count
    the same runs again."""
    assert backfill(tmp_path / "typo.db") == EXIT_USAGE
    error = capsys.readouterr().err
    assert "no baseline to end at" in error
    assert "does not exist" in error
    assert "give --to" in error
    assert not frozen_api.requests


def test_a_missing_output_directory_is_refused_before_fetching(
    frozen_api: SimulatedApi, backfill_env: object, tmp_path: Path, capsys: CaptureFixture[str]
) -> None:
    out = tmp_path / "missing" / "out.om"
    assert backfill(tmp_path / "s.db", "--to", START.isoformat(), "-o", str(out)) == EXIT_USAGE
    assert f"the directory {out.parent} does not exist" in capsys.readouterr().err
    assert not frozen_api.requests


def test_a_range_ending_before_it_starts_is_a_usage_error_naming_what_was_given(
    frozen_api: SimulatedApi, backfill_env: object, tmp_path: Path, capsys: CaptureFixture[str]
) -> None:
    early = (START - timedelta(hours=7)).isoformat()
    assert backfill(tmp_path / "s.db", "--to", early) == EXIT_USAGE
    assert f"is not before the end of the range, --to ({early}" in capsys.readouterr().err


def test_the_backfill_uses_the_retry_settings(
    frozen_api: SimulatedApi, backfill_env: object, tmp_path: Path
) -> None:
    frozen_api.faults.burst(1, status=503)
    to = ("--to", START.isoformat(), "-o", str(tmp_path / "out.om"))
    assert backfill(tmp_path / "s.db", *to, "--max-retries", "0") == EXIT_STATE
    assert frozen_api.requests == {("/api/v1/usage/streams", 503): 1}


def test_a_closed_pipe_ends_the_backfill_quietly(
    frozen_api: SimulatedApi, backfill_env: dict[str, str], tmp_path: Path
) -> None:
    """`| head -1`: several megabytes of samples, of which the reader takes one line."""
    child = subprocess.Popen(
        [sys.executable, "-m", "exporter", "backfill", "--state-path", str(tmp_path / "s.db"),
         "--from", (START - timedelta(hours=6)).isoformat(), "--to", START.isoformat(),
         "--step", "10s"],
        env=backfill_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    assert child.stderr is not None
    assert child.stdout.readline().startswith(b"# HELP")
    child.stdout.close()
    with child.stderr:
        error = child.stderr.read().decode()
    assert child.wait(timeout=60) == 0
    assert error == ""


def test_the_fetch_reports_rows_out_of_the_api_s_total(frozen_api: SimulatedApi) -> None:
    seen: list[tuple[int, int | None]] = []
    with NeoClient(frozen_api.url, ("api_key", DEMO_API_KEY)) as client:
        rows, _ = fetch_rows(
            client, START - timedelta(days=2), START, lambda got, total: seen.append((got, total))
        )
    assert len(seen) > 1
    assert seen[-1] == (len(rows), len(rows))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_fetch_progress_shows_the_total_on_a_terminal() -> None:
    terminal = _Terminal()
    fetch_progress(terminal)(1200, 5400)
    assert terminal.getvalue() == "\rfetching usage: 1,200 of 5,400 rows"
    quiet = io.StringIO()
    fetch_progress(quiet)(1200, 5400)
    assert quiet.getvalue() == ""


def ledger_with(state: Path, **meta: str) -> Path:
    """A ledger that has polled (a baseline at START), with *meta* entries."""
    Ledger(state, buckets=BUCKETS, max_label_values=10).close()
    with sqlite3.connect(state) as db:
        rows = {"baseline": repr(START.timestamp()), **meta}
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", rows.items())
    db.close()
    return state


def test_a_ledger_of_another_api_is_refused(
    frozen_api: SimulatedApi, backfill_env: object, tmp_path: Path, capsys: CaptureFixture[str]
) -> None:
    state = ledger_with(tmp_path / "s.db", identity_api_url="https://other.example")
    assert backfill(state) == EXIT_USAGE
    assert "counts the API https://other.example" in capsys.readouterr().err
    assert not frozen_api.requests


def test_a_ledger_of_another_account_is_refused_before_usage_is_read(
    frozen_api: SimulatedApi, backfill_env: object, tmp_path: Path, capsys: CaptureFixture[str]
) -> None:
    state = ledger_with(tmp_path / "s.db", identity_account="team elsewhere")
    assert backfill(state, "-o", str(tmp_path / "out.om")) == EXIT_USAGE
    assert "counts the account team elsewhere" in capsys.readouterr().err
    assert frozen_api.requests == {("/api/v1/user", 200): 1}
    frozen_api.user = {"email": "x@example.com", "team": {"id": "elsewhere"}}
    assert backfill(state, "-o", str(tmp_path / "out.om")) == 0
