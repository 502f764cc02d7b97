"""The SQLite ledger: atomic commits, restore on restart, refusal to start from zero."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter import catalogue
from exporter.accounting import FirstSight, Observation, apply
from exporter.errors import StateError
from exporter.ledger import (
    SCHEMA_VERSION,
    Ledger,
    PollChanges,
    TaskRecord,
    _ranges_json,
    _to_json,
)
from exporter.models import read_usage
from tests.conftest import BUCKETS, usage_row


def changes_for(ledger: Ledger, *rows: dict[str, object]) -> PollChanges:
    changes = PollChanges()
    for raw in rows:
        obs = Observation.from_row(read_usage(raw))
        old = ledger.load_runs([obs.stream_id]).get(obs.stream_id)
        changes.runs.append(
            apply(old, obs, baselined=False, guard=ledger.guard, deltas=changes.deltas)
        )
    return changes


NOV_1 = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
DAY = 86_400


def reopen(path: Path) -> Ledger:
    return Ledger(path, buckets=BUCKETS, max_label_values=50)


def test_commit_survives_reopen(ledger: Ledger, state_path: Path) -> None:
    changes = changes_for(ledger, usage_row(), usage_row(stream_id="stream-2", neo_credits=0.75))
    changes.tasks["task-1"] = TaskRecord("sonnet-4.6", "completed", 1.0, active=False)
    changes.tasks["task-9"] = TaskRecord(
        "gpt-5",
        "completed",
        2.0,
        False,
        awaiting=("s-a", "s-b"),
        awaiting_since=5.0,
        follow_until=9.0,
    )
    changes.meta["baseline"] = "123.5"
    ledger.commit(changes)
    ledger.close()

    restored = reopen(state_path)
    key = ("neo_credits_total", ("sonnet-4.6", "completed"))
    assert restored.counters[key] == 2_000_000_000
    assert restored.run_count == 2
    assert restored.tasks["task-1"].status == "completed"
    assert restored.tasks["task-9"].awaiting == ("s-a", "s-b")
    assert restored.tasks["task-9"].awaiting_since == 5.0
    assert restored.tasks["task-9"].follow_until == 9.0
    assert restored.meta["baseline"] == "123.5"
    hist = restored.histograms[("neo_tool_call_duration_seconds", ("sonnet-4.6", "bash"))]
    assert (hist.count, hist.sum, hist.buckets) == (2, 1000, [0, 2, 0, 0, 0, 0, 0])
    run = restored.load_runs(["stream-1"])["stream-1"]
    assert run.tools_seen == [[0, 2]]
    assert run.finished
    restored.close()


def test_restored_labels_keep_their_guard_slots(state_path: Path) -> None:
    first = Ledger(state_path, buckets=BUCKETS, max_label_values=1)
    first.commit(changes_for(first, usage_row()))
    first.close()
    second = Ledger(state_path, buckets=BUCKETS, max_label_values=1)
    assert second.guard.admit("model", "sonnet-4.6") == "sonnet-4.6"
    assert second.guard.admit("model", "gpt-5") == "other"
    second.close()


def test_failed_commit_changes_nothing(ledger: Ledger, state_path: Path) -> None:
    ledger.commit(changes_for(ledger, usage_row()))
    saboteur = sqlite3.connect(state_path)
    saboteur.execute(
        "CREATE TRIGGER no_tasks BEFORE INSERT ON tasks "
        "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )
    saboteur.commit()
    saboteur.close()

    before = dict(ledger.counters)
    changes = changes_for(ledger, usage_row(stream_id="stream-2", model="gpt-5"))
    changes.tasks["task-2"] = TaskRecord("gpt-5", "completed", 1.0, active=False)
    with pytest.raises(StateError, match="disk on fire"):
        ledger.commit(changes)
    assert ledger.counters == before
    assert ledger.run_count == 1
    ledger.close()
    restored = reopen(state_path)
    assert restored.counters == before
    assert restored.load_runs(["stream-2"]) == {}
    assert ("gpt-5" in {v for _, v in restored._label_values()}) is False
    restored.close()


def test_corrupt_file_is_refused_with_recovery_advice(state_path: Path) -> None:
    state_path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="Restore the file from a backup"):
        reopen(state_path)


def test_damaged_pages_are_refused(ledger: Ledger, state_path: Path) -> None:
    ledger.commit(changes_for(ledger, *(usage_row(stream_id=f"s{i}") for i in range(300))))
    ledger.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{state_path}{suffix}").unlink(missing_ok=True)
    data = bytearray(state_path.read_bytes())
    page = 4096
    data[2 * page : 3 * page] = b"\xff" * page
    state_path.write_bytes(bytes(data))
    with pytest.raises(StateError, match=r"corrupt|unreadable"):
        reopen(state_path)


def test_other_schema_version_is_refused(ledger: Ledger, state_path: Path) -> None:
    ledger.close()
    db = sqlite3.connect(state_path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="schema version 99"):
        reopen(state_path)


def test_directory_as_state_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="not a file"):
        reopen(tmp_path)


def test_histogram_bounds_of_existing_state_are_kept(ledger: Ledger, state_path: Path) -> None:
    ledger.commit(changes_for(ledger, usage_row()))
    ledger.close()
    changed = {**BUCKETS, "neo_tool_call_duration_seconds": [1, 2, 3]}
    restored = Ledger(state_path, buckets=changed, max_label_values=50)
    hist = restored.histograms[("neo_tool_call_duration_seconds", ("sonnet-4.6", "bash"))]
    assert hist.bounds == tuple(BUCKETS["neo_tool_call_duration_seconds"])
    restored.close()


def test_size_is_reported(ledger: Ledger) -> None:
    ledger.commit(changes_for(ledger, usage_row()))
    assert ledger.size_bytes() > state_path_size(ledger)


def state_path_size(ledger: Ledger) -> int:
    return ledger.path.stat().st_size if ledger.path.exists() else 0


def as_written_by_version(state_path: Path, version: str, *dropped: str) -> Ledger:
    """Turn a closed ledger into one of an older schema version (without the ``dropped``
    "table.column"s), then open it with this version."""
    db = sqlite3.connect(state_path)
    for column in dropped:
        table, name = column.split(".")
        db.execute(f"ALTER TABLE {table} DROP COLUMN {name}")
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    db.commit()
    db.close()
    migrated = reopen(state_path)
    assert migrated.meta["schema_version"] == str(SCHEMA_VERSION)
    return migrated


def test_a_version_1_ledger_is_migrated_in_place(ledger: Ledger, state_path: Path) -> None:
    """Version 1 had no runs.uncounted nor tasks.awaiting: its runs, tasks and totals
    survive, the columns are added."""
    changes = changes_for(ledger, usage_row())
    changes.tasks["task-1"] = TaskRecord("sonnet-4.6", "completed", 1.0, active=False)
    ledger.commit(changes)
    totals = dict(ledger.counters)
    ledger.close()
    migrated = as_written_by_version(
        state_path, "1", "runs.uncounted", "runs.unconfirmed", "tasks.awaiting",
        "tasks.awaiting_since", "tasks.follow_until", "tasks.listed_whole",
    )  # fmt: skip
    assert migrated.counters == totals
    assert migrated.tasks["task-1"] == TaskRecord("sonnet-4.6", "completed", 1.0, active=False)
    run = migrated.load_runs(["stream-1"])["stream-1"]
    assert run.uncounted is None
    assert run.credits == 1_250_000_000
    migrated.close()
    assert reopen(state_path).meta["schema_version"] == str(SCHEMA_VERSION)


def test_a_version_2_ledger_is_migrated_in_place(ledger: Ledger, state_path: Path) -> None:
    """Version 2 had no runs.unconfirmed: its runs read as confirmed."""
    ledger.commit(changes_for(ledger, usage_row()))
    totals = dict(ledger.counters)
    ledger.close()
    migrated = as_written_by_version(state_path, "2", "runs.unconfirmed", "tasks.listed_whole")
    assert migrated.counters == totals
    run = migrated.load_runs(["stream-1"])["stream-1"]
    assert (run.unconfirmed, run.credits) == (None, 1_250_000_000)
    migrated.close()


def test_the_unread_runs_by_task_index_of_older_ledgers_is_dropped(
    ledger: Ledger, state_path: Path
) -> None:
    """Ledgers written before kept an index of runs by task that nothing reads: it is
    dropped on opening (every insert paid for it), and the runs read as before."""
    ledger.commit(changes_for(ledger, usage_row()))
    ledger.close()
    db = sqlite3.connect(state_path)
    db.execute("CREATE INDEX runs_by_task ON runs (task_id)")
    db.commit()
    db.close()
    reopened = reopen(state_path)
    indices = reopened.query("SELECT name FROM sqlite_master WHERE type = 'index'")
    assert ("runs_by_task",) not in indices
    assert reopened.load_runs(["stream-1"])["stream-1"].credits == 1_250_000_000
    reopened.close()


def test_a_run_in_doubt_keeps_its_first_sight(ledger: Ledger, state_path: Path) -> None:
    """What a run taken for history in doubt held when first seen survives a restart."""
    changes = PollChanges()
    obs = Observation.from_row(read_usage(usage_row()))
    state = apply(None, obs, baselined=True, guard=ledger.guard, deltas=changes.deltas)
    state.unconfirmed = FirstSight({"recon": 1}, [[0, 2]])
    changes.runs.append(state)
    ledger.commit(changes)
    ledger.close()
    run = reopen(state_path).load_runs(["stream-1"])["stream-1"]
    assert run.unconfirmed == FirstSight({"recon": 1}, [[0, 2]])
    assert run.baselined


def test_settled_runs_leave_out_unknown_runs_and_runs_in_doubt(
    ledger: Ledger, state_path: Path
) -> None:
    """A run counted as it is is settled, with a fingerprint or without (read from the
    file then); a run in doubt (stored without one) and an unknown run are not. The
    same after a restart, from the file alone."""
    changes = changes_for(
        ledger,
        usage_row(stream_id="plain"),
        usage_row(stream_id="bare"),
        usage_row(stream_id="doubt"),
    )
    bare, doubt = changes.runs[1], changes.runs[2]
    bare.fingerprint = doubt.fingerprint = None
    doubt.baselined = True
    doubt.unconfirmed = FirstSight({}, [], 1.0)
    changes.runs[0].fingerprint = 7
    ledger.commit(changes)
    ids = ["plain", "bare", "doubt", "unknown"]
    assert ledger.settled_runs(ids) == {"plain", "bare"}
    ledger.close()
    assert reopen(state_path).settled_runs(ids) == {"plain", "bare"}


def test_a_baselined_run_keeps_what_it_held_when_first_seen(ledger: Ledger) -> None:
    changes = PollChanges()
    obs = Observation.from_row(read_usage(usage_row()))
    changes.runs.append(apply(None, obs, baselined=True, guard=ledger.guard, deltas=changes.deltas))
    ledger.commit(changes)
    assert changes.deltas.counters == {}
    grown = Observation.from_row(read_usage(usage_row(neo_credits=2, step_count=15)))
    changes = PollChanges()
    old = ledger.load_runs(["stream-1"])["stream-1"]
    changes.runs.append(
        apply(old, grown, baselined=True, guard=ledger.guard, deltas=changes.deltas)
    )
    ledger.commit(changes)
    run = ledger.load_runs(["stream-1"])["stream-1"]
    assert run.uncounted is not None
    assert (run.uncounted["credits"], run.uncounted["steps"]) == (1_250_000_000, 10)
    assert (run.credits, run.steps) == (2_000_000_000, 15)
    assert (
        changes.deltas.counters[("neo_credits_total", ("sonnet-4.6", "completed"))] == 750_000_000
    )


def test_an_empty_state_file_is_refused(tmp_path: Path) -> None:
    """Ledgers are created whole, so an empty file was truncated: never a silent restart."""
    state = tmp_path / "state.db"
    state.write_bytes(b"")
    with pytest.raises(StateError, match="is empty"):
        reopen(state)
    assert state.read_bytes() == b""


def test_a_new_ledger_appears_complete(tmp_path: Path) -> None:
    state = tmp_path / "deeper" / "state.db"
    reopen(state).close()
    assert not (tmp_path / "deeper" / "state.db.new").exists()
    db = sqlite3.connect(state)
    version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    db.close()
    assert version == (str(SCHEMA_VERSION),)


def test_evicted_runs_and_tasks_are_read_from_the_file(ledger: Ledger, state_path: Path) -> None:
    """Eviction shrinks memory, never what the ledger knows: runs, tasks and the run
    count are found in the file, in this process and after a restart that loads only
    the recent part."""
    old = usage_row(stream_id="old", task_id="task-old", created_at="2026-11-01T00:00:00Z")
    new = usage_row(stream_id="new", task_id="task-new", created_at="2026-11-20T00:00:00Z")
    kept = usage_row(stream_id="kept", task_id="task-kept", created_at="2026-11-01T00:00:00Z")
    changes = changes_for(ledger, old, new, kept)
    changes.tasks = {
        "task-old": TaskRecord("gpt-5", "completed", NOV_1, active=False),
        "task-new": TaskRecord("gpt-5", "completed", NOV_1 + 19 * DAY, active=False),
        "task-kept": TaskRecord("gpt-5", "completed", NOV_1, active=False),
        "task-live": TaskRecord("gpt-5", "active", NOV_1, active=True),
    }
    ledger.commit(changes)
    cutoff = NOV_1 + 12 * DAY
    for restart in (False, True):
        if restart:  # a restart that loads only what the cutoff keeps
            ledger.close()
            opened = Ledger(state_path, buckets=BUCKETS, max_label_values=50, defer_index=True)
            opened.load_index(cutoff, keep={"task-kept"})
        else:
            opened = ledger
            opened.evict(cutoff, keep={"task-kept"})
        assert set(opened.fingerprints) == {"new"}
        assert set(opened.tasks) == {"task-new", "task-kept", "task-live"}
        assert opened.run_count == 3
        assert set(opened.load_runs(["old", "new", "kept", "never"])) == {"old", "new", "kept"}
        assert opened.known_runs(["old", "never"]) == {"old"}
        assert opened.task("task-old") == changes.tasks["task-old"]
        assert opened.task("task-never") is None
        again = changes_for(opened, old)  # an evicted run seen again: known, not new
        opened.commit(again)
        assert opened.run_count == 3
        assert "old" in opened.fingerprints
        if restart:
            opened.close()


@given(st.lists(st.lists(st.integers(min_value=0, max_value=10**12), min_size=2, max_size=2)))
def test_ranges_are_stored_as_their_json(ranges: list[list[int]]) -> None:
    """The shortcut for a run's usual single range writes what the JSON encoder would."""
    assert _ranges_json(ranges) == _to_json(ranges)


def test_a_renamed_family_keeps_its_totals(
    ledger: Ledger, state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counters and histograms are stored under their catalogue key, not their
    exposition name: renaming a family in the catalogue keeps what it counted."""
    ledger.commit(changes_for(ledger, usage_row()))
    credits = ledger.counters[("neo_credits_total", ("sonnet-4.6", "completed"))]
    runs = ledger.histograms[("neo_task_run_credits", ("sonnet-4.6", "completed"))]
    ledger.close()
    renamed = {
        catalogue.CREDITS.name: "neo_credits_spent_total",
        catalogue.RUN_CREDITS.name: "neo_run_credits",
    }
    for family in ("COUNTERS", "HISTOGRAMS"):
        specs = tuple(
            dataclasses.replace(s, name=renamed.get(s.name, s.name))
            for s in getattr(catalogue, family)
        )
        monkeypatch.setattr(catalogue, family, specs)
    buckets = {**BUCKETS, "neo_run_credits": BUCKETS["neo_task_run_credits"]}
    reopened = Ledger(state_path, buckets=buckets, max_label_values=50)
    assert reopened.counters[("neo_credits_spent_total", ("sonnet-4.6", "completed"))] == credits
    hist = reopened.histograms[("neo_run_credits", ("sonnet-4.6", "completed"))]
    assert (hist.count, hist.sum) == (runs.count, runs.sum)
    assert not any(name == "neo_credits_total" for name, _ in reopened.counters)
    reopened.close()


def test_a_version_4_ledger_has_tasks_never_listed_whole(ledger: Ledger, state_path: Path) -> None:
    """Version 4 lacked tasks.listed_whole: its tasks keep their records, none listed whole,
    and a task listed whole later keeps that time across a reopening."""
    changes = changes_for(ledger, usage_row())
    changes.tasks["task-1"] = TaskRecord("sonnet-4.6", "completed", 1.0, active=False)
    ledger.commit(changes)
    ledger.close()
    migrated = as_written_by_version(state_path, "4", "tasks.listed_whole")
    assert migrated.tasks["task-1"] == TaskRecord("sonnet-4.6", "completed", 1.0, active=False)
    assert migrated.tasks["task-1"].listed_whole == 0.0
    record = migrated.tasks["task-1"]._replace(listed_whole=2.5)
    migrated.commit(PollChanges(tasks={"task-1": record}))
    migrated.close()
    assert reopen(state_path).task("task-1") == record


def test_a_version_3_ledger_keyed_by_exposition_name_is_migrated(
    ledger: Ledger, state_path: Path
) -> None:
    """Version 3 stored totals under their exposition names: migrated to the keys in
    place, the totals read as before."""
    ledger.commit(changes_for(ledger, usage_row()))
    counters, histograms = dict(ledger.counters), dict(ledger.histograms)
    ledger.close()
    db = sqlite3.connect(state_path)
    for spec in (*catalogue.COUNTERS, *catalogue.HISTOGRAMS):
        for table in ("counters", "histograms"):
            db.execute(f"UPDATE {table} SET name = ? WHERE name = ?", (spec.name, spec.key))
    db.commit()
    db.close()
    migrated = as_written_by_version(state_path, "3", "tasks.listed_whole")
    assert migrated.counters == counters
    assert {k: (h.count, h.sum) for k, h in migrated.histograms.items()} == {
        k: (h.count, h.sum) for k, h in histograms.items()
    }
    stored = {row[0] for row in migrated.query("SELECT name FROM counters")}
    assert stored <= {spec.key for spec in catalogue.COUNTERS}
    migrated.close()
