"""Account balance and the opt-in team view: gauges read from the summary and billing APIs."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

import structlog
from pydantic import ValidationError

from exporter.client import NeoClient
from exporter.errors import ApiError, ApiStatusError
from exporter.models import MemberUsage, UsageSummary, describe_validation_error
from exporter.snapshots import ACCOUNT_KEY, TEAM_KEY, BalanceFigures, TeamFigures

log = structlog.get_logger(__name__)


def member_label(email: str, *, export_emails: bool, salt: bytes) -> str:
    """The ``member`` label: the address itself only when explicitly enabled.

    Otherwise a stable pseudonym, so that a dashboard can still tell members apart
    without personal data leaving the exporter. The hash is keyed with a secret of
    this installation (kept in the ledger): without it, guessing likely addresses
    and hashing them does not reveal who a pseudonym is.
    """
    address = email.strip().lower()
    if export_emails:
        return address[:120]
    digest = hashlib.blake2b(address.encode(), digest_size=8, key=salt).hexdigest()
    return f"member-{digest}"


def _number(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _stamp(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


class AccountRead(NamedTuple):
    """What one read of the account found: meta entries to commit with the poll, the
    errors met, and the all-time usage summary (for reconciliation), if it answered."""

    meta: dict[str, str]
    errors: list[ApiError]
    summary: UsageSummary | None


class BalanceReader:
    """Reads balance (and per-member spend) once per poll; failures keep the last values."""

    def __init__(
        self,
        client: NeoClient,
        *,
        lookback: float,
        team_view: bool = False,
        export_emails: bool = False,
        salt: bytes = b"",
        reconcile: bool = True,
    ) -> None:
        self.client = client
        self.salt = salt
        self.lookback = lookback
        self.team_view = team_view
        self.export_emails = export_emails
        self.reconcile = reconcile  # the all-time summary is wanted too
        self._billing_supported = True
        self.requests = 0

    def read(self, now: datetime) -> AccountRead:
        """The balance (and the team's spend), and the all-time summary: one request
        for both, but in the team view, whose figures are the window's."""
        account: dict[str, float | None] = {}
        errors: list[ApiError] = []
        meta: dict[str, str] = {}
        whole: UsageSummary | None = None
        try:
            self.requests += 1
            # Only the team view needs window figures; the balance needs no window.
            window = now - timedelta(seconds=self.lookback) if self.team_view else None
            summary = self.client.get_summary(since=window)
            if window is None:
                whole = summary
            elif self.reconcile:
                self.requests += 1
                whole = self.client.get_summary()
        except ApiError as exc:
            errors.append(exc)
        else:
            account.update(
                available=_number(summary.total_available_neo_credits),
                issued=_number(summary.total_issued_neo_credits),
                used_since_reset=_number(summary.total_neo_credits_post_reset),
                expires_at=_stamp(summary.neo_credits_expires_at),
                last_reset=_stamp(summary.last_credit_reset),
                expired=None
                if summary.neo_credits_is_expired is None
                else float(summary.neo_credits_is_expired),
            )
            # Off, the stored member figures (and any e-mail in them) are dropped.
            members = self._members(summary.by_email) if self.team_view else {}
            meta[TEAM_KEY] = TeamFigures(members).dump()
        if self._billing_supported:
            try:
                self.requests += 1
                balance = self.client.get_credits()
            except ApiStatusError as exc:
                if exc.not_offered:
                    self._billing_supported = False  # not offered to this key: summary only
                    log.info("billing_credits_unavailable", status=exc.status)
                else:
                    errors.append(exc)
            except ApiError as exc:
                errors.append(exc)
            else:
                # The billing endpoint is the documented source of the balance; prefer it.
                for key, value in (
                    ("available", _number(balance.available_credits)),
                    ("issued", _number(balance.issued_credits)),
                    ("expires_at", _stamp(balance.expires_at)),
                    ("expired", None if balance.is_expired is None else float(balance.is_expired)),
                ):
                    if value is not None:
                        account[key] = value
        text = BalanceFigures(**account).dump()
        if text is not None:
            meta[ACCOUNT_KEY] = text
        return AccountRead(meta, errors, whole)

    def _members(self, entries: list[Any] | None) -> dict[str, tuple[float, float]]:
        members: dict[str, tuple[float, float]] = {}
        for raw in entries or ():
            try:
                entry = MemberUsage.model_validate(raw)
            except ValidationError as exc:
                log.warning("member_row_skipped", reason=describe_validation_error(exc))
                continue
            label = member_label(entry.email, export_emails=self.export_emails, salt=self.salt)
            credits, tasks = members.get(label, (0.0, 0.0))
            members[label] = (
                credits + float(entry.neo_credits or 0),
                tasks + float(entry.tasks or 0),
            )
        return members
