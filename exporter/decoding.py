"""Reading usage pages so that a bad value costs only itself.

A usage page decodes whole, straight from its bytes, in one msgspec pass: the usual
case, and the fast one. When that fails, the page is taken apart without being parsed:
a scanner that knows only strings and brackets finds the page's members and its rows'
bounds, whatever lies between them (``NaN``, ``1e400``, a lone surrogate, an array
nested a thousand deep, a wrong type). Each row is then decoded on its own, and a row
that still fails is read field by field:

- a field that cannot be read costs that field: it reads as not reported (the value
  counted so far stands until a readable one comes), and is reported as a ``Defect``;
- in ``tool_call_history`` and ``agent_breakdown`` an entry that cannot be read costs
  that entry; a tool call whose duration cannot be read is left uncounted until it can;
- a row without a readable ``task_id`` or ``created_at`` cannot be placed: it alone is
  skipped;
- fields the exporter does not read are never decoded, so nothing in them costs a thing.

Only a page whose structure cannot be found (cut short, not JSON, no ``data`` array)
fails as a whole: asking again may mend it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import msgspec

from exporter.models import (
    MAX_COUNT,
    RowCount,
    TaskUsage,
    ToolCall,
    credit_amount,
    decode_usage,
    in_utc,
)

# What any decoder may raise on a value it cannot take.
_UNREADABLE = (msgspec.DecodeError, msgspec.ValidationError, RecursionError, ValueError, TypeError)

# A JSON string (escapes and all), an unterminated quote, or a structural character.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|"|[\[\]{},:]', re.DOTALL)
_SPACE = b" \t\r\n"


class Unreadable(ValueError):
    """The structure of a JSON text could not be found."""


@dataclass(frozen=True, slots=True)
class Defect:
    """A value of a row that could not be read, and what was done without it."""

    task_id: str | None
    stream_id: str | None
    field: str  # "llm_time_ms", "tool_call_history[3].duration_ms", or "row"
    reason: str


@dataclass(slots=True)
class UsagePage:
    """One page of a usage list: its readable rows, and what it could not read."""

    rows: list[TaskUsage]
    size: int  # elements of ``data``, readable or not: what the offset moves by
    has_more: bool | None = None
    total: int | None = None
    skipped: list[Defect] = field(default_factory=list)  # rows that cannot be placed
    defects: list[Defect] = field(default_factory=list)  # fields read as not reported
    digest: int = 0  # of the page's bytes: a page served twice is the same page


class _Page(msgspec.Struct, gc=False):
    data: list[TaskUsage]
    has_more: bool | None = None
    total: int | None = None


_PAGE = msgspec.json.Decoder(_Page, strict=False)


def read_page(content: bytes) -> UsagePage:
    """A usage list page; raises ``Unreadable`` only when its structure is lost."""
    try:
        page = _PAGE.decode(content)
    except _UNREADABLE:
        read = _read_page_in_parts(content)
    else:
        total = page.total if page.total is not None and page.total >= 0 else None
        read = UsagePage(page.data, len(page.data), page.has_more, total)
    read.digest = hash(content)
    return read


def read_one_row(content: bytes) -> tuple[TaskUsage, list[Defect]]:
    """A usage row that is a whole answer (``/usage/tasks/{id}``); raises ``Unreadable``
    (so the answer is asked again) when it cannot be placed."""
    row, defects = read_row(content)
    if row is None:
        raise Unreadable(defects[0].reason if defects else "not a usage row")
    return row, defects


def read_row(content: bytes) -> tuple[TaskUsage | None, list[Defect]]:
    """One usage row from its JSON text: the row (None if it cannot be placed) and the
    defects found on the way."""
    try:
        return decode_usage(content), []
    except _UNREADABLE:
        return _read_row_in_parts(content)


class _RawPage(msgspec.Struct, gc=False):
    data: list[msgspec.Raw]
    has_more: msgspec.Raw = msgspec.Raw(b"null")
    total: msgspec.Raw = msgspec.Raw(b"null")


_RAW_PAGE = msgspec.json.Decoder(_RawPage)


def _read_page_in_parts(content: bytes) -> UsagePage:
    try:  # JSON that msgspec can read (a wrong type, a -1): split in C
        raw = _RAW_PAGE.decode(content)
        rows: list[bytes] = [bytes(r) for r in raw.data]
        has_more, total = bytes(raw.has_more), bytes(raw.total)
    except _UNREADABLE:  # NaN, 1e400, a lone surrogate, deep nesting: split by the scanner
        members = object_members(content, 0, len(content))
        if "data" not in members:
            raise Unreadable("no data array") from None
        rows = [content[a:b] for a, b in array_elements(content, *members["data"])]
        has_more, total = (
            content[slice(*members[n])] if n in members else b"null" for n in ("has_more", "total")
        )
    page = UsagePage([], len(rows), _scalar(has_more, _BOOL), _scalar(total, _TOTAL))
    for text in rows:
        row, defects = read_row(text)
        page.defects += [d for d in defects if d.field != "row"]
        page.skipped += [d for d in defects if d.field == "row"]
        if row is not None:
            page.rows.append(row)
    return page


# Lax, as the fast path reads them ("1", "false").
_BOOL = msgspec.json.Decoder(bool | None, strict=False)
_TOTAL = msgspec.json.Decoder(int | None, strict=False)


def _scalar(text: bytes, decoder: Any) -> Any:
    try:
        value = decoder.decode(text)
    except _UNREADABLE:
        return None
    return value if not isinstance(value, int) or isinstance(value, bool) or value >= 0 else None


# -- one row, field by field ---------------------------------------------------------


def _ms(value: int | float) -> int:
    """Milliseconds: a fraction is rounded to the nearest millisecond (ties to even)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        value = round(value)
    if not 0 <= value <= MAX_COUNT:
        raise ValueError(f"not a count from 0 to {MAX_COUNT}")
    return value


def _text(value: str) -> str:
    return value


def _reader(kind: Any, check: Callable[[Any], Any]) -> Callable[[bytes], Any]:
    decoder = msgspec.json.Decoder(kind | None, strict=False)

    def read(text: bytes) -> Any:
        value = decoder.decode(text)
        return None if value is None else check(value)

    return read


_IDENT = msgspec.json.Decoder(
    Annotated[str, msgspec.Meta(min_length=1, max_length=256)], strict=False
)
_WHEN = _reader(datetime, in_utc)
_COUNT = msgspec.json.Decoder(RowCount | None, strict=False).decode  # bounds of the model
_CALL_DURATION = _reader(int | float, _ms)
# Every field of TaskUsage the exporter reads, and how one is read alone.
_FIELDS: dict[str, Callable[[bytes], Any]] = {
    "stream_id": _reader(str, _text),
    "model": _reader(str, _text),
    "status": _reader(str, _text),
    "step_count": _COUNT,
    "tool_calls": _COUNT,
    "agent_triggers": _COUNT,
    "stream_count": _COUNT,
    "neo_credits": _reader(Decimal, credit_amount),
    "llm_cost": _reader(Decimal, credit_amount),
    "neo_cost": _reader(Decimal, credit_amount),
    "llm_time_ms": _reader(int | float, _ms),
    "tool_time_ms": _reader(int | float, _ms),
    "total_execution_ms": _reader(int | float, _ms),
}


def _reason(error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return "nested too deep"
    text = str(error).partition(" - at `")[0]
    return text[:200] or type(error).__name__


_ROW_FIELDS = ("task_id", "created_at", *_FIELDS, "agent_breakdown", "tool_call_history")
_NULL = msgspec.Raw(b"null")
# A row, a tool call and an agent breakdown split into their members' JSON text in C,
# where the text is JSON that msgspec reads; the scanner splits the rest.
_RawRow = msgspec.defstruct("_RawRow", [(n, msgspec.Raw, _NULL) for n in _ROW_FIELDS])
_RAW_ROW = msgspec.json.Decoder(_RawRow)
_RawCall = msgspec.defstruct(
    "_RawCall", [(n, msgspec.Raw, _NULL) for n in ("index", "tool_name", "duration_ms")]
)
_RAW_CALL = msgspec.json.Decoder(_RawCall)
_RAW_AGENTS = msgspec.json.Decoder(dict[str, msgspec.Raw] | None)
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw] | None)
_CALLS = msgspec.json.Decoder(list[ToolCall] | None, strict=False)
_AGENTS = msgspec.json.Decoder(dict[str, RowCount] | None, strict=False)


def _members(text: bytes, names: Iterable[str], split: Any) -> dict[str, bytes]:
    """The members of the JSON object ``text`` named ``names``, as their own text:
    split in C by ``split`` (a decoder into Raw fields) where msgspec reads the text,
    by the scanner where it does not. Raises Unreadable for what is not an object."""
    try:
        raw = split.decode(text)
    except _UNREADABLE:
        spans = object_members(text, 0, len(text))
        return {n: text[spans[n][0] : spans[n][1]] for n in names if n in spans}
    return {n: bytes(getattr(raw, n)) for n in names if getattr(raw, n) is not _NULL}


def _read_row_in_parts(content: bytes) -> tuple[TaskUsage | None, list[Defect]]:
    try:
        members = _members(content, _ROW_FIELDS, _RAW_ROW)
    except Unreadable as exc:
        return None, [Defect(None, None, "row", f"not an object: {exc}")]
    task_id = _optional(members.get("task_id"), _IDENT.decode)
    stream_id = _optional(members.get("stream_id"), _FIELDS["stream_id"])
    if task_id is None:
        return None, [Defect(None, stream_id, "row", "task_id: missing or not readable")]
    found: dict[str, Any] = {"task_id": task_id, "stream_id": stream_id}
    defects: list[Defect] = []

    def defect(name: str, reason: str) -> None:
        defects.append(Defect(task_id, stream_id, name, reason))

    try:
        created = _WHEN(members.get("created_at", b"null"))
    except _UNREADABLE as exc:
        return None, [Defect(task_id, stream_id, "row", f"created_at: {_reason(exc)}")]
    if created is None:
        return None, [Defect(task_id, stream_id, "row", "created_at: missing")]
    found["created_at"] = created
    for name, read in _FIELDS.items():
        text = members.get(name)
        if text is None or name == "stream_id":
            continue
        try:
            found[name] = read(text)
        except _UNREADABLE as exc:
            defect(name, _reason(exc))
    if found.get("model") is None:
        found["model"] = "unknown"
    if found.get("status") is None:
        found["status"] = "unknown"  # not a terminal status: the run is not ended by it
    if "agent_breakdown" in members:
        found["agent_breakdown"] = _agents(members["agent_breakdown"], defect)
    if "tool_call_history" in members:
        found["tool_call_history"] = _calls(members["tool_call_history"], defect)
    return TaskUsage(**found), defects


def _optional(text: bytes | None, read: Callable[[bytes], Any]) -> Any:
    try:
        return read(b"null" if text is None else text)
    except _UNREADABLE:
        return None


Defects = Callable[[str, str], None]


def _entries(text: bytes, name: str, defect: Defects) -> Any:
    """The entries of ``agent_breakdown`` (name -> text) or ``tool_call_history``
    (texts): split in C where msgspec reads the text, by the scanner where it does not;
    None for a value of another shape (a defect)."""
    agents = name == "agent_breakdown"
    try:
        raw: Any = (_RAW_AGENTS if agents else _RAW_LIST).decode(text)
    except _UNREADABLE:
        try:
            if agents:
                return {k: text[a:b] for k, (a, b) in object_members(text, 0, len(text)).items()}
            return [text[a:b] for a, b in array_elements(text, 0, len(text))]
        except Unreadable as exc:
            defect(name, str(exc))
            return None
    if raw is None:
        return None
    return {k: bytes(v) for k, v in raw.items()} if agents else [bytes(e) for e in raw]


def _agents(text: bytes, defect: Defects) -> dict[str, int] | None:
    try:
        return _AGENTS.decode(text)  # the usual case: all of it reads
    except _UNREADABLE:
        entries: dict[str, bytes] | None = _entries(text, "agent_breakdown", defect)
    if entries is None:
        return None
    agents: dict[str, int] = {}
    for name, value in entries.items():
        try:
            count = _COUNT(value)
        except _UNREADABLE as exc:
            defect(f"agent_breakdown.{name}", _reason(exc))
            continue
        if count is not None:
            agents[name] = count
    return agents


def _calls(text: bytes, defect: Defects) -> list[ToolCall] | None:
    try:
        return _CALLS.decode(text)  # the usual case: all of it reads
    except _UNREADABLE:
        elements: list[bytes] | None = _entries(text, "tool_call_history", defect)
    if elements is None:
        return None
    calls: list[ToolCall] = []
    for position, element in enumerate(elements):
        calls.append(_call(element, f"tool_call_history[{position}]", defect))
    return calls


_CALL = msgspec.json.Decoder(ToolCall, strict=False)
_CALL_FIELDS = ("index", "tool_name", "duration_ms")


def _call(text: bytes, where: str, defect: Defects) -> ToolCall:
    try:
        return _CALL.decode(text)
    except _UNREADABLE:
        pass
    try:
        members = _members(text, _CALL_FIELDS, _RAW_CALL)
    except Unreadable as exc:
        # Its place is kept: the calls after it keep their positions.
        defect(where, f"not an object: {exc}")
        return ToolCall(index=None, tool_name=None, duration_ms=None)
    index: int | None = None
    if "index" in members:
        try:
            index = _COUNT(members["index"])
        except _UNREADABLE as exc:
            defect(f"{where}.index", _reason(exc))
    name = _optional(members.get("tool_name"), _FIELDS["model"])
    if name is None and members.get("tool_name", b"null") != b"null":
        defect(f"{where}.tool_name", "not a string")
    duration: int | None = 0
    if "duration_ms" in members:
        try:
            duration = _CALL_DURATION(members["duration_ms"])
        except _UNREADABLE as exc:
            defect(f"{where}.duration_ms", _reason(exc))
            duration = None
    return ToolCall(index=index, tool_name=name, duration_ms=duration)


# -- the scanner -----------------------------------------------------------------------


def _skip_space(text: bytes, pos: int, end: int) -> int:
    while pos < end and text[pos] in _SPACE:
        pos += 1
    return pos


def _parts(text: bytes, start: int, end: int, opener: int) -> list[tuple[int, int]]:
    """The spans of the top-level parts of the array or object that fills
    ``text[start:end]``: an array's elements, an object's members (key and value).
    Only strings and brackets are looked at: what lies between them is the parts'."""
    pos = _skip_space(text, start, end)
    if pos >= end or text[pos] != opener:
        raise Unreadable("expected " + ("an object" if opener == 0x7B else "an array"))
    closer = 0x7D if opener == 0x7B else 0x5D
    depth = 0
    parts: list[tuple[int, int]] = []
    begin = pos + 1
    for match in _TOKENS.finditer(text, pos, end):
        first = text[match.start()]
        if first == 0x22:  # a string, skipped whole
            if match.end() - match.start() == 1:
                raise Unreadable("a string is not terminated")
            continue
        if first in (0x5B, 0x7B):
            depth += 1
        elif first in (0x5D, 0x7D):
            depth -= 1
            if depth == 0:
                if first != closer:
                    raise Unreadable("brackets do not match")
                if _skip_space(text, match.end(), end) != end:
                    raise Unreadable("text after the end")
                if _skip_space(text, begin, match.start()) < match.start():
                    parts.append((begin, match.start()))
                elif parts:
                    raise Unreadable("a trailing comma")
                return parts
        elif first == 0x2C and depth == 1:
            if _skip_space(text, begin, match.start()) == match.start():
                raise Unreadable("an empty element")  # [a,,b] would move offsets wrongly
            parts.append((begin, match.start()))
            begin = match.end()
    raise Unreadable("not terminated")


def array_elements(text: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """The spans of the elements of the JSON array in ``text[start:end]``."""
    return _parts(text, start, end, 0x5B)


_KEY = re.compile(rb'\s*("[^"\\]*(?:\\.[^"\\]*)*")\s*:', re.DOTALL)
_KEYS = msgspec.json.Decoder(str)


def object_members(text: bytes, start: int, end: int) -> dict[str, tuple[int, int]]:
    """The members of the JSON object in ``text[start:end]``: name -> value span. A
    member whose name cannot be read is left out; of repeated names, the last counts."""
    members: dict[str, tuple[int, int]] = {}
    for first, last in _parts(text, start, end, 0x7B):
        key = _KEY.match(text, first, last)
        if key is None:
            raise Unreadable("a member without a name")
        try:
            name = _KEYS.decode(key.group(1))
        except _UNREADABLE:
            continue
        members[name] = (key.end(), last)
    return members
