"""Typed, drift-tolerant models of the Neo API payloads the exporter reads."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from typing_extensions import TypedDict


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


class ToolCall(TypedDict, total=False):
    """One entry of ``tool_call_history``.

    A TypedDict, not a model: a window holds tens of thousands of runs with dozens of
    calls each, and validating plain dicts costs a tenth of building model instances.
    Unknown keys are ignored; ``timestamp`` is not read.
    """

    index: int | None
    tool_name: str | None
    duration_ms: Annotated[int, Field(ge=0)]


class TaskUsage(_Tolerant):
    """Usage of a task (aggregated) or of one of its streams (``stream_id`` set)."""

    task_id: Annotated[str, Field(min_length=1, max_length=256)]
    model: str
    status: str
    step_count: Count
    tool_calls: Count
    agent_triggers: Count
    created_at: Annotated[datetime, BeforeValidator(_aware)]
    stream_id: str | None = None
    stream_count: OptionalCount = None
    neo_credits: Amount = None
    llm_cost: Amount = None
    neo_cost: Amount = None
    is_byok: bool | None = None
    llm_time_ms: OptionalCount = None
    tool_time_ms: OptionalCount = None
    total_execution_ms: OptionalCount = None
    avg_step_latency_ms: OptionalCount = None
    agent_breakdown: dict[str, Count] | None = None
    tool_call_history: list[ToolCall] | None = None
    email: str | None = None
    task_title: str | None = None
    error_message: str | None = None

    def started_at(self) -> datetime:
        return _aware(self.created_at)  # type: ignore[no-any-return]


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


class CreditBalance(_Tolerant):
    available_credits: Amount = None
    issued_credits: Amount = None
    used_credits: Amount = None
    expires_at: Annotated[datetime | None, BeforeValidator(_aware)] = None
    is_expired: bool | None = None


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each bad field, without echoing the payload's values."""
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "row"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
