"""A ledger counts one API and one account: another is refused, adopted by an old
ledger, or started anew on purpose with --new-ledger."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporter.app import Exporter
from exporter.cli import EXIT_USAGE
from exporter.errors import IdentityError
from exporter.identity import ACCOUNT_KEY, API_URL_KEY
from exporter.ledger import LedgerReader
from exporter.settings import Settings
from exporter.simulator import DEMO_API_KEY, ScaledClock, SimulatedApi, World
from exporter.simulator.server import TEAM_USER

KEY = ("api_key", DEMO_API_KEY)


def _api(seed: int) -> SimulatedApi:
    world = World(seed=seed, clock=ScaledClock(datetime.now(UTC), 1), tasks_per_day=50)
    return SimulatedApi(world)


@pytest.fixture
def api() -> Iterator[SimulatedApi]:
    with _api(1) as served:
        yield served


@pytest.fixture
def other_api() -> Iterator[SimulatedApi]:
    with _api(2) as served:
        yield served


def build(api: SimulatedApi, state: Path, **options: object) -> Exporter:
    settings = Settings(api_url=api.url, state_path=state)
    return Exporter(
        settings, KEY, host="127.0.0.1", port=0, process_metrics=False,
        **options,  # type: ignore[arg-type]
    )  # fmt: skip


def counted(exporter: Exporter) -> None:
    assert exporter.poller.poll_safely() is not None
    exporter.stop()


def test_a_ledger_records_the_api_and_the_account_it_counts(
    api: SimulatedApi, state_path: Path
) -> None:
    counted(build(api, state_path))
    meta = LedgerReader(state_path).meta()
    assert (meta[API_URL_KEY], meta[ACCOUNT_KEY]) == (api.url, "user demo@example.com")


def test_another_api_is_refused_at_start(
    api: SimulatedApi, other_api: SimulatedApi, state_path: Path
) -> None:
    counted(build(api, state_path))
    with pytest.raises(IdentityError, match=rf"counts the API {api.url}.*--new-ledger"):
        build(other_api, state_path)
    assert LedgerReader(state_path).meta()[API_URL_KEY] == api.url
    build(api, state_path).stop()  # the refused exporter let go of the lock


def test_another_account_is_refused_before_anything_is_counted(
    api: SimulatedApi, state_path: Path
) -> None:
    counted(build(api, state_path))
    runs_before = LedgerReader(state_path).meta().get("baseline")
    api.user = dict(TEAM_USER)  # the key now belongs to a team's admin
    fatal: list[bool] = []
    exporter = build(api, state_path, on_fatal=lambda: fatal.append(True))
    api.journal = []
    assert exporter.poller.poll_safely() is None
    assert api.journal == ["GET /api/v1/user"]  # no usage was read, nothing counted
    assert isinstance(exporter.fatal, IdentityError)
    assert "user demo@example.com" in str(exporter.fatal)
    assert "team team-demo" in str(exporter.fatal)
    assert fatal == [True]
    assert exporter.health.ready() == (False, "the ledger counts another account")
    assert exporter.metrics.errors.labels("identity")._value.get() == 1
    exporter.stop()
    assert LedgerReader(state_path).meta().get("baseline") == runs_before


def test_an_older_ledger_adopts_what_it_meets_first(api: SimulatedApi, state_path: Path) -> None:
    counted(build(api, state_path))
    with sqlite3.connect(state_path) as db:  # as a ledger of the version before
        db.execute("DELETE FROM meta WHERE key IN (?, ?)", (API_URL_KEY, ACCOUNT_KEY))
    api.user = dict(TEAM_USER)
    counted(build(api, state_path))
    meta = LedgerReader(state_path).meta()
    assert (meta[API_URL_KEY], meta[ACCOUNT_KEY]) == (api.url, "team team-demo")


def test_new_ledger_sets_another_api_s_ledger_aside(
    api: SimulatedApi, other_api: SimulatedApi, state_path: Path
) -> None:
    counted(build(api, state_path))
    counted(build(other_api, state_path, new_ledger=True))
    assert LedgerReader(state_path).meta()[API_URL_KEY] == other_api.url
    (kept,) = state_path.parent.glob("state.db.*Z")
    assert LedgerReader(kept).meta()[API_URL_KEY] == api.url


def test_new_ledger_sets_another_account_s_ledger_aside(
    api: SimulatedApi, state_path: Path
) -> None:
    counted(build(api, state_path))
    api.user = dict(TEAM_USER)
    counted(build(api, state_path, new_ledger=True))
    assert LedgerReader(state_path).meta()[ACCOUNT_KEY] == "team team-demo"
    assert len(list(state_path.parent.glob("state.db.*Z"))) == 1


def test_new_ledger_keeps_a_ledger_of_the_same_api_and_account(
    api: SimulatedApi, state_path: Path
) -> None:
    counted(build(api, state_path))
    baseline = LedgerReader(state_path).baseline()
    counted(build(api, state_path, new_ledger=True))
    assert LedgerReader(state_path).baseline() == baseline
    assert not list(state_path.parent.glob("state.db.*Z"))


def test_run_exits_2_with_the_reason_for_another_api_s_ledger(
    api: SimulatedApi, other_api: SimulatedApi, state_path: Path
) -> None:
    counted(build(api, state_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEO_EXPORTER_")}
    for name, value in {
        "API_KEY": DEMO_API_KEY, "API_URL": other_api.url, "STATE_PATH": str(state_path),
        "LISTEN_ADDRESS": "127.0.0.1:0", "LOG_FORMAT": "json",
    }.items():  # fmt: skip
        env[f"NEO_EXPORTER_{name}"] = value
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "run"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == EXIT_USAGE
    assert f"counts the API {api.url}" in done.stderr
    assert "Traceback" not in done.stderr
