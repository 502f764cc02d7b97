"""History backfill: usage of a past range as timestamped OpenMetrics for promtool.

The output feeds ``promtool tsdb create-blocks-from openmetrics``. Each run adds its
values at the moment it finished (start plus execution time), and each series is
sampled every step, as a scrape would have seen it. Runs are selected by start time,
exactly as the live exporter does, and a run the live exporter found in progress at
its baseline adds only what it held when first seen (the ledger records it): a
backfill ending at the baseline and the live counters never count anything twice.
"""

from __future__ import annotations

import math
import sys
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

from exporter.accounting import Observation, run_key
from exporter.catalogue import RUN_COUNTERS, RUNS, MetricSpec
from exporter.client import NeoClient
from exporter.errors import ExporterError
from exporter.ledger import LedgerReader
from exporter.models import TaskUsage

if TYPE_CHECKING:
    from exporter.settings import Settings

FAMILIES: tuple[tuple[MetricSpec, str | None], ...] = (
    *((spec, field_name) for field_name, spec in RUN_COUNTERS.items()),
    (RUNS, None),
)


@dataclass
class Event:
    at: float
    labels: tuple[str, str]
    values: dict[str, int]


@dataclass
class BackfillResult:
    runs: int = 0
    skipped: int = 0
    samples: int = 0
    series: set[tuple[str, tuple[str, str]]] = field(default_factory=set)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else f"{value:.1f}"


def collect_events(
    rows: Iterable[TaskUsage],
    start: float,
    end: float,
    uncounted: Mapping[str, dict[str, int]] | None = None,
    live_only: Collection[str] = (),
) -> list[Event]:
    """One event per run started in [start, end), at its finish time (capped below end).

    ``uncounted`` maps the live exporter's baselined runs to what they held when it
    first saw them: only that part is backfilled, as the live counters hold the rest.
    Such a run is backfilled even while it still runs, since that part no longer changes.
    Runs in ``live_only`` are left out: the live counters count them in full (their row
    may carry an older date, their task's), or will should they prove new.
    """
    known = uncounted or {}
    events: dict[str, Event] = {}
    for row in rows:
        obs = Observation.from_row(row)
        if obs.stream_id in live_only:
            continue
        before_live = known.get(obs.stream_id)
        if not start <= obs.started_at < end or not (obs.terminal or before_live is not None):
            continue
        finished = obs.started_at + obs.values.get("exec_ms", 0) / 1000
        at = min(finished, end - 0.001)
        values = obs.values if before_live is None else before_live
        events[obs.stream_id] = Event(at, (obs.model, obs.status), values)
    return sorted(events.values(), key=lambda e: e.at)


def sample_times(start: float, end: float, step: float) -> list[float]:
    """Every ``step`` from ``start``, and a last sample just inside the exclusive ``end``."""
    times = [start + k * step for k in range(math.ceil((end - start) / step))]
    last = end - 0.001
    if not times or times[-1] < last:
        times.append(last)
    return times


def write_openmetrics(
    events: list[Event],
    out: TextIO,
    *,
    start: float,
    end: float,
    step: float,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> BackfillResult:
    """Cumulative counters sampled every ``step``, one family after the other.

    A series is written at every sample time from its first run to the end, as a
    scrape every ``step`` would have seen it: with a step within Prometheus' lookback
    (5m by default) an instant query at any moment of the range finds every series,
    and the last sample lies just before ``end``, where the live counters begin.
    """
    result = BackfillResult(runs=len(events))
    times = sample_times(start, end, step)
    total_work = len(FAMILIES)
    for done, (spec, field_name) in enumerate(FAMILIES):
        # series -> amount added at each sample time (index into times)
        added: dict[tuple[str, str], list[int]] = {}
        for event in events:
            amount = 1 if field_name is None else event.values.get(field_name, 0)
            if amount <= 0:
                continue
            slot = min(bisect_left(times, event.at), len(times) - 1)
            added.setdefault(event.labels, [0] * len(times))[slot] += amount
        base = spec.name.removesuffix("_total")
        out.write(f"# HELP {base} {spec.help}\n# TYPE {base} counter\n")
        for labels in sorted(added):
            model, status = (_escape(v) for v in labels)
            selector = f'{spec.name}{{model="{model}",status="{status}"}}'
            result.series.add((spec.name, labels))
            amounts = added[labels]
            first = next(i for i, amount in enumerate(amounts) if amount)
            running = 0
            for at, amount in zip(times[first:], amounts[first:], strict=True):
                running += amount
                out.write(f"{selector} {_number(running / spec.scale)} {at:.3f}\n")
                result.samples += 1
        progress(done + 1, total_work)
    out.write("# EOF\n")
    return result


def fetch_rows(client: NeoClient, since: datetime, until: datetime) -> tuple[list[TaskUsage], int]:
    listing = client.list_stream_usage(since=since, until=until)
    return listing.rows, len(listing.invalid)


def terminal_progress(stream: TextIO = sys.stderr) -> Callable[[int, int], None]:
    """A one-line progress bar when ``stream`` is a terminal, silence otherwise."""
    if not stream.isatty():
        return lambda done, total: None

    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} families")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show


def run_backfill(
    settings: Settings,
    credential: tuple[Literal["api_key", "token"], str],
    *,
    start: datetime,
    end: datetime | None,
    step: float,
    output: Path | None,
) -> str:
    """Fetch the range and write it; returns a one-line summary for the terminal."""
    live = read_live_state(settings.state_path)
    if end is None:
        end = live.baseline or datetime.now(UTC)
    if live.baseline is not None and end > live.baseline:
        raise ExporterError(
            f"--to ({end.isoformat()}) is after the baseline of the ledger at "
            f"{settings.state_path} ({live.baseline.isoformat()}): the live exporter counts "
            "every run from its baseline on, so a backfill past it would count runs twice. "
            "Leave --to out to end at the baseline"
        )
    if end <= start:
        raise ExporterError(f"--to ({end.isoformat()}) must be after --from ({start.isoformat()})")
    pages = 0
    bar = terminal_progress()

    def fetched(endpoint: str, code: str) -> None:
        nonlocal pages
        pages += 1
        if sys.stderr.isatty():
            sys.stderr.write(f"\rfetching usage: {pages} requests")
            sys.stderr.flush()

    with NeoClient(
        settings.api_url,
        credential,
        timeout=settings.request_timeout,
        max_concurrent=settings.max_concurrent_requests,
        on_request=fetched,
    ) as client:
        rows, invalid = fetch_rows(client, start, end)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    counted = counted_in_full(settings.state_path, [run_key(row) for row in rows])
    events = collect_events(
        rows, start.timestamp(), end.timestamp(), live.uncounted, live.doubtful | counted
    )
    if output is None:
        result = write_openmetrics(
            events, sys.stdout, start=start.timestamp(), end=end.timestamp(), step=step,
            progress=bar,
        )  # fmt: skip
    else:
        with output.open("w") as out:
            result = write_openmetrics(
                events, out, start=start.timestamp(), end=end.timestamp(), step=step,
                progress=bar,
            )  # fmt: skip
    return (
        f"backfill: {result.runs} runs from {start.isoformat()} to {end.isoformat()}, "
        f"{len(result.series)} series, {result.samples} samples, {invalid} rows skipped"
        + (
            f"; {live.unknown} runs in progress at the baseline come from a ledger too old "
            "to say what they held then, and are backfilled in full"
            if live.unknown
            else ""
        )
        + (
            f"; {len(live.doubtful)} runs whose start the live exporter has not confirmed "
            "are left out: it counts them itself should they prove new"
            if live.doubtful
            else ""
        )
    )


@dataclass
class LiveState:
    """What the live exporter's ledger says about where its counting began."""

    baseline: datetime | None = None
    uncounted: dict[str, dict[str, int]] = field(default_factory=dict)
    unknown: int = 0  # baselined runs from a ledger too old to say what they held
    doubtful: set[str] = field(default_factory=set)  # taken for history while unsure


def counted_in_full(state_path: Path, stream_ids: list[str]) -> set[str]:
    """Those of ``stream_ids`` that the live exporter counts in full (a row may carry its
    task's date, older than the run's start), read without writing."""
    return LedgerReader(state_path).counted_in_full(stream_ids)


def read_live_state(state_path: Path) -> LiveState:
    """The live exporter's baseline and its baselined runs, read without writing."""
    reader = LedgerReader(state_path)
    baseline = reader.baseline()
    state = LiveState(datetime.fromtimestamp(baseline, UTC) if baseline is not None else None)
    state.doubtful = reader.doubtful_runs()
    for stream_id, held in reader.baselined_runs().items():
        if held is None:
            state.unknown += 1
        else:
            state.uncounted[stream_id] = held
    return state
