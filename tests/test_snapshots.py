"""Typed figures passed from the poll to the collector through the ledger's meta."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exporter.decoding import read_row
from exporter.snapshots import BalanceFigures, PinnedFigures, TeamFigures
from tests.conftest import usage_row


def usage(**fields: Any) -> Any:
    row, _ = read_row(json.dumps(usage_row(stream_id=None, stream_count=3, **fields)).encode())
    return row


def test_pinned_figures_round_trip_as_the_collector_reads_them() -> None:
    figures = PinnedFigures.from_usage(usage(), None)
    assert figures == PinnedFigures(1_250_000_000, 10, 2, 3, "sonnet-4.6", "completed")
    assert PinnedFigures.read(figures.dump()) == figures
    assert PinnedFigures.key("t") == "pinned:t"


@pytest.mark.parametrize("text", [None, "not json", "[1, 2]", '{"credits": 1}'])
def test_a_snapshot_that_does_not_read_is_none_or_partial(text: str | None) -> None:
    read = PinnedFigures.read(text)
    assert read is None or read.credits == 1


def test_figures_not_reported_keep_the_last_ones() -> None:
    """Credits, counts, model or status not reported (or unreadable) keep what was last
    reported: never 0 or "unknown" in their place (found by review)."""
    before = PinnedFigures.from_usage(usage(), None)
    later = usage(neo_credits=None, step_count=None, model="", status="")
    kept = PinnedFigures.from_usage(later, before, unreadable={"model", "status"})
    assert kept == before
    first = PinnedFigures.from_usage(later, None, unreadable={"model", "status"})
    assert (first.credits, first.steps, first.model, first.status) == (
        None, None, "unknown", "unknown",
    )  # fmt: skip


def test_balance_and_team_figures_round_trip() -> None:
    balance = BalanceFigures(available=12.5, issued=100.0, expired=0.0)
    text = balance.dump()
    assert text is not None
    assert BalanceFigures.read(text) == balance
    assert BalanceFigures().dump() is None  # nothing known: nothing written
    assert BalanceFigures.read("garbage") == BalanceFigures()
    team = TeamFigures({"member-1": (3.5, 2.0)})
    assert TeamFigures.read(team.dump()) == team
    assert TeamFigures.read('{"m": "x"}') is None
