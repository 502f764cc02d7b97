"""Account balance and the opt-in team view, read from the simulated API over loopback."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.balance import BalanceReader, member_label
from exporter.client import NeoClient
from exporter.collector import UsageCollector
from exporter.ledger import Ledger, PollChanges
from exporter.simulator import DEMO_API_KEY, ManualClock, SimulatedApi, World
from exporter.snapshots import ACCOUNT_KEY, TEAM_KEY

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
SALT = bytes(range(16))


@pytest.fixture
def team_api() -> Iterator[SimulatedApi]:
    world = World(seed=7, clock=ManualClock(NOW), tasks_per_day=400, team=True)
    with SimulatedApi(world, role="admin") as api:
        yield api


@pytest.fixture
def client(team_api: SimulatedApi) -> Iterator[NeoClient]:
    with NeoClient(team_api.url, ("api_key", DEMO_API_KEY)) as opened:
        yield opened


def raw(api: SimulatedApi, path: str, **params: str) -> dict[str, object]:
    response = httpx.get(f"{api.url}{path}", params=params, headers={"X-Api-Key": DEMO_API_KEY})
    body: dict[str, object] = response.json()
    return body


def test_balance_comes_from_the_billing_api(team_api: SimulatedApi, client: NeoClient) -> None:
    meta, errors, _ = BalanceReader(client, lookback=86_400).read(NOW)
    assert errors == []
    balance = raw(team_api, "/api/v1/billing/credits")
    summary = raw(team_api, "/api/v1/usage/summary")
    account = json.loads(meta[ACCOUNT_KEY])
    assert account["available"] == pytest.approx(float(str(balance["available_credits"])))
    assert account["issued"] == pytest.approx(float(str(balance["issued_credits"])))
    assert account["used_since_reset"] == pytest.approx(
        float(str(summary["total_neo_credits_post_reset"]))
    )
    expires = datetime.fromisoformat(str(balance["expires_at"]).replace("Z", "+00:00"))
    assert account["expires_at"] == expires.timestamp()
    assert account["expired"] == 0.0


def test_team_view_is_pseudonymous_by_default(team_api: SimulatedApi, client: NeoClient) -> None:
    meta, *_ = BalanceReader(client, lookback=86_400, team_view=True, salt=SALT).read(NOW)
    members = json.loads(meta[TEAM_KEY])
    assert members
    assert all(re.fullmatch(r"member-[0-9a-f]{16}", label) for label in members)
    since = datetime.fromtimestamp(NOW.timestamp() - 86_400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    window = raw(team_api, "/api/v1/usage/summary", **{"from": since})
    by_email = window["by_email"]
    assert isinstance(by_email, list)
    assert sum(credits for credits, _ in members.values()) == pytest.approx(
        sum(float(e["neo_credits"]) for e in by_email)
    )
    assert sum(tasks for _, tasks in members.values()) == sum(e["tasks"] for e in by_email)


def test_emails_are_exported_only_when_enabled(client: NeoClient) -> None:
    reader = BalanceReader(client, lookback=86_400, team_view=True, export_emails=True, salt=SALT)
    members = json.loads(reader.read(NOW)[0][TEAM_KEY])
    assert all(label.endswith("@example.com") for label in members)


def test_pseudonyms_are_keyed_by_the_installation_salt() -> None:
    one = member_label("Ana@Example.com", export_emails=False, salt=SALT)
    assert one == member_label(" ana@example.com ", export_emails=False, salt=SALT)
    assert one != member_label("ana@example.com", export_emails=False, salt=b"another-salt")


def test_team_view_off_drops_stored_members(client: NeoClient) -> None:
    meta, *_ = BalanceReader(client, lookback=86_400, team_view=False).read(NOW)
    assert json.loads(meta[TEAM_KEY]) == {}


def test_no_member_series_or_address_when_team_view_is_off(tmp_path: Path) -> None:
    buckets = {
        "neo_tool_call_duration_seconds": [1.0],
        "neo_task_run_credits": [1.0],
        "neo_task_run_execution_seconds": [1.0],
    }
    ledger = Ledger(tmp_path / "state.db", buckets=buckets, max_label_values=10)
    stored = {"ana@example.com": [1.5, 2.0]}  # from a run that had EXPORT_EMAILS on
    ledger.commit(PollChanges(meta={TEAM_KEY: json.dumps(stored)}))

    def exposition(team_view: bool) -> str:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(
            UsageCollector(ledger, lookback=60, pinned=[], clock=lambda: NOW, team_view=team_view)
        )
        return generate_latest(registry).decode()

    assert 'neo_team_member_window_credits{member="ana@example.com"} 1.5' in exposition(True)
    off = exposition(False)
    assert "neo_team_member" not in off
    assert "@" not in off
    ledger.close()
