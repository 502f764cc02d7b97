"""The poll, request for request and write for write, against golden transcripts
(tests/golden.py): a reshaping of the poll must not change what it asks or writes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from tests import golden
from tests.rig import Rig, make_rig

TASK_DETAILS = "/api/v1/tasks/{id}"


@dataclass(frozen=True)
class Scenario:
    world: dict[str, Any] = field(default_factory=dict)
    down: dict[str, int] = field(default_factory=dict)  # endpoint template -> status
    polls: int = 12
    step: float = 600
    lookback: float | None = None
    restart_at: int | None = None  # reopen ledger and poller before this poll
    pin: bool = False  # pin the world's sixth task (old by the first poll)


SCENARIOS = {
    "default": Scenario(pin=True, restart_at=7),
    "rows_dated_by_task": Scenario(world={"stream_created_at": "task"}),
    "live_rows": Scenario(world={"live_rows": True}),
    "details_503": Scenario(world={"stream_created_at": "task"}, down={TASK_DETAILS: 503}),
    "details_404": Scenario(world={"stream_created_at": "task"}, down={TASK_DETAILS: 404}),
    "details_403": Scenario(world={"stream_created_at": "task"}, down={TASK_DETAILS: 403}),
    "short_window": Scenario(lookback=900, polls=20, step=120),
}


def _start(rig: Rig, recorder: golden.Recorder, scenario: Scenario) -> None:
    poller = rig.open()
    if scenario.lookback is not None:
        poller.timing = replace(poller.timing, lookback=scenario.lookback)
    recorder.attach()


def transcript(tmp_path: Path, scenario: Scenario) -> list[str]:
    lines: list[str] = []
    for rig in make_rig(tmp_path, tasks_per_day=600, **scenario.world):
        if scenario.pin:
            rig.pinned = (rig.world.tasks[5].task_id,)
        recorder = golden.Recorder(rig)
        _start(rig, recorder, scenario)
        rig.api.faults.down.update(scenario.down)
        recorder.poll()
        for number in range(1, scenario.polls + 1):
            if number == scenario.restart_at:
                rig.close()
                _start(rig, recorder, scenario)
            rig.clock.advance(scenario.step)
            recorder.poll()
        lines = list(recorder.lines())
    return lines


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_poll_asks_and_writes_what_it_did(tmp_path: Path, name: str) -> None:
    got = transcript(tmp_path, SCENARIOS[name])
    if os.environ.get("GOLDEN_UPDATE"):
        golden.save(name, got)
    expected = golden.load(name)
    assert got == expected, golden.first_difference(expected, got)


def test_transcripts_are_deterministic(tmp_path: Path) -> None:
    """The same scenario twice gives the same transcript: a golden test that could pass
    or fail by chance would prove nothing."""
    scenario = Scenario(world={"stream_created_at": "task"}, polls=3, pin=True)
    first = transcript(tmp_path / "a", scenario)
    assert first == transcript(tmp_path / "b", scenario)
    assert len(first) == 4
