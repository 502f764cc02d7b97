"""Durations in settings: parsed from numbers and Prometheus-style units, and printed."""

from __future__ import annotations

import math

import pytest

from exporter.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1", 1.0),
        ("2.5", 2.5),
        (60, 60.0),
        (0.5, 0.5),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("500ms", 0.5),
        ("1m0.5s", 60.5),
        (" 30s ", 30.0),
    ],
)
def test_parse_duration_accepts_numbers_and_units(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "  ", "-5", "-1m", "abc", "5x", "1m1h", "1s1s", "1.s", "s"])
def test_parse_duration_rejects_junk_with_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected seconds like 60, or 90s, 5m, 1h"):
        parse_duration(text)


@pytest.mark.parametrize("value", [math.nan, math.inf, -1, True])
def test_parse_duration_rejects_odd_numbers(value: float) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5400, "1h30m"), (90, "1m30s"), (0.5, "500ms"), (0, "0s"), (86400, "1d"), (1.25, "1.25s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds
