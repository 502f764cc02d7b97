"""Usage pages read so that a bad value costs only itself (exporter.decoding)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.accounting import OCCURRENCE, Observation
from exporter.decoding import Defect, Unreadable, read_page, read_row
from exporter.models import TaskUsage, ToolCall

ROW: dict[str, Any] = {
    "task_id": "t-1",
    "stream_id": "s-1",
    "model": "opus-4.7",
    "status": "completed",
    "created_at": "2026-11-20T08:00:00Z",
    "step_count": 12,
    "tool_calls": 3,
    "agent_triggers": 1,
    "neo_credits": 4.25,
    "llm_cost": None,
    "llm_time_ms": 5000,
    "tool_time_ms": 900,
    "total_execution_ms": 7000,
    "agent_breakdown": {"recon": 1},
    "tool_call_history": [
        {"index": 0, "tool_name": "nmap", "duration_ms": 300},
        {"index": 1, "tool_name": "httpx", "duration_ms": 250},
        {"index": 2, "tool_name": "nmap", "duration_ms": 350},
    ],
    "task_title": "scan",
}


def text(row: dict[str, Any], **raw: str) -> bytes:
    """``row`` as JSON, with each of ``raw`` as a member of literal JSON text."""
    body = json.dumps(row, separators=(",", ":"))
    extra = "".join(f',"{name}":{value}' for name, value in raw.items())
    return (body[:-1] + extra + "}").encode()


def page(*rows: bytes, tail: str = ',"has_more":false,"total":3') -> bytes:
    return b'{"data":[' + b",".join(rows) + b"]" + tail.encode() + b"}"


CLEAN = read_row(text(ROW))[0]
OTHER = text({**ROW, "task_id": "t-2", "stream_id": "s-2"})
LAST = text({**ROW, "task_id": "t-3", "stream_id": "s-3"})

# Values a careless server sends that msgspec (or json.loads) refuses.
HOSTILE = {
    "nan": "NaN",
    "infinity": "Infinity",
    "minus_infinity": "-Infinity",
    "huge": "1e400",
    "lone_surrogate": '"\\ud800"',
    "deep": "[" * 5000 + "]" * 5000,
    "deep_object": '{"a":' * 3000 + "1" + "}" * 3000,
}


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_value_where_nothing_reads_it_costs_nothing(value: str) -> None:
    ready = read_page(page(OTHER, text({**ROW}, x_unread=value), LAST))
    assert ready.rows[1] == CLEAN
    assert ready.defects == []
    assert ready.skipped == []
    assert ready.size == 3
    assert (ready.has_more, ready.total) == (False, 3)


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize(
    "name", ["neo_credits", "step_count", "llm_time_ms", "agent_breakdown", "model"]
)
def test_a_hostile_value_in_a_counted_field_costs_that_field(name: str, value: str) -> None:
    row = {k: v for k, v in ROW.items() if k != name}
    ready = read_page(page(OTHER, text(row, **{name: value}), LAST))
    assert [r.task_id for r in ready.rows] == ["t-2", "t-1", "t-3"]
    read = ready.rows[1]
    lost: Any = {"model": "unknown", "agent_breakdown": None}.get(name)
    where = name
    if name == "agent_breakdown" and value.startswith("{"):  # an object: its entry is lost
        lost, where = {}, "agent_breakdown.a"
    assert read == msgspec.structs.replace(CLEAN, **{name: lost})
    assert [(d.task_id, d.stream_id, d.field) for d in ready.defects] == [("t-1", "s-1", where)]
    assert ready.rows[0] == read_row(OTHER)[0]


@pytest.mark.parametrize(
    ("duration", "read"), [("-1", None), ("12.5", 12), ("13.5", 14), ("NaN", None), ("1e400", None)]
)
def test_a_tool_call_duration_costs_only_that_call(duration: str, read: int | None) -> None:
    """A fraction of a millisecond is rounded (ties to even); a duration that cannot be
    read leaves that call uncounted until it can be, and its neighbours counted."""
    body = text(ROW).replace(b'"duration_ms":250', b'"duration_ms":' + duration.encode())
    row, defects = read_row(body)
    assert row is not None
    calls = row.tool_call_history or []
    assert calls[1] == ToolCall(1, "httpx", read)
    assert calls[0] == ToolCall(0, "nmap", 300)
    assert calls[2] == ToolCall(2, "nmap", 350)
    assert row.neo_credits == Decimal("4.25")
    assert [d.field for d in defects] == (
        [] if read is not None else ["tool_call_history[1].duration_ms"]
    )
    obs = Observation.from_row(row)
    if read is None:  # the call waits, its index unmarked, for a readable duration
        assert (obs.tools, list(obs.durations), obs.indices) == (
            ["nmap", "nmap"],
            [300, 350],
            [0, 2],
        )
    else:
        assert (list(obs.durations), obs.indices) == ([300, read, 350], None)


def test_a_fractional_millisecond_figure_is_rounded() -> None:
    row, defects = read_row(text({**ROW, "llm_time_ms": 5000.25, "tool_time_ms": 900.5}))
    assert row is not None
    assert (row.llm_time_ms, row.tool_time_ms, defects) == (5000, 900, [])


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("task_id", "NaN", "task_id: missing or not readable"),
        ("task_id", '""', "task_id: missing or not readable"),
        ("created_at", '"yesterday"', "created_at: "),
        ("created_at", "null", "created_at: missing"),
    ],
)
def test_a_row_that_cannot_be_placed_is_skipped_alone(name: str, value: str, reason: str) -> None:
    row = {k: v for k, v in ROW.items() if k != name}
    ready = read_page(page(OTHER, text(row, **{name: value}), LAST))
    assert [r.task_id for r in ready.rows] == ["t-2", "t-3"]
    assert ready.size == 3  # the offset moves past it all the same
    assert len(ready.skipped) == 1
    assert ready.skipped[0].reason.startswith(reason)


def test_a_row_that_is_not_an_object_is_skipped_alone() -> None:
    ready = read_page(page(OTHER, b'[1, "x"]', b"NaN", LAST))
    assert [r.task_id for r in ready.rows] == ["t-2", "t-3"]
    assert ready.size == 4
    assert [d.field for d in ready.skipped] == ["row", "row"]


@pytest.mark.parametrize(
    "body",
    [
        page(OTHER, LAST)[:-40],  # cut short
        b"<html>502 Bad Gateway</html>",
        b'{"rows":[]}',
        b'{"data":{"a":1}}',
        b'{"data":[' + OTHER + b"]] }",
        b'{"data":[' + OTHER + b',"unterminated]}',
        b'{"data":[' + OTHER + b"]} trailing",
    ],
)
def test_a_page_whose_structure_is_lost_fails_whole(body: bytes) -> None:
    with pytest.raises(Unreadable):
        read_page(body)


def test_envelope_values_that_cannot_be_read_are_absent() -> None:
    ready = read_page(page(OTHER, tail=',"has_more":"yes","total":-4'))
    assert (ready.has_more, ready.total, ready.rows) == (None, None, [read_row(OTHER)[0]])
    ready = read_page(page(OTHER, tail=',"has_more":NaN,"total":1e400'))
    assert (ready.has_more, ready.total) == (None, None)


def test_tool_calls_and_agents_that_cannot_be_read_cost_only_themselves() -> None:
    body = text(
        {k: v for k, v in ROW.items() if k not in ("tool_call_history", "agent_breakdown")},
        tool_call_history='[{"index":0,"tool_name":"nmap","duration_ms":300},7,'
        '{"index":NaN,"tool_name":5,"duration_ms":10}]',
        agent_breakdown='{"recon":1,"bad":-3,"worse":NaN}',
    )
    row, defects = read_row(body)
    assert row is not None
    assert row.agent_breakdown == {"recon": 1}
    assert row.tool_call_history == [
        ToolCall(0, "nmap", 300),
        ToolCall(None, None, None),  # its place kept, so the next call keeps its position
        ToolCall(None, None, 10),
    ]
    assert sorted(d.field for d in defects) == [
        "agent_breakdown.bad",
        "agent_breakdown.worse",
        "tool_call_history[1]",
        "tool_call_history[2].index",
        "tool_call_history[2].tool_name",
    ]
    obs = Observation.from_row(row)
    # The call whose index cannot be read is known by its position among such calls.
    assert (obs.tools, list(obs.durations), obs.indices) == (
        ["nmap", "unknown"],
        [300, 10],
        [0, -3],
    )


def test_tool_call_indices_that_repeat_are_told_apart_by_their_occurrence() -> None:
    calls = [{**c, "index": 0} for c in ROW["tool_call_history"]]
    row = read_row(text({**ROW, "tool_call_history": calls}))[0]
    assert row is not None
    obs = Observation.from_row(row)
    assert obs.indices == [0, OCCURRENCE, 2 * OCCURRENCE]  # the same as the history grows
    assert list(obs.durations) == [300, 250, 350]


def test_a_row_read_field_by_field_equals_the_row_decoded_whole() -> None:
    """The field-by-field reader is what every bad row goes through: it must read a good
    row exactly as the fast path does, field for field."""
    from exporter.decoding import _read_row_in_parts

    for variant in (ROW, {**ROW, "stream_id": None, "neo_credits": "0.1", "llm_cost": 0}):
        body = text(variant)
        assert _read_row_in_parts(body) == (msgspec.json.decode(body, type=TaskUsage), [])


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
RAW = st.sampled_from(list(HOSTILE.values())) | JSON.map(lambda v: json.dumps(v, ensure_ascii=True))


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from([*ROW, "x_unread"]), value=RAW)
def test_no_json_value_anywhere_costs_more_than_its_row(name: str, value: str) -> None:
    """Any value the JSON grammar allows (and the non-JSON ones servers send) put in any
    field of one row: the page reads, its other rows read exactly as they were, and
    the row itself is read or skipped, never raised."""
    row = {k: v for k, v in ROW.items() if k != name}
    ready = read_page(page(OTHER, text(row, **{name: value}), LAST))
    assert ready.size == 3
    assert ready.rows[0] == read_row(OTHER)[0]
    assert ready.rows[-1] == read_row(LAST)[0]
    assert len(ready.rows) + len(ready.skipped) == 3
    for defect in [*ready.defects, *ready.skipped]:
        assert isinstance(defect, Defect)
        assert defect.field == "row" or defect.field.split(".")[0].split("[")[0] == name
