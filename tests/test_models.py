"""Usage rows: what a row may say, what is read leniently, and how a bad field is named."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from exporter.models import (
    MAX_COUNT,
    TaskUsage,
    decode_usage,
    describe_decode_error,
    read_usage,
)

from .conftest import usage_row


def both_ways(row: dict[str, Any]) -> TaskUsage:
    """A row read from its JSON text and from decoded JSON, which must agree."""
    text = decode_usage(json.dumps(row))
    assert read_usage(row) == text
    return text


def reason(row: dict[str, Any]) -> str:
    with pytest.raises(msgspec.ValidationError) as caught:
        decode_usage(json.dumps(row))
    with pytest.raises(msgspec.ValidationError):
        read_usage(row)
    return describe_decode_error(caught.value)


@pytest.mark.parametrize(
    ("field", "sent", "read"),
    [
        ("step_count", "5", 5),  # a number as a string
        ("step_count", 5.0, 5),  # a whole float
        ("tool_calls", 1e3, 1000),
        ("neo_credits", "0.5", Decimal("0.5")),
        ("neo_credits", 0.1, Decimal("0.1")),  # exactly as written, not as a binary float
        ("neo_credits", 1e-3, Decimal("0.001")),
        ("neo_credits", None, None),  # not reported
        ("llm_time_ms", None, None),
        ("agent_breakdown", None, None),
        ("tool_call_history", None, None),
        ("created_at", "2026-11-20T10:00:00", datetime(2026, 11, 20, 10, tzinfo=UTC)),
        ("created_at", "2026-11-20T12:00:00+02:00", datetime(2026, 11, 20, 10, tzinfo=UTC)),
    ],
)
def test_lenient_values_read_as_meant(field: str, sent: Any, read: Any) -> None:
    row = both_ways(usage_row(**{field: sent}))
    assert getattr(row, field) == read
    if field == "created_at":
        assert row.created_at.utcoffset() is not None  # never left to the local zone


@pytest.mark.parametrize(
    ("field", "sent", "expected"),
    [
        ("step_count", -1, "step_count: Expected `int` >= 0"),
        ("step_count", 5.5, "step_count: Expected `int | null`, got `float`"),
        ("step_count", True, "step_count: Expected `int | null`, got `bool`"),
        ("step_count", "many", "step_count: Expected `int | null`, got `str`"),
        ("tool_calls", MAX_COUNT + 1, f"tool_calls: Expected `int` <= {MAX_COUNT}"),
        ("task_id", "", "task_id: Expected `str` of length >= 1"),
        ("model", None, "model: Expected `str`, got `null`"),
        ("created_at", "yesterday", "created_at: Invalid RFC3339 encoded datetime"),
        ("neo_credits", True, "neo_credits: Expected `decimal | null`, got `bool`"),
        ("neo_credits", "abc", "neo_credits: Invalid decimal string"),
        ("neo_credits", -0.5, "neo_credits: not an amount from 0 to 1000000 credits"),
        ("neo_credits", "NaN", "neo_credits: not an amount from 0 to 1000000 credits"),
        ("llm_cost", "Infinity", "llm_cost: not an amount from 0 to 1000000 credits"),
        ("neo_cost", 10**7, "neo_cost: not an amount from 0 to 1000000 credits"),
        ("agent_breakdown", {"recon": -2}, "agent_breakdown[...]: Expected `int` >= 0"),
        (
            "tool_call_history",
            [{"index": 0, "tool_name": "bash", "duration_ms": -1}],
            "tool_call_history[0].duration_ms: Expected `int` >= 0",
        ),
    ],
)
def test_a_bad_field_is_named_without_its_value(field: str, sent: Any, expected: str) -> None:
    text = reason(usage_row(**{field: sent}))
    assert text.startswith(expected)
    if isinstance(sent, str) and sent:
        assert sent not in text.removeprefix(field)


def test_an_amount_past_any_float_is_rejected_not_overflowed() -> None:
    text = json.dumps(usage_row()).replace('"neo_credits": 1.25', '"neo_credits": 1e400')
    with pytest.raises(msgspec.ValidationError, match="neo_credits: not an amount"):
        decode_usage(text)


def test_a_missing_field_is_named() -> None:
    row = usage_row()
    del row["status"]
    assert reason(row) == "Object missing required field `status`"


def test_fields_the_exporter_does_not_read_may_drift() -> None:
    row = both_ways(
        usage_row(
            is_byok="perhaps",
            avg_step_latency_ms=-3,
            task_title=["not", "text"],
            email=7,
            tool_breakdown={"bash": "lots"},
            something_new={"nested": [1, 2]},
        )
    )
    assert row == both_ways(usage_row())


def test_tool_calls_default_what_they_leave_out() -> None:
    row = both_ways(usage_row(tool_call_history=[{}, {"tool_name": None, "timestamp": 3}]))
    assert [(c.index, c.tool_name, c.duration_ms) for c in row.tool_call_history or ()] == [
        (None, None, 0),
        (None, None, 0),
    ]
