"""History backfill: usage of a past range as timestamped OpenMetrics for promtool.

The output feeds ``promtool tsdb create-blocks-from openmetrics``. Each run adds its
values at the moment it finished (start plus execution time), and each series is
written at every step in which it changed, plus an hourly heartbeat so that
``increase(...[1h])`` sees it. Runs are selected by start time, exactly as the live
exporter does: a backfill ending at the exporter's baseline and the live counters
never count the same run twice.
"""

from __future__ import annotations

import math
import sqlite3
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

from exporter.accounting import Observation
from exporter.catalogue import RUN_COUNTERS, RUNS, MetricSpec
from exporter.client import NeoClient
from exporter.errors import ExporterError
from exporter.models import TaskUsage

if TYPE_CHECKING:
    from exporter.settings import Settings

HEARTBEAT = 3600.0
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


def collect_events(rows: Iterable[TaskUsage], start: float, end: float) -> list[Event]:
    """One event per run started in [start, end), at its finish time (capped below end)."""
    events: dict[str, Event] = {}
    for row in rows:
        obs = Observation.from_row(row)
        if not start <= obs.started_at < end or not obs.terminal:
            continue
        finished = obs.started_at + obs.values["exec_ms"] / 1000
        at = min(finished, end - 0.001)
        events[obs.stream_id] = Event(at, (obs.model, obs.status), obs.values)
    return sorted(events.values(), key=lambda e: e.at)


def write_openmetrics(
    events: list[Event],
    out: TextIO,
    *,
    start: float,
    end: float,
    step: float,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> BackfillResult:
    """Cumulative counters over time, one family after the other, as promtool wants."""
    result = BackfillResult(runs=len(events))
    total_work = len(FAMILIES)
    for done, (spec, field_name) in enumerate(FAMILIES):
        scale = spec.scale
        # series -> list of (step end, cumulative value in stored units)
        points: dict[tuple[str, str], list[tuple[float, int]]] = {}
        running: dict[tuple[str, str], int] = {}
        for event in events:
            amount = 1 if field_name is None else event.values[field_name]
            if amount == 0 and event.labels in running:
                continue
            running[event.labels] = running.get(event.labels, 0) + amount
            slot = min(end - 0.001, start + math.ceil((event.at - start) / step) * step)
            series = points.setdefault(event.labels, [])
            if series and series[-1][0] == slot:
                series[-1] = (slot, running[event.labels])
            else:
                series.append((slot, running[event.labels]))
        base = spec.name.removesuffix("_total")
        out.write(f"# HELP {base} {spec.help}\n# TYPE {base} counter\n")
        for labels in sorted(points):
            model, status = (_escape(v) for v in labels)
            selector = f'{spec.name}{{model="{model}",status="{status}"}}'
            result.series.add((spec.name, labels))
            for at, value in _with_heartbeats(points[labels], end):
                out.write(f"{selector} {_number(value / scale)} {at:.3f}\n")
                result.samples += 1
        progress(done + 1, total_work)
    out.write("# EOF\n")
    return result


def _with_heartbeats(points: list[tuple[float, int]], end: float) -> Iterable[tuple[float, int]]:
    for position, (at, value) in enumerate(points):
        yield at, value
        following = points[position + 1][0] if position + 1 < len(points) else end
        beat = at + HEARTBEAT
        while beat < following:
            yield beat, value
            beat += HEARTBEAT


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
    if end is None:
        end = _baseline(settings.state_path) or datetime.now(UTC)
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
    events = collect_events(rows, start.timestamp(), end.timestamp())
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
    )


def _baseline(state_path: Path) -> datetime | None:
    """The live exporter's baseline: where its own counting began."""
    if not state_path.is_file():
        return None
    db = sqlite3.connect(f"file:{state_path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'baseline'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return datetime.fromtimestamp(float(row[0]), UTC) if row else None
