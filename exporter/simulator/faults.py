"""Fault injection for the simulated API: errors, rate limits, broken and drifting payloads."""

from __future__ import annotations

import random
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any

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
UNKNOWN_STATUS = "quarantined"
GARBAGE = b"<html><body><h1>502 Bad Gateway</h1>upstream hiccup</body></html>"


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
        )

    def object(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A non-row object (task info, summary, envelope) as the faults would serve it."""
        return {**obj, **EXTRA} if self.extra_fields else obj

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A usage row as the faults would serve it; ``row`` is not changed."""
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
        return out

    def body(self, payload: bytes) -> bytes:
        """The bytes on the wire: sometimes cut in half, sometimes not JSON at all."""
        if self.chance(self.garbage_rate):
            return GARBAGE
        if self.chance(self.truncate_rate):
            return payload[: len(payload) // 2]
        return payload
