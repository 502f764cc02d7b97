"""Ledger identity: the API and account a ledger counts, and the refusal to mix them.

A ledger's totals are one account's usage as one API reports it. Served for another,
they would be wrong from the first scrape on, and the runs of the old account would
never be counted again for the new one. So the ledger records what it counts, in its
meta table, and the exporter refuses to count anything else into it:

- the API base URL, checked at start (no request needed);
- the account behind the credential (``team <id>`` for a team's key, ``user <email>``
  for a solo user's), as ``GET /api/v1/user`` tells it: read before the first poll
  counts anything, and again after a rotated key was read.

A ledger that records neither (written by an older version) adopts what it meets first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import structlog

from exporter.client import NeoClient
from exporter.errors import NEW_LEDGER_FLAG, ApiStatusError, IdentityError
from exporter.ledger import Ledger, LedgerReader, PollChanges

log = structlog.get_logger(__name__)

API_URL_KEY = "identity_api_url"
ACCOUNT_KEY = "identity_account"


def account_of(client: NeoClient) -> str | None:
    """The account the client's credential belongs to; None where the API does not say
    (an API without ``/api/v1/user``)."""
    try:
        user = client.get_user()
    except ApiStatusError as exc:
        if exc.not_offered:
            return None
        raise
    if user.team is not None:
        return f"team {user.team.id}"
    return f"user {user.email}" if user.email else None


def url_mismatch(meta: Mapping[str, str], path: Path, api_url: str) -> str | None:
    """What differs, if the ledger whose *meta* this is counts another API."""
    stored = meta.get(API_URL_KEY)
    if stored is None or stored == api_url:
        return None
    return f"the ledger {path} counts the API {stored}, but the settings point at {api_url}"


def account_mismatch(meta: Mapping[str, str], path: Path, account: str | None) -> str | None:
    """What differs, if the ledger whose *meta* this is counts another account."""
    stored = meta.get(ACCOUNT_KEY)
    if stored is None or account is None or stored == account:
        return None
    return f"the ledger {path} counts the account {stored}, but the credential is {account}'s"


def refusal(problem: str) -> IdentityError:
    """The daemon's refusal to count into another API's or account's ledger."""
    return IdentityError(
        f"{problem}: its totals would be served as the other's and its runs never counted "
        "for it. Point state_path at the ledger of what the settings point at, or start "
        f"once with {NEW_LEDGER_FLAG} to set this ledger aside (renamed, kept) and count "
        "from zero (Prometheus sees a counter reset)"
    )


def set_aside(path: Path, now: datetime) -> Path:
    """Rename the ledger (and its WAL, if any) to ``<name>.<UTC time>``: kept, not used."""
    kept = path.with_name(f"{path.name}.{now.astimezone(UTC):%Y%m%dT%H%M%SZ}")
    for suffix in ("-wal", "-shm", ""):  # the database last: never a WAL without it
        with_suffix = Path(f"{path}{suffix}")
        if with_suffix.exists():
            os.replace(with_suffix, f"{kept}{suffix}")
    log.warning("ledger_set_aside", state_path=str(path), kept_as=str(kept))
    return kept


def new_ledger_if_other(path: Path, client: NeoClient, api_url: str, now: datetime) -> None:
    """``--new-ledger``: set the ledger at *path* aside if it counts another API or account.

    A ledger of the same API and account is kept: the flag left in a service's arguments
    must not start from zero at every restart. Raises ApiError if the account cannot be
    read (the flag then cannot tell, and does nothing)."""
    meta = LedgerReader(path).meta()
    if not meta:
        return
    problem = url_mismatch(meta, path, api_url)
    if problem is None and ACCOUNT_KEY in meta:
        problem = account_mismatch(meta, path, account_of(client))
    if problem is None:
        log.info("new_ledger_not_needed", state_path=str(path))
        return
    set_aside(path, now)


class IdentityCheck:
    """Holds a ledger to the API and account it counts (see the module docstring)."""

    def __init__(self, ledger: Ledger, client: NeoClient, api_url: str) -> None:
        self.ledger = ledger
        self.client = client
        self.api_url = api_url
        self.confirmed = False

    def check_url(self) -> None:
        """At start: refuse another API's ledger, adopt the URL if none is recorded.

        The write is made on every start: it is also the proof that the file can be
        written (read-only files are refused here, not at the first poll)."""
        problem = url_mismatch(self.ledger.meta, self.ledger.path, self.api_url)
        if problem is not None:
            raise refusal(problem)
        self.ledger.commit(PollChanges(meta={API_URL_KEY: self.api_url}))

    def check_account(self) -> None:
        """Before a poll counts anything: the credential's account is the ledger's."""
        if self.confirmed:
            return
        account = account_of(self.client)
        problem = account_mismatch(self.ledger.meta, self.ledger.path, account)
        if problem is not None:
            raise refusal(problem)
        if account is not None and ACCOUNT_KEY not in self.ledger.meta:
            self.ledger.commit(PollChanges(meta={ACCOUNT_KEY: account}))
            log.info("ledger_identity_recorded", api_url=self.api_url)
        self.confirmed = True
