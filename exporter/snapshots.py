"""Figures that travel from the poller to the collector through the ledger's meta, as
typed snapshots: one definition for the writer and the reader."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields
from typing import Any

from exporter.accounting import to_nano
from exporter.models import TaskUsage

PINNED_PREFIX = "pinned:"


@dataclass(frozen=True)
class PinnedFigures:
    """A pinned task's usage over all its runs, as last read by ID (``TASK_IDS``).

    A figure the API did not report (or that could not be read) keeps the one last
    reported; None until one is."""

    credits: int | None  # nano-credits
    steps: int | None
    tool_calls: int | None
    runs: int | None
    model: str
    status: str

    @staticmethod
    def key(task_id: str) -> str:
        return PINNED_PREFIX + task_id

    @classmethod
    def from_usage(
        cls, usage: TaskUsage, before: PinnedFigures | None, unreadable: Collection[str] = ()
    ) -> PinnedFigures:
        """``unreadable``: the usage's fields that could not be read (model and status
        read "unknown" then): they keep the figures last reported too."""
        figures: dict[str, Any] = {
            "credits": None if usage.neo_credits is None else to_nano(usage.neo_credits),
            "steps": usage.step_count,
            "tool_calls": usage.tool_calls,
            "runs": usage.stream_count if usage.stream_count is not None else 1,
            "model": None if "model" in unreadable else usage.model,
            "status": None if "status" in unreadable else usage.status,
        }
        if before is not None:
            figures = {k: getattr(before, k) if v is None else v for k, v in figures.items()}
        figures["model"] = figures["model"] or "unknown"
        figures["status"] = figures["status"] or "unknown"
        return cls(**figures)

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def read(cls, text: str | None) -> PinnedFigures | None:
        """The snapshot stored as ``text``; None for none, or for one that does not read
        (written by another version: the next poll writes it anew)."""
        if text is None:
            return None
        try:
            stored = json.loads(text)
            return cls(**{f.name: stored.get(f.name) for f in fields(cls)})
        except (ValueError, TypeError, AttributeError):
            return None


ACCOUNT_KEY = "account"
TEAM_KEY = "team"


@dataclass(frozen=True)
class BalanceFigures:
    """The account's balance, as last read (summary and billing endpoints); a figure the
    API did not give is None and is not served."""

    available: float | None = None
    issued: float | None = None
    used_since_reset: float | None = None
    expires_at: float | None = None  # unix time
    last_reset: float | None = None  # unix time
    expired: float | None = None  # 1 or 0

    def dump(self) -> str | None:
        """The stored text; None when no figure is known (nothing is written)."""
        present = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(present, sort_keys=True) if present else None

    @classmethod
    def read(cls, text: str | None) -> BalanceFigures:
        if not text:
            return cls()
        try:
            stored = json.loads(text)
            return cls(**{f.name: stored.get(f.name) for f in fields(cls)})
        except (ValueError, TypeError, AttributeError):
            return cls()


@dataclass(frozen=True)
class TeamFigures:
    """Spend by team member over the lookback window (team admins, opt-in): member label
    -> (credits, tasks)."""

    members: dict[str, tuple[float, float]]

    def dump(self) -> str:
        return json.dumps({m: list(f) for m, f in self.members.items()}, sort_keys=True)

    @classmethod
    def read(cls, text: str | None) -> TeamFigures | None:
        if text is None:
            return None
        try:
            stored = json.loads(text)
            return cls({str(m): (float(f[0]), float(f[1])) for m, f in stored.items()})
        except (ValueError, TypeError, AttributeError, IndexError, KeyError):
            return None
