"""Typed, drift-tolerant models of the Neo API payloads the exporter reads."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import msgspec
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError


def _to_decimal(value: Any) -> Any:
    # JSON numbers arrive as float; str() gives the shortest repr that round-trips,
    # so 0.1 stays 0.1 instead of 0.1000000000000000055511151231257827.
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise ValueError("a boolean is not an amount")
    if isinstance(value, int | float | str):
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise ValueError(f"not a number: {value!r}") from None
        if not number.is_finite():
            raise ValueError("amount is not finite")
        if number < 0:
            raise ValueError("amount is negative")
        return number
    raise ValueError(f"not a number: {type(value).__name__}")


def _aware(value: Any) -> Any:
    # A timestamp without zone is read as UTC rather than as local time.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


Amount = Annotated[Decimal | None, BeforeValidator(_to_decimal)]
Count = Annotated[int, Field(ge=0)]
OptionalCount = Annotated[int | None, Field(ge=0)]


class _Tolerant(BaseModel):
    # Unknown fields are ignored: the API grows fields without notice.
    model_config = ConfigDict(extra="ignore", frozen=True)


# Bounds that keep every sum the ledger stores inside SQLite's 64-bit integers: a
# count or millisecond figure past 10**15 (31,000 years) or a run costing more than a
# million credits is a broken payload, rejected with its row rather than overflowing.
MAX_COUNT = 10**15
MAX_CREDITS = Decimal(10**6)

RowCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]


class ToolCall(msgspec.Struct, frozen=True, gc=False):
    """One entry of ``tool_call_history``; unknown keys (``timestamp``) are ignored.

    A ``duration_ms`` of null (or one that could not be read) is not reported yet: the
    call is left uncounted until its duration is; a missing one reads as 0."""

    index: int | None = None
    tool_name: str | None = None
    duration_ms: RowCount | None = 0


class TaskUsage(msgspec.Struct, frozen=True, gc=False):
    """Usage of a task (aggregated) or of one of its streams (``stream_id`` set).

    A msgspec struct, not a pydantic model: a window holds tens of thousands of rows
    with dozens of tool calls each, and msgspec decodes a page straight from its bytes
    into these in a fifth of the CPU json.loads takes, in a fraction of the memory.
    Decoded by ``decode_usage`` (lax like the rest: "5" and 5.0 read as 5); fields the
    exporter does not read are ignored, so their drift costs no row. A row this strict
    decoding refuses is read field by field instead (``exporter.decoding``), so that a
    bad value costs only itself.
    """

    task_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    model: str
    status: str
    created_at: datetime
    # A count that is null, missing or unreadable is not reported: see Observation.
    step_count: RowCount | None = None
    tool_calls: RowCount | None = None
    agent_triggers: RowCount | None = None
    stream_id: str | None = None
    stream_count: RowCount | None = None
    neo_credits: Decimal | None = None
    llm_cost: Decimal | None = None
    neo_cost: Decimal | None = None
    llm_time_ms: RowCount | None = None
    tool_time_ms: RowCount | None = None
    total_execution_ms: RowCount | None = None
    agent_breakdown: dict[str, RowCount] | None = None
    tool_call_history: list[ToolCall] | None = None

    def __post_init__(self) -> None:
        if self.created_at.tzinfo is None:
            msgspec.structs.force_setattr(self, "created_at", in_utc(self.created_at))
        for name in ("neo_credits", "llm_cost", "neo_cost"):
            amount = getattr(self, name)
            if amount is not None:
                try:
                    credit_amount(amount)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None


def in_utc(moment: datetime) -> datetime:
    """A timestamp without zone is read as UTC rather than as local time."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def credit_amount(amount: Decimal) -> Decimal:
    """``amount`` if it is one a run can cost (see MAX_CREDITS); ValueError if not."""
    if not (amount.is_finite() and 0 <= amount <= MAX_CREDITS):
        raise ValueError(f"not an amount from 0 to {MAX_CREDITS} credits")
    return amount


_USAGE = msgspec.json.Decoder(TaskUsage, strict=False)


def decode_usage(content: bytes | str) -> TaskUsage:
    """One usage row from its JSON text; msgspec.ValidationError names the bad field."""
    return _USAGE.decode(content)


def read_usage(raw: Any) -> TaskUsage:
    """One usage row from already decoded JSON (a dict), by the same rules."""
    return _USAGE.decode(msgspec.json.encode(raw))


def describe_decode_error(error: msgspec.ValidationError) -> str:
    """``field: problem``, like describe_validation_error; msgspec names the field and
    the expected type, never the payload's value."""
    message, _, where = str(error).partition(" - at `")
    where = where.rstrip("`").removeprefix("$").lstrip(".")
    return f"{where}: {message}" if where else message


class ErrorResponse(_Tolerant):
    error: str = ""
    code: str | None = None
    error_id: str | None = None
    kind: str | None = None
    message: str | None = None


class TaskInfo(_Tolerant):
    id: str
    status: str = "unknown"
    created_at: Annotated[datetime | None, BeforeValidator(_aware)] = None
    model: str | None = None
    title: str | None = None
    updated_at: Annotated[datetime | None, BeforeValidator(_aware)] = None


class TaskStreamSummary(_Tolerant):
    stream_id: str
    status: str = "unknown"
    created_at: Annotated[datetime, BeforeValidator(_aware)]
    completed_at: Annotated[datetime | None, BeforeValidator(_aware)] = None


class TaskDetails(_Tolerant):
    task: TaskInfo
    streams: list[TaskStreamSummary] | None = None


class MemberUsage(_Tolerant):
    """One entry of the summary's ``by_email`` (team admins only)."""

    email: str
    neo_credits: Amount = None
    tasks: OptionalCount = None


class UsageSummary(_Tolerant):
    total_neo_credits: Amount = None
    total_tasks: OptionalCount = None
    total_available_neo_credits: Amount = None
    total_issued_neo_credits: Amount = None
    total_neo_credits_post_reset: Amount = None
    last_credit_reset: Annotated[datetime | None, BeforeValidator(_aware)] = None
    neo_credits_expires_at: Annotated[datetime | None, BeforeValidator(_aware)] = None
    neo_credits_is_expired: bool | None = None
    by_email: list[Any] | None = None  # MemberUsage entries, validated one by one
    by_model: Any = None  # credits by model, in one of two shapes (reconcile.credits_by_model)


class CreditBalance(_Tolerant):
    available_credits: Amount = None
    issued_credits: Amount = None
    used_credits: Amount = None
    expires_at: Annotated[datetime | None, BeforeValidator(_aware)] = None
    is_expired: bool | None = None


class TeamRef(_Tolerant):
    id: str
    name: str | None = None


class UserProfile(_Tolerant):
    """GET /api/v1/user: who the credential belongs to (the ledger's identity)."""

    email: str | None = None
    team: TeamRef | None = None


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each bad field, without echoing the payload's values."""
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "row"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
