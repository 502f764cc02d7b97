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
import os
import sys
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

from exporter.accounting import Observation, run_key
from exporter.catalogue import RUN_COUNTERS, RUNS, MetricSpec
from exporter.client import NeoClient, RetryPolicy
from exporter.errors import ConfigError, IdentityError
from exporter.identity import ACCOUNT_KEY, account_mismatch, account_of, url_mismatch
from exporter.ledger import LedgerReader
from exporter.models import TaskUsage
from exporter.progress import fetch_progress, terminal_progress

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


def fetch_rows(
    client: NeoClient,
    since: datetime,
    until: datetime,
    on_page: Callable[[int, int | None], None] | None = None,
) -> tuple[list[TaskUsage], int]:
    listing = client.map_stream_usage(_row, since=since, until=until, on_page=on_page)
    return listing.rows, len(listing.invalid)


def _row(row: TaskUsage, _fingerprint: int | None) -> TaskUsage:
    return row


def backfill_end(
    live: LiveState, state_path: Path, start: datetime, end: datetime | None
) -> datetime:
    """The end of the range: ``--to``, or the live ledger's baseline. Without either the
    backfill would not know where the live counters begin, and could count runs twice:
    ConfigError (a usage mistake, exit 2), as for a range that is empty or past the
    baseline."""
    if end is None:
        if live.baseline is None:
            raise ConfigError(
                f"no baseline to end at: the ledger at {state_path} "
                f"{'has not polled yet' if state_path.exists() else 'does not exist'}. "
                "Point --state-path at the live exporter's ledger, whose baseline is where "
                "the backfill must end, or give --to to end elsewhere (a backfill past "
                "the live exporter's baseline counts runs twice)"
            )
        end, given = live.baseline, f"the baseline of the ledger at {state_path}"
    else:
        given = "--to"
        if live.baseline is not None and end > live.baseline:
            raise ConfigError(
                f"--to ({end.isoformat()}) is after the baseline of the ledger at "
                f"{state_path} ({live.baseline.isoformat()}): the live exporter counts "
                "every run from its baseline on, so a backfill past it would count runs "
                "twice. Leave --to out to end at the baseline"
            )
    if end <= start:
        raise ConfigError(
            f"--from ({start.isoformat()}) is not before the end of the range, "
            f"{given} ({end.isoformat()})"
        )
    return end


def refuse_other(problem: str | None) -> None:
    """Refuse a ledger of another API or account (*problem* says which): its baseline
    says nothing of where the counting of this one began."""
    if problem is not None:
        raise IdentityError(
            f"{problem}: its baseline is not where the live counting of this one began. "
            "Point --state-path at the ledger of the exporter that counts it"
        )


def check_output(output: Path | None) -> None:
    """Refuse an output file that cannot be written before anything is fetched."""
    if output is None:
        return
    folder = output.parent
    if output.is_dir():
        raise ConfigError(f"--output {output} is a directory; expected a file path")
    if not folder.is_dir():
        raise ConfigError(f"--output {output}: the directory {folder} does not exist")
    if not os.access(folder, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise ConfigError(f"--output {output}: no permission to write it")


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
    end = backfill_end(live, settings.state_path, start, end)
    meta = LedgerReader(settings.state_path).meta()
    refuse_other(url_mismatch(meta, settings.state_path, settings.api_url))
    check_output(output)
    bar = terminal_progress()
    with NeoClient(
        settings.api_url,
        credential,
        timeout=settings.request_timeout,
        max_concurrent=settings.max_concurrent_requests,
        retry=RetryPolicy(max_retries=settings.max_retries, backoff_max=settings.retry_backoff_max),
    ) as client:
        if ACCOUNT_KEY in meta:
            refuse_other(account_mismatch(meta, settings.state_path, account_of(client)))
        rows, invalid = fetch_rows(client, start, end, fetch_progress())
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
