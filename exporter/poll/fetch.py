"""Fetching for a poll: every API read a poll makes, and every failure met, in one place."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar

import msgspec
import structlog

from exporter.accounting import Observation, row_fingerprint, task_run_key
from exporter.client import Listing, NeoClient
from exporter.decoding import Defect
from exporter.errors import ApiError, ApiInterrupted, ApiStatusError, NotFound
from exporter.models import TaskDetails, TaskInfo, TaskUsage
from exporter.poll.report import PollReport
from exporter.selfmetrics import SelfMetrics

log = structlog.get_logger(__name__)
T = TypeVar("T")
Outcome = dict[str, T | ApiError]


def task_run(row: TaskUsage, fingerprint: int | None) -> Observation:
    """A per-task row as one run of the ledger, keyed ``task:<id>`` whatever it says."""
    if row.stream_id is not None:
        row = msgspec.structs.replace(row, stream_id=None)
    return Observation.from_row(row, fingerprint)


class Fetcher:
    """Reads usage and task state for the poller, a few requests at a time.

    ``fingerprints`` (stream ID -> fingerprint of the row last counted) lets listings
    skip rows that have not changed. Failures of reads by task ID are returned, not
    raised, and ``failed`` counts and logs each; listings of the window raise.
    """

    def __init__(
        self,
        client: NeoClient,
        metrics: SelfMetrics,
        fingerprints: Mapping[str, int | None],
        *,
        max_workers: int = 4,
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.fingerprints = fingerprints
        # Whether the per-stream rows cannot be read (/usage/streams not offered to this
        # key) and runs are counted per task instead, from the per-task rows: each task
        # one run (``task:<id>``), exact for what those rows show.
        self.per_task = False
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="neo-fetch")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def window(self, since: float) -> Listing[Observation]:
        """Every run started since ``since``; rows become observations page by page (a
        first poll holds a whole window). Where the per-stream rows are not offered, the
        per-task rows of the tasks created since then instead (``per_task``)."""
        moment = datetime.fromtimestamp(since, UTC)
        if not self.per_task:
            try:
                return self.client.map_stream_usage(
                    Observation.from_row, since=moment, fingerprint=row_fingerprint,
                    known=self.fingerprints,
                )  # fmt: skip
            except ApiStatusError as exc:
                if not exc.not_offered or exc.status == 400:
                    raise
                self.per_task = True
                self.metrics.errors.labels(exc.reason).inc()
                log.warning(
                    "stream_usage_unavailable", status=exc.status,
                    action="counting per task from /api/v1/usage/tasks until restarted",
                )  # fmt: skip
        return self.client.map_task_usages(
            task_run, since=moment, key=lambda row: task_run_key(row.task_id),
            fingerprint=row_fingerprint, known=self.fingerprints,
        )  # fmt: skip

    def task_runs(self, task_ids: Iterable[str]) -> Outcome[Listing[Observation]]:
        """Every run of each task, read by task ID."""
        return self._each(self._task_runs, task_ids)

    def details(self, task_ids: Iterable[str]) -> Outcome[TaskDetails]:
        return self._each(self.client.get_task, task_ids)

    def usage(self, task_ids: Iterable[str]) -> Outcome[tuple[TaskUsage, list[Defect]]]:
        """Each task's usage summed over its runs, with the values that could not be read."""
        return self._each(self.client.read_task_usage, task_ids)

    def problems(self, listing: Listing[Observation], report: PollReport) -> None:
        """Count and report what a listing could not read: rows that cannot be placed
        (each skipped alone), values read as not reported, envelopes that contradict."""
        for bad in listing.invalid:
            self.metrics.errors.labels("invalid_row").inc()
            report.invalid_rows += 1
            report.warnings.append(f"{bad.task_id}: {bad.reason}")
        self.defects(listing.defects, report)
        for kind in listing.inconsistent:
            self.metrics.errors.labels("paging_inconsistent").inc()
            report.warnings.append(f"paging: {kind}")

    def defects(self, defects: Iterable[Defect], report: PollReport) -> None:
        """Count and log values read as not reported (each costs only itself)."""
        for defect in defects:
            self.metrics.errors.labels("invalid_field").inc()
            report.invalid_fields += 1
            log.warning(
                "field_skipped", task_id=defect.task_id, stream_id=defect.stream_id,
                field=defect.field, reason=defect.reason,
            )  # fmt: skip

    def live_tasks(
        self, statuses: Iterable[str]
    ) -> tuple[dict[str, TaskInfo], int, ApiError | None]:
        """The caller's own tasks of ``statuses``, from the task list, one request each;
        how many lists answered; and the first failure, which ends the reading."""
        found: dict[str, TaskInfo] = {}
        answered = 0
        for status in statuses:
            try:
                tasks = self.client.list_tasks(status=status)
            except ApiError as exc:
                log.warning("task_list_failed", status=status, reason=exc.reason, error=str(exc))
                return found, answered, exc
            answered += 1
            found.update((info.id, info) for info in tasks)
        return found, answered, None

    def days(self, since: float, until: float) -> Listing[Observation]:
        """Every run whose row is dated in [since, until): a day of a sweep."""
        return self.client.map_stream_usage(
            Observation.from_row, since=datetime.fromtimestamp(since, UTC),
            until=datetime.fromtimestamp(until, UTC), fingerprint=row_fingerprint,
            known=self.fingerprints,
        )  # fmt: skip

    def own_tasks(self, pages: int) -> tuple[list[TaskInfo], ApiError | None]:
        """The caller's own tasks, all statuses, newest first, at most ``pages`` pages;
        and the failure that ended the reading, if one did (counted and logged)."""
        try:
            return self.client.list_tasks(max_pages=pages), None
        except ApiError as exc:
            self.metrics.errors.labels(exc.reason).inc()
            log.warning("task_list_failed", status="any", reason=exc.reason, error=str(exc))
            return [], exc

    def failed(self, task_id: str, exc: ApiError, report: PollReport) -> None:
        """Count and log a failed read of one task; one the exporter's own stop cut
        short is no failure of the API: logged at debug level only."""
        if isinstance(exc, ApiInterrupted):
            log.debug("task_fetch_interrupted", task_id=task_id)
            return
        self.metrics.errors.labels(exc.reason).inc()
        report.warnings.append(f"{task_id}: {exc}")
        event = "task_not_found" if isinstance(exc, NotFound) else "task_fetch_failed"
        log.warning(event, task_id=task_id, reason=exc.reason, error=str(exc))

    def _task_runs(self, task_id: str) -> Listing[Observation]:
        if self.per_task:  # the task's own row, as one run
            row, defects = self.client.read_task_usage(task_id)
            listing: Listing[Observation] = Listing(pages=1, defects=defects)
            key, digest = task_run_key(task_id), row_fingerprint(row)
            if digest is not None and self.fingerprints.get(key, -1) == digest:
                listing.unchanged.add(key)
            else:
                listing.rows.append(task_run(row, digest))
            return listing
        return self.client.map_stream_usage(
            Observation.from_row,
            task_id=task_id,
            fingerprint=row_fingerprint,
            known=self.fingerprints,
        )

    def _each(self, fn: Callable[[str], T], ids: Iterable[str]) -> Outcome[T]:
        futures = {task_id: self._pool.submit(fn, task_id) for task_id in ids}
        results: Outcome[T] = {}
        for task_id, future in futures.items():
            try:
                results[task_id] = future.result()
            except ApiError as exc:
                results[task_id] = exc
        return results
