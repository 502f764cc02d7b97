"""SQLite ledger: what has been counted, committed in one transaction per poll."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import structlog

from exporter import catalogue
from exporter.accounting import Deltas, FirstSight, LabelGuard, RunState
from exporter.catalogue import HISTOGRAMS
from exporter.errors import StateError
from exporter.histograms import Exemplar, ExemplarKey, Histogram, Labels, SeriesKey, bin_poll

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 5
RECOVERY = (
    "the exporter will not start from zero on its own, because that would count every run "
    "in the lookback window a second time. Restore the file from a backup, or move it aside "
    "to start a new ledger deliberately (counters restart; Prometheus sees a counter reset)"
)
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    stream_id TEXT PRIMARY KEY, task_id TEXT NOT NULL, started_at REAL NOT NULL,
    model TEXT NOT NULL, status TEXT NOT NULL, baselined INTEGER NOT NULL,
    finished INTEGER NOT NULL, credits INTEGER NOT NULL, llm_cost INTEGER NOT NULL,
    neo_cost INTEGER NOT NULL, steps INTEGER NOT NULL, tool_calls INTEGER NOT NULL,
    agent_triggers INTEGER NOT NULL, llm_ms INTEGER NOT NULL, tool_ms INTEGER NOT NULL,
    exec_ms INTEGER NOT NULL, agents TEXT NOT NULL, tools_seen TEXT NOT NULL,
    fingerprint INTEGER, uncounted TEXT, unconfirmed TEXT
) WITHOUT ROWID;
-- Older ledgers indexed runs by task: nothing reads that index, and every insert paid for it.
DROP INDEX IF EXISTS runs_by_task;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL, labels TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (name, labels)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS histograms (
    name TEXT NOT NULL, labels TEXT NOT NULL, bounds TEXT NOT NULL, buckets TEXT NOT NULL,
    sum INTEGER NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (name, labels)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS label_values (
    label TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (label, value)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY, model TEXT NOT NULL, status TEXT NOT NULL,
    last_activity REAL NOT NULL, active INTEGER NOT NULL,
    awaiting TEXT NOT NULL DEFAULT '[]', awaiting_since REAL NOT NULL DEFAULT 0,
    follow_until REAL NOT NULL DEFAULT 0, listed_whole REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""
RUN_COLUMNS = (
    "stream_id", "task_id", "started_at", "model", "status", "baselined", "finished",
    "credits", "llm_cost", "neo_cost", "steps", "tool_calls", "agent_triggers", "llm_ms",
    "tool_ms", "exec_ms", "agents", "tools_seen", "fingerprint", "uncounted", "unconfirmed",
)  # fmt: skip
# Version 1 lacked runs.uncounted (its baselined runs read as "first-sight values
# unknown") and tasks.awaiting (its tasks await nothing); version 2 lacked
# runs.unconfirmed (its baselined runs are history for sure).
# Version 3 stored counters and histograms under their exposition names; version 4 under
# keys that a rename of the family leaves alone (MetricSpec.key). The names of then, as
# they were: later renames must not change this list.
_KEYS_OF_VERSION_3 = (
    ("neo_credits_total", "credits"),
    ("neo_steps_total", "steps"),
    ("neo_tool_calls_total", "tool_calls"),
    ("neo_agent_triggers_total", "agent_triggers"),
    ("neo_task_runs_total", "runs"),
    ("neo_llm_time_seconds_total", "llm_ms"),
    ("neo_tool_time_seconds_total", "tool_ms"),
    ("neo_execution_time_seconds_total", "exec_ms"),
    ("neo_byok_llm_cost_credits_total", "llm_cost"),
    ("neo_byok_neo_cost_credits_total", "neo_cost"),
    ("neo_agent_triggers_by_agent_total", "agent_triggers_by_agent"),
    ("neo_tool_call_duration_seconds", "tool_call_duration"),
    ("neo_task_run_credits", "run_credits"),
    ("neo_task_run_execution_seconds", "run_execution"),
)
_RENAMED_IN_4 = tuple(
    f"UPDATE {table} SET name = '{key}' WHERE name = '{name}'"  # noqa: S608 - constants
    for table in ("counters", "histograms")
    for name, key in _KEYS_OF_VERSION_3
)
# Version 4 lacked tasks.listed_whole (its tasks were never listed whole).
_TO_5 = ("ALTER TABLE tasks ADD COLUMN listed_whole REAL NOT NULL DEFAULT 0",)
_TO_4 = (*_RENAMED_IN_4, *_TO_5)
_TO_3 = ("ALTER TABLE runs ADD COLUMN unconfirmed TEXT", *_TO_4)
MIGRATIONS = {
    "1": (
        "ALTER TABLE runs ADD COLUMN uncounted TEXT",
        "ALTER TABLE tasks ADD COLUMN awaiting TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE tasks ADD COLUMN awaiting_since REAL NOT NULL DEFAULT 0",
        "ALTER TABLE tasks ADD COLUMN follow_until REAL NOT NULL DEFAULT 0",
        *_TO_3,
    ),
    "2": _TO_3,
    "3": _TO_4,
    "4": _TO_5,
}
# Runs are evicted from memory by start, this many seconds of starts at a time.
EVICT_BUCKET = 600


class TaskRecord(NamedTuple):
    """What the ledger knows of a task (a tuple: a ledger holds many, built fast)."""

    model: str
    status: str
    last_activity: float  # unix time of the task's latest run start or live sighting
    active: bool  # not finished according to task details: polled until it is
    # Runs that task details call finished but whose finished usage row the ledger
    # has not counted yet: the task's usage is read by ID until they arrive.
    awaiting: tuple[str, ...] = ()
    awaiting_since: float = 0.0  # unix time the oldest of them was first awaited
    # Runs that finished outside the listed window may still settle (grow once more):
    # their task's usage is read by ID until this unix time.
    follow_until: float = 0.0
    # When all the task's runs were first listed by its ID (unix time; 0: never). A run
    # of the task that listing did not show started after it, whatever its row says.
    listed_whole: float = 0.0

    @property
    def flagged(self) -> bool:
        """Live, awaited or followed: read by the poller beyond the listings."""
        return bool(self.active or self.awaiting or self.follow_until)


@dataclass
class PollChanges:
    """Everything one poll writes, applied atomically by ``Ledger.commit``."""

    runs: list[RunState] = field(default_factory=list)
    deltas: Deltas = field(default_factory=Deltas)
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)


def _row(state: RunState) -> tuple[object, ...]:
    return (
        state.stream_id, state.task_id, state.started_at, state.model, state.status,
        int(state.baselined), int(state.finished), state.credits, state.llm_cost,
        state.neo_cost, state.steps, state.tool_calls, state.agent_triggers, state.llm_ms,
        state.tool_ms, state.exec_ms, _to_json(state.agents), _ranges_json(state.tools_seen),
        state.fingerprint, None if state.uncounted is None else _to_json(state.uncounted),
        None if state.unconfirmed is None else _to_json(state.unconfirmed),
    )  # fmt: skip


_ENCODER = msgspec.json.Encoder(order="sorted")


def _to_json(value: object) -> str:
    """Compact JSON with sorted keys: a run's agents, ranges and uncounted values."""
    return _ENCODER.encode(value).decode()


def _ranges_json(ranges: list[list[int]]) -> str:
    """``_to_json`` of a run's counted tool-call ranges, of which there is one usually."""
    if len(ranges) == 1:
        start, end = ranges[0]
        return f"[[{start},{end}]]"
    return _to_json(ranges)


TASK_COLUMNS = (
    "model, status, last_activity, active, awaiting, awaiting_since, follow_until, listed_whole"
)


def _task_record(columns: Sequence[Any], shared: dict[str, str]) -> TaskRecord:
    """A task's record from its TASK_COLUMNS; ``shared`` keeps one copy of each model
    and status string across many tasks."""
    model, status, last, active, awaiting, since, until, whole = columns
    return TaskRecord(
        shared.setdefault(model, model),
        shared.setdefault(status, status),
        last,
        bool(active),
        () if awaiting == "[]" else tuple(json.loads(awaiting)),
        since or 0.0,  # the shared zero: most tasks await and follow nothing
        until or 0.0,
        whole or 0.0,
    )


def _cold(task_id: str, record: TaskRecord, before: float, keep: Collection[str]) -> bool:
    """A task that memory can do without: neither live, awaited nor followed, last
    active before ``before``, and not in ``keep``."""
    return record.last_activity < before and not record.flagged and task_id not in keep


def _state(row: sqlite3.Row) -> RunState:
    return RunState(
        stream_id=row["stream_id"], task_id=row["task_id"], started_at=row["started_at"],
        model=row["model"], status=row["status"], baselined=bool(row["baselined"]),
        finished=bool(row["finished"]), credits=row["credits"], llm_cost=row["llm_cost"],
        neo_cost=row["neo_cost"], steps=row["steps"], tool_calls=row["tool_calls"],
        agent_triggers=row["agent_triggers"], llm_ms=row["llm_ms"], tool_ms=row["tool_ms"],
        exec_ms=row["exec_ms"], agents=json.loads(row["agents"]),
        tools_seen=json.loads(row["tools_seen"]), fingerprint=row["fingerprint"],
        uncounted=None if row["uncounted"] is None else json.loads(row["uncounted"]),
        unconfirmed=None if row["unconfirmed"] is None else _first_sight(row["unconfirmed"]),
    )  # fmt: skip


def select_runs(
    db: sqlite3.Connection, columns: str, stream_ids: list[str], where: str = "1"
) -> Iterator[sqlite3.Row]:
    """``columns`` of the runs of ``stream_ids`` that ``where`` also selects, asked 500
    at a time (SQLite caps the parameters of a statement)."""
    for start in range(0, len(stream_ids), 500):
        chunk = stream_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        query = f"SELECT {columns} FROM runs WHERE {where} AND stream_id IN ({marks})"  # noqa: S608
        yield from db.execute(query, chunk)


def _access_denied(path: Path, exc: sqlite3.Error) -> StateError | None:
    """The permissions message, if *exc* says the file or its directory cannot be written
    (``os.access`` alone misses a read-only mount, and says yes to root)."""
    readonly = "readonly" in str(exc) or "read-only" in str(exc)
    if not readonly and os.access(path, os.R_OK | os.W_OK) and os.access(path.parent, os.W_OK):
        return None
    return StateError(
        f"state file {path} cannot be opened for writing ({exc}): give the exporter's user "
        "read and write access to it and to its directory"
    )


def _first_sight(text: str) -> FirstSight:
    agents, tools_seen, *at = json.loads(text)  # [agents, ranges, unix time]
    return FirstSight(agents, tools_seen, *at)


class Ledger:
    """The exporter's memory: per-run counted values and the totals served as metrics.

    Aggregates (counters, histograms) live in memory, with the tasks and run
    fingerprints of the recent past (see ``evict``), and are replaced only after the
    transaction that writes them has committed; the file holds every run and task.
    """

    def __init__(
        self,
        path: Path,
        *,
        buckets: Mapping[str, Sequence[float]],
        max_label_values: int,
        defer_index: bool = False,
    ) -> None:
        self.path = path
        self._defer_index = defer_index
        self.index_loaded = False
        self._buckets = {spec.name: tuple(buckets[spec.name]) for spec in HISTOGRAMS}
        self._scales = {spec.name: spec.scale for spec in HISTOGRAMS}
        # Exposition name -> storage key of every family the ledger stores: read from the
        # catalogue when opened, so that a renamed family finds its totals.
        self._keys = {spec.name: spec.key for spec in (*catalogue.COUNTERS, *catalogue.HISTOGRAMS)}
        self.counters: dict[tuple[str, Labels], int] = {}
        self.histograms: dict[SeriesKey, Histogram] = {}
        self.tasks: dict[str, TaskRecord] = {}
        # Tasks that are live, awaited or followed: what a poll reads by ID. Kept beside
        # ``tasks`` so that a poll never walks every task the ledger ever saw.
        self.flagged: set[str] = set()
        # Tasks written since the collector last looked, and how often ``tasks`` was
        # loaded whole: what lets neo_tasks follow changes instead of walking every task.
        self.tasks_touched: set[str] = set()
        self.tasks_loads = 0
        # Latest (task_id, value in stored units, unix time) per counter series or
        # histogram bucket; kept in memory only, as exemplars are samples, not totals.
        self.exemplars: dict[ExemplarKey, Exemplar] = {}
        # Runs in memory: their fingerprints, and their ids by start (EVICT_BUCKET apart)
        # for eviction. Every run stays in the file; an old one leaves memory (see evict).
        self.fingerprints: dict[str, int | None] = {}
        self._by_start: dict[int, list[str]] = {}
        self.run_total = 0  # runs in the file
        # Some runs or tasks are only in the file: reads that miss memory ask the file.
        # So it is until the index is loaded.
        self.partial = True
        self.meta: dict[str, str] = {}
        self._db = self._connect()
        self._load()
        self.guard = LabelGuard(max_label_values, self._label_values())

    def _connect(self) -> sqlite3.Connection:
        if self.path.exists() and not self.path.is_file():
            raise StateError(f"state path {self.path} is not a file")
        if not self.path.exists():
            self._create()
        elif self.path.stat().st_size == 0:
            # We never leave an empty file behind (see _create): someone truncated it.
            raise StateError(f"state file {self.path} is empty: {RECOVERY}")
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a scraped total must survive power loss
            problems = [r[0] for r in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise StateError(f"state file {self.path} is corrupt ({problems[0]}): {RECOVERY}")
            db.executescript(SCHEMA)
        except sqlite3.OperationalError as exc:
            denied = _access_denied(self.path, exc)
            if denied is not None:
                raise denied from None
            raise StateError(f"state file {self.path} is unreadable ({exc}): {RECOVERY}") from None
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state file {self.path} is unreadable ({exc}): {RECOVERY}") from None
        return db

    def _create(self) -> None:
        """A new ledger appears whole or not at all: built aside, then renamed into place,
        so that a crash during the very first start never leaves an empty file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)  # OSError names the path
        staging = self.path.with_name(self.path.name + ".new")
        try:
            for leftover in (staging, Path(f"{staging}-wal"), Path(f"{staging}-shm")):
                leftover.unlink(missing_ok=True)
            db = sqlite3.connect(staging, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            finally:
                db.close()  # checkpoints the WAL into the file and removes it
            os.replace(staging, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except sqlite3.Error as exc:
            raise StateError(
                f"cannot create the state file {self.path} ({exc}): give the exporter's user "
                "write access to its directory"
            ) from None

    def _load(self) -> None:
        db = self._db
        self.meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        version = self.meta.get("schema_version")
        if version is None:
            if db.execute("SELECT 1 FROM runs LIMIT 1").fetchone():
                raise StateError(
                    f"state file {self.path} has runs but no schema version: {RECOVERY}"
                )
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            self.meta["schema_version"] = str(SCHEMA_VERSION)
        elif version in MIGRATIONS:
            db.execute("BEGIN IMMEDIATE")
            for statement in MIGRATIONS[version]:
                db.execute(statement)
            db.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )
            db.execute("COMMIT")
            log.info("state_migrated", from_version=version, to_version=SCHEMA_VERSION)
            self.meta["schema_version"] = str(SCHEMA_VERSION)
        elif version != str(SCHEMA_VERSION):
            raise StateError(
                f"state file {self.path} has schema version {version}, this exporter reads "
                f"{SCHEMA_VERSION}: run the exporter version that wrote it, or {RECOVERY}"
            )
        named = {key: name for name, key in self._keys.items()}
        for key, labels, value in db.execute("SELECT name, labels, value FROM counters"):
            self.counters[(named.get(key, key), tuple(json.loads(labels)))] = value
        for key, labels, bounds, buckets, total, count in db.execute(
            "SELECT name, labels, bounds, buckets, sum, count FROM histograms"
        ):
            name = named.get(key, key)
            stored = tuple(json.loads(bounds))
            if name in self._buckets and stored != self._buckets[name]:
                log.warning("histogram_buckets_kept", metric=name, stored=stored)
            hist = Histogram(stored, self._scales.get(name, 1), json.loads(buckets), total, count)
            self.histograms[(name, tuple(json.loads(labels)))] = hist
        self.run_total = db.execute("SELECT count(*) FROM runs").fetchone()[0]
        if not self._defer_index:
            self.load_index()

    def load_index(self, hot_since: float | None = None, keep: Collection[str] = ()) -> None:
        """Tasks and per-run fingerprints: what polling needs, not what serving needs.

        The daemon defers this to its poller thread, so that the restored totals are
        served before it is read; everything else loads it at once. With ``hot_since``
        (unix time), only what ``evict(hot_since, keep)`` would keep is loaded.
        """
        if self.index_loaded:
            return
        db = self._db
        # One shared copy of each model and status string: a ledger holds many tasks.
        shared: dict[str, str] = {}
        skipped = False
        for task_id, *columns in db.execute(f"SELECT task_id, {TASK_COLUMNS} FROM tasks"):  # noqa: S608
            record = _task_record(columns, shared)
            if hot_since is not None and _cold(task_id, record, hot_since, keep):
                skipped = True
                continue
            self.tasks[task_id] = record
            if record.flagged:
                self.flagged.add(task_id)
        query = "SELECT stream_id, fingerprint, started_at FROM runs"
        params: tuple[float, ...] = ()
        if hot_since is not None:
            query, params = f"{query} WHERE started_at >= ?", (hot_since,)
        for stream_id, fingerprint, started_at in db.execute(query, params):
            self.fingerprints[stream_id] = fingerprint
            self._hold(stream_id, started_at)
        self.partial = skipped or len(self.fingerprints) < self.run_total
        self.tasks_loads += 1
        self.index_loaded = True

    def _hold(self, stream_id: str, started_at: float) -> None:
        """File a run in memory under its start, for ``evict``."""
        self._by_start.setdefault(int(started_at // EVICT_BUCKET), []).append(stream_id)

    def evict(self, before: float, keep: Collection[str] = ()) -> None:
        """Forget in memory the runs that started before ``before`` (unix time) and the
        tasks last active before it, but for live, awaited or followed tasks and those in
        ``keep``: memory then follows the window, not the ledger's age. The file keeps
        them all, and reads that miss memory ask it, so an evicted run listed again is
        recognised (never counted twice), only no longer skipped unread."""
        limit = int(before // EVICT_BUCKET)
        for bucket in [b for b in self._by_start if b < limit]:
            for stream_id in self._by_start.pop(bucket):
                self.fingerprints.pop(stream_id, None)
            self.partial = True
        cold = [t for t, record in self.tasks.items() if _cold(t, record, before, keep)]
        for task_id in cold:
            del self.tasks[task_id]
        self.tasks_touched.update(cold)  # for the tasks-in-view counts (collector)
        self.partial = self.partial or bool(cold)

    def _label_values(self) -> Iterable[tuple[str, str]]:
        return [(r[0], r[1]) for r in self._db.execute("SELECT label, value FROM label_values")]

    # -- reads ----------------------------------------------------------------

    @property
    def run_count(self) -> int:
        return self.run_total

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            candidate = Path(f"{self.path}{suffix}")
            if candidate.exists():
                total += candidate.stat().st_size
        return total

    def load_runs(self, stream_ids: Iterable[str]) -> dict[str, RunState]:
        """The stored state of those of ``stream_ids`` that the ledger has."""
        if self.partial:
            wanted = list(stream_ids)
        else:  # memory knows every run: ask the file only for those it has
            wanted = [s for s in stream_ids if s in self.fingerprints]
        return {row["stream_id"]: _state(row) for row in self._select_runs("*", wanted)}

    def known_runs(self, stream_ids: Iterable[str]) -> set[str]:
        """Those of ``stream_ids`` that the ledger has."""
        wanted = list(stream_ids)
        known = {s for s in wanted if s in self.fingerprints}
        if self.partial:
            rest = [s for s in wanted if s not in known]
            known.update(row[0] for row in self._select_runs("stream_id", rest))
        return known

    def settled_runs(self, stream_ids: Iterable[str]) -> set[str]:
        """Those of ``stream_ids`` that the ledger has and does not hold in doubt
        (``RunState.unconfirmed``). A run in doubt is stored without a fingerprint, so
        one with a fingerprint in memory is settled without asking the file."""
        wanted = list(stream_ids)
        settled = {s for s in wanted if self.fingerprints.get(s) is not None}
        rest = [s for s in wanted if s not in settled and (self.partial or s in self.fingerprints)]
        query = self._select_runs("stream_id", rest, "unconfirmed IS NULL")
        settled.update(row[0] for row in query)
        return settled

    def _select_runs(
        self, columns: str, stream_ids: list[str], where: str = "1"
    ) -> Iterator[sqlite3.Row]:
        return select_runs(self._db, columns, stream_ids, where)

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        """The rows of an SQL query on the file, for tools and tests."""
        return [tuple(row) for row in self._db.execute(sql, params)]

    def take_touched_tasks(self) -> set[str]:
        """The tasks written or evicted since the last call (for the collector's counts
        of tasks in view, which follow changes instead of walking every task)."""
        touched, self.tasks_touched = self.tasks_touched, set()
        return touched

    def flagged_tasks(self) -> list[tuple[str, TaskRecord]]:
        """The tasks that are live, awaited or followed, with their records: what a poll
        reads beyond the listings (all in memory: eviction keeps them)."""
        return [(task_id, self.tasks[task_id]) for task_id in self.flagged]

    def task(self, task_id: str) -> TaskRecord | None:
        """What the ledger knows of a task, from memory or, once evicted, the file."""
        record = self.tasks.get(task_id)
        if record is not None or not self.partial:
            return record
        query = f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?"  # noqa: S608
        row = self._db.execute(query, (task_id,)).fetchone()
        return None if row is None else _task_record(row, {})

    def histogram_for(self, name: str, labels: Labels) -> Histogram:
        """A copy of a series' histogram so far (empty if new), to add to."""
        existing = self.histograms.get((name, labels))
        if existing is not None:
            return existing.copy()
        bounds = self._buckets[name]
        return Histogram(bounds, self._scales[name], [0] * (len(bounds) + 1))

    # -- the one write path ----------------------------------------------------

    def commit(self, changes: PollChanges) -> dict[str, int]:
        """Write one poll's changes in one transaction; memory follows only on success.
        Returns the label values folded into ``other`` since the last commit, by label
        (those of a failed commit are returned by the next one)."""
        counters = {
            key: self.counters.get(key, 0) + amount
            for key, amount in changes.deltas.counters.items()
        }
        histograms, exemplars = bin_poll(changes.deltas, self.histogram_for, time.time())
        new_labels = list(self.guard.new)
        keys = self._keys
        # Runs new to memory; those of them already in the file were evicted, not new.
        fresh = [s for s in changes.runs if s.stream_id not in self.fingerprints]
        stored = len(self.known_runs(s.stream_id for s in fresh)) if self.partial else 0
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                f"INSERT OR REPLACE INTO runs ({','.join(RUN_COLUMNS)}) "  # noqa: S608
                f"VALUES ({','.join('?' * len(RUN_COLUMNS))})",
                # In key order: SQLite appends to its B-tree instead of splitting pages.
                sorted(map(_row, changes.runs)),
            )
            db.executemany(
                "INSERT OR REPLACE INTO counters VALUES (?, ?, ?)",
                [(keys.get(n, n), json.dumps(labels), v) for (n, labels), v in counters.items()],
            )
            db.executemany(
                "INSERT OR REPLACE INTO histograms VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        keys.get(n, n),
                        json.dumps(labels),
                        json.dumps(h.bounds),
                        json.dumps(h.buckets),
                        h.sum,
                        h.count,
                    )
                    for (n, labels), h in histograms.items()
                ],
            )
            db.executemany("INSERT OR IGNORE INTO label_values VALUES (?, ?)", new_labels)
            db.executemany(
                "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        t,
                        r.model,
                        r.status,
                        r.last_activity,
                        int(r.active),
                        _to_json(r.awaiting) if r.awaiting else "[]",
                        r.awaiting_since,
                        r.follow_until,
                        r.listed_whole,
                    )
                    for t, r in changes.tasks.items()
                ],
            )
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(changes.meta.items()))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self.guard.forget(new_labels)
            self.guard.new.clear()
            denied = _access_denied(self.path, exc)
            if denied is not None:
                raise denied from None
            raise StateError(f"could not write the state file {self.path}: {exc}") from None
        self.guard.new.clear()
        self.counters.update(counters)
        # New Histogram objects for the series that changed (copies, see histogram_for),
        # never one changed in place: the collector hands on an unchanged series' samples
        # by the identity of its Histogram, whose exemplars change only with it.
        self.histograms.update(histograms)
        self.exemplars.update(exemplars)
        self.tasks.update(changes.tasks)
        self.tasks_touched.update(changes.tasks)
        for task_id, record in changes.tasks.items():
            if record.flagged:
                self.flagged.add(task_id)
            else:
                self.flagged.discard(task_id)
        self.meta.update(changes.meta)
        self.run_total += len(fresh) - stored
        for state in fresh:
            self._hold(state.stream_id, state.started_at)
        for state in changes.runs:
            self.fingerprints[state.stream_id] = state.fingerprint
        overflow = dict(self.guard.overflow)
        self.guard.overflow.clear()
        return overflow

    def close(self) -> None:
        self._db.close()


class LedgerReader:
    """A read-only view of a ledger file that another process (the live exporter) may be
    writing: what a history backfill needs to know of where counting began. It takes no
    lock and writes nothing; a missing file reads as an empty ledger."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _open(self) -> Iterator[sqlite3.Connection | None]:
        if not self.path.is_file():
            yield None
            return
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            yield db
        except sqlite3.Error as exc:
            raise StateError(f"cannot read the state file {self.path}: {exc}") from None
        finally:
            db.close()

    def meta(self) -> dict[str, str]:
        """The ledger's meta entries (identity, baseline, ...); empty without a ledger."""
        with self._open() as db:
            if db is None:
                return {}
            return dict(db.execute("SELECT key, value FROM meta").fetchall())

    def baseline(self) -> float | None:
        """The live exporter's baseline (unix time), if it has polled."""
        with self._open() as db:
            if db is None:
                return None
            found = db.execute("SELECT value FROM meta WHERE key = 'baseline'").fetchone()
        return float(found[0]) if found else None

    def baselined_runs(self) -> dict[str, dict[str, int] | None]:
        """Runs taken for history, with what each held when first seen (None: a ledger
        too old to say)."""
        with self._open() as db:
            if db is None:
                return {}
            columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            if "uncounted" not in columns:
                query = "SELECT stream_id, NULL FROM runs WHERE baselined = 1"
            else:
                query = "SELECT stream_id, uncounted FROM runs WHERE baselined = 1"
            rows = db.execute(query).fetchall()
        return {stream_id: None if raw is None else json.loads(raw) for stream_id, raw in rows}

    def doubtful_runs(self) -> set[str]:
        """Runs taken for history in doubt (``RunState.unconfirmed``)."""
        with self._open() as db:
            if db is None:
                return set()
            columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            if "unconfirmed" not in columns:
                return set()
            query = "SELECT stream_id FROM runs WHERE unconfirmed IS NOT NULL"
            return {row[0] for row in db.execute(query)}

    def counted_in_full(self, stream_ids: list[str]) -> set[str]:
        """Those of ``stream_ids`` that the live exporter counts in full."""
        with self._open() as db:
            if db is None:
                return set()
            return {row[0] for row in select_runs(db, "stream_id", stream_ids, "baselined = 0")}
