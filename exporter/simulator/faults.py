"""Fault injection for the simulated API: errors, rate limits, broken and drifting payloads."""

from __future__ import annotations

import json
import random
import threading
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from exporter.simulator.model import to_ms

# Documented nullable TaskUsage fields (seed: get-task-usage-by-id).
NULLABLE = (
    "agent_breakdown",
    "avg_step_latency_ms",
    "error_message",
    "llm_cost",
    "llm_time_ms",
    "neo_cost",
    "neo_credits",
    "task_title",
    "tool_breakdown",
    "tool_call_history",
    "tool_time_ms",
    "total_execution_ms",
)
WRONG_TYPES: tuple[tuple[str, Any], ...] = (
    ("step_count", "many"),
    ("tool_calls", "lots"),
    ("created_at", 1_700_000_000),
    ("neo_credits", "a few"),
    ("agent_triggers", [1]),
)
EXTRA = {"x_sim_future_field": {"nested": [1, 2, 3]}, "x_sim_flag": True}
# Values msgspec refuses, each in a field of the usage row the exporter does not read.
HOSTILE_UNREAD: tuple[tuple[str, str], ...] = (
    ("avg_step_latency_ms", "NaN"),
    ("x_sim_huge", "1e400"),
    ("x_sim_infinite", "-Infinity"),
    ("task_title", '"\\ud800 lone surrogate"'),
    ("tool_breakdown", "[" * 1000 + "]" * 1000),
)
UNKNOWN_STATUS = "quarantined"
GARBAGE = b"<html><body><h1>502 Bad Gateway</h1>upstream hiccup</body></html>"
BY_MODEL_SHAPES = ("nested", "flat", "omitted")


@dataclass(frozen=True)
class Failure:
    """An answer given instead of the real one."""

    status: int
    headers: dict[str, str]
    error: str
    code: str


def _stable_share(ident: object, one_in: int) -> bool:
    # The same rows are affected on every request, as a real data problem would be.
    return zlib.crc32(str(ident).encode()) % one_in == 0


@dataclass
class Faults:
    """Knobs a test turns at runtime; all off by default. Faults draw from their own RNG."""

    error_rate: float = 0.0
    latency: float = 0.0
    truncate_rate: float = 0.0
    garbage_rate: float = 0.0
    extra_fields: bool = False
    null_fields: bool = False
    unknown_status: bool = False
    wrong_type_rate: float = 0.0
    # Endpoint templates (such as "/api/v1/tasks/{id}") that answer with the given error
    # status until removed, as when one backend of the API is down (503) or refuses (404).
    down: dict[str, int] = field(default_factory=dict)
    # Paging of the usage lists, as an API we have never seen might page them:
    # page_cap serves at most that many rows a page whatever `limit` asks (0: no cap);
    # has_more is "truthful", "requested" (worked out from the `limit` asked for, not
    # the one served: false too early under a cap), "omitted" or "always" (true even on
    # the last page); total is "truthful" or "omitted".
    page_cap: int = 0
    has_more: str = "truthful"
    total: str = "truthful"
    # Rows with values msgspec refuses, as a careless server might send them, in fields
    # the exporter does not read, on every row of a stable share (NaN, 1e400, a lone
    # surrogate, an array nested 1,000 deep).
    hostile_values: bool = False
    # Unreadable or odd values in fields the exporter counts, on rows of a stable share
    # of runs while they are in progress: neo_credits NaN, the last tool call's
    # duration_ms -1 or a quarter millisecond over, llm_time_ms a quarter over. Every
    # value is readable once the run has ended.
    spoil_running: bool = False
    # Every tool call's index 0, as an API that numbers them per something else would.
    tool_index_zero: bool = False
    # The usage status served on the row of a run in progress: "running" as the
    # simulator's own vocabulary has it, or one of the documented statuses (the usage
    # enums have no in-progress value): "completed", or "final" for the status the run
    # will end with.
    running_status: str = "running"
    # In a team admin's view: teammates' tasks are private, their details answer 404
    # (their usage rows are listed all the same).
    private_details: bool = False
    # The usage summary (and the credit balance, which follows it) as the account was
    # summary_lag seconds ago: streams not listed by then count 0, the others as they were.
    summary_lag: float = 0.0
    # The shape of the summary's by_model: "nested" (model -> {"neo_credits", "tasks"}),
    # "flat" (model -> neo_credits) or "omitted" (no by_model key).
    summary_by_model: str = "nested"
    # A credit reset (a new billing period) at this moment: once the summary's moment has
    # reached it, total_neo_credits, total_neo_credits_post_reset and by_model count only
    # what each run spent after it (its credits then minus its credits at the reset; by_model
    # lists the models and tasks that spent after it) and last_credit_reset is this moment.
    # Other totals (tasks, steps, by_status, byok) stay all-time.
    summary_reset_at: datetime | None = None
    seed: int = 0
    _burst_left: int = field(default=0, repr=False)
    _burst_status: int = field(default=503, repr=False)
    _limit_left: int = field(default=0, repr=False)
    _retry_after: float = field(default=1.0, repr=False)
    _rng: random.Random = field(init=False, repr=False, compare=False)
    _lock: threading.Lock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self.summary_view(0)
        self.summary_shape({})

    def summary_view(self, now: int) -> tuple[int, int | None]:
        """The summary's moment (unix ms) and the credit reset it has seen, if any, at
        ``now`` (unix ms), as ``summary_lag`` and ``summary_reset_at`` set them."""
        if not 0 <= self.summary_lag < float("inf"):
            raise ValueError("summary_lag must be a finite number of seconds, 0 or more")
        at = now - round(self.summary_lag * 1000)
        reset = self.summary_reset_at
        reset_ms = to_ms(reset) if reset is not None else None
        return at, reset_ms if reset_ms is not None and reset_ms <= at else None

    def summary_shape(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The summary with ``by_model`` in the ``summary_by_model`` shape; not changed."""
        shape = self.summary_by_model
        if shape not in BY_MODEL_SHAPES:
            raise ValueError("summary_by_model must be nested, flat or omitted")
        if shape == "nested" or "by_model" not in summary:
            return summary
        out: dict[str, Any] = {}
        for name, value in summary.items():
            if name != "by_model":
                out[name] = value
            elif shape == "flat":
                out[name] = {model: v["neo_credits"] for model, v in value.items()}
        return out

    def burst(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` requests with ``status``."""
        with self._lock:
            self._burst_left, self._burst_status = n, status

    def rate_limit(self, n: int, retry_after: float = 1) -> None:
        """Answer the next ``n`` requests with 429 and a Retry-After header."""
        with self._lock:
            self._limit_left, self._retry_after = n, retry_after

    def chance(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def failure(self, template: str = "") -> Failure | None:
        """Whether this request (to the endpoint ``template``) fails before it reaches
        the API, and how."""
        with self._lock:
            status = self.down.get(template)
            if status is not None:
                return Failure(status, {}, "Injected endpoint outage", "internal")
            if self._burst_left > 0:
                self._burst_left -= 1
                return Failure(self._burst_status, {}, "Injected failure burst", "internal")
            if self._limit_left > 0:
                self._limit_left -= 1
                wait = self._retry_after
                text = str(int(wait)) if float(wait).is_integer() else str(wait)
                return Failure(429, {"Retry-After": text}, "Too many requests", "rate_limited")
            if self.error_rate > 0 and self._rng.random() < self.error_rate:
                status = self._rng.choice((500, 502, 503))
                return Failure(status, {}, "Injected server error", "internal")
        return None

    @property
    def touches_rows(self) -> bool:
        return (
            self.extra_fields
            or self.null_fields
            or self.unknown_status
            or (self.wrong_type_rate > 0)
            or self.tool_index_zero
            or self.running_status != "running"
            or self.hostile_values
            or self.spoil_running
        )

    def envelope(self, offset: int, asked: int, served: int, total: int) -> dict[str, Any]:
        """``has_more`` and ``total`` of a usage page as the paging knobs serve them:
        ``asked`` is the limit asked for, ``served`` the rows on the page."""
        out: dict[str, Any] = {}
        if self.has_more == "truthful":
            out["has_more"] = offset + served < total
        elif self.has_more == "requested":
            out["has_more"] = offset + asked < total
        elif self.has_more == "always":
            out["has_more"] = True
        elif self.has_more != "omitted":
            raise ValueError("has_more must be truthful, requested, omitted or always")
        if self.total == "truthful":
            out["total"] = total
        elif self.total != "omitted":
            raise ValueError("total must be truthful or omitted")
        return out

    def object(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A non-row object (task info, summary, envelope) as the faults would serve it."""
        return {**obj, **EXTRA} if self.extra_fields else obj

    def row(self, row: dict[str, Any], final: str = "completed") -> dict[str, Any]:
        """A usage row as the faults would serve it; ``row`` is not changed. ``final``:
        the status its run ends with (for ``running_status`` "final")."""
        out = dict(row)
        ident = row.get("stream_id") or row.get("task_id")
        if self.extra_fields:
            out.update(EXTRA)
        if self.null_fields and _stable_share(ident, 3):
            for name in NULLABLE:
                if name in out:
                    out[name] = None
        if self.unknown_status and _stable_share(f"status:{ident}", 5):
            out["status"] = UNKNOWN_STATUS
        if self.chance(self.wrong_type_rate):
            with self._lock:
                name, value = self._rng.choice(WRONG_TYPES)
            out[name] = value
        if self.tool_index_zero and out.get("tool_call_history"):
            out["tool_call_history"] = [{**c, "index": 0} for c in out["tool_call_history"]]
        if out.get("status") == "running" and self.running_status != "running":
            out["status"] = final if self.running_status == "final" else self.running_status
        return out

    @staticmethod
    def spoils_running(ident: str) -> bool:
        """Whether ``spoil_running`` spoils the counted fields of this run (stream or
        task ID) while it is in progress: its credits, and its last tool call's duration
        when ``spoils_last_call``."""
        return _stable_share(f"hostile-running:{ident}", 2)

    @staticmethod
    def spoils_last_call(last: int) -> bool:
        """Whether a spoiled row's last tool call (at position ``last``) reads -1."""
        return last % 2 == 1

    def text(self, row: dict[str, Any], running: bool) -> str:
        """A usage row's JSON text, with hostile values where ``hostile_values`` puts
        them; ``running``: whether its run is still in progress."""
        if not (self.hostile_values or self.spoil_running):
            return json.dumps(row, separators=(",", ":"), default=float)
        ident = row.get("stream_id") or row.get("task_id")
        out = dict(row)
        raw: dict[str, str] = {}
        if self.hostile_values and _stable_share(f"hostile:{ident}", 3):
            kind = zlib.crc32(f"kind:{ident}".encode()) % len(HOSTILE_UNREAD)
            name, text = HOSTILE_UNREAD[kind]
            raw[name] = text
        if self.spoil_running and running and self.spoils_running(str(ident)):
            calls = out.get("tool_call_history") or []
            if calls:
                last = len(calls) - 1
                calls = [dict(c) for c in calls]
                true = calls[last]["duration_ms"]
                calls[last]["duration_ms"] = "__HOSTILE_DURATION__"
                # -1 is unreadable; a quarter of a millisecond more rounds back to it.
                raw["__HOSTILE_DURATION__"] = "-1" if self.spoils_last_call(last) else f"{true}.25"
                out["tool_call_history"] = calls
            if out.get("llm_time_ms") is not None:
                out["llm_time_ms"] = float(out["llm_time_ms"]) + 0.25
            if out.get("neo_credits") is not None:
                out["neo_credits"] = "__HOSTILE_CREDITS__"
                raw["__HOSTILE_CREDITS__"] = "NaN"
        text = json.dumps(out, separators=(",", ":"), default=float)
        extra = "".join(f',"{n}":{v}' for n, v in raw.items() if not n.startswith("__"))
        for name, value in raw.items():
            if name.startswith("__"):
                text = text.replace(f'"{name}"', value)
        return text[:-1] + extra + "}"

    def body(self, payload: bytes) -> bytes:
        """The bytes on the wire: sometimes cut in half, sometimes not JSON at all."""
        if self.chance(self.garbage_rate):
            return GARBAGE
        if self.chance(self.truncate_rate):
            return payload[: len(payload) // 2]
        return payload
