"""What one poll did, for its log line and the tests."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PollReport:
    """What one poll did, for the log line and the tests."""

    rows: int = 0
    unchanged: int = 0
    runs_new: int = 0
    runs_updated: int = 0
    invalid_rows: int = 0
    invalid_fields: int = 0  # values read as not reported, each costing only itself
    pages: int = 0
    task_requests: int = 0
    unconfirmed_rows: int = 0  # new rows taken for history until their task tells
    runs_confirmed: int = 0  # runs so taken that their task showed to be new after all
    runs_after_listing: int = 0  # new runs dated by the listing of their task that missed them
    full_listing: bool = True  # the whole lookback window was listed
    warnings: list[str] = field(default_factory=list)
