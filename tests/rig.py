"""The shared test rig: a simulated world, its API over loopback, and an exporter's
poller with its ledger; with the helpers that poll it and compare it with ground truth."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from exporter.balance import BalanceReader
from exporter.client import NeoClient, RetryPolicy
from exporter.ledger import Ledger
from exporter.poll import Poller, Timing
from exporter.selfmetrics import SelfMetrics
from exporter.simulator import DEMO_API_KEY, ManualClock, SimulatedApi, World
from tests.conftest import BUCKETS
from tests.truth import Truth, compare, counted

START = datetime(2026, 11, 20, 9, tzinfo=UTC)
DAY = 86_400.0


@dataclass
class Rig:
    """A world, its API over loopback, and an exporter's poller with its ledger."""

    clock: ManualClock
    world: World
    api: SimulatedApi
    state_path: Path
    pinned: tuple[str, ...] = ()
    defer_index: bool = False  # as the daemon: the poller loads the recent part only
    audit: bool = False  # read the balance and the summary, and reconcile, as the daemon
    timing: Timing = field(default_factory=lambda: Timing(lookback=DAY))
    poller: Poller | None = None
    ledger: Ledger | None = None

    def open(self) -> Poller:
        self.ledger = Ledger(
            self.state_path, buckets=BUCKETS, max_label_values=100, defer_index=self.defer_index
        )
        client = NeoClient(
            self.api.url,
            ("api_key", DEMO_API_KEY),
            timeout=5,
            retry=RetryPolicy(max_retries=4, backoff_base=0.0, backoff_max=0.0),
            sleep=lambda _: None,
        )
        self.poller = Poller(
            client,
            self.ledger,
            SelfMetrics(process=False),
            timing=self.timing,
            pinned=self.pinned,
            clock=self.clock.now,
            account=BalanceReader(client, lookback=self.timing.lookback) if self.audit else None,
        )
        return self.poller

    def close(self) -> None:
        assert self.poller is not None
        assert self.ledger is not None
        self.poller.close()
        self.poller.client.close()
        self.ledger.close()
        self.poller = self.ledger = None

    @property
    def baseline(self) -> float:
        assert self.ledger is not None
        return float(self.ledger.meta["baseline"])


def make_rig(tmp_path: Path, **world: object) -> Iterator[Rig]:
    clock = ManualClock(START)
    options = {"tasks_per_day": 1500, **world}
    sim = World(seed=11, clock=clock, **options)  # type: ignore[arg-type]
    with SimulatedApi(sim) as api:
        rig = Rig(clock, sim, api, tmp_path / "state.db")
        yield rig
        if rig.poller is not None:
            rig.close()


def poll(rig: Rig, truth: Truth) -> None:
    assert rig.poller is not None
    assert rig.ledger is not None
    report = rig.poller.poll_once()
    assert report.invalid_rows == 0
    truth.after_poll(rig.ledger)


def run_polls(rig: Rig, truth: Truth, count: int, step: float) -> None:
    for _ in range(count):
        rig.clock.advance(step)
        poll(rig, truth)


def assert_exact(rig: Rig, truth: Truth) -> None:
    assert rig.ledger is not None
    diff = compare(truth.expected(rig.baseline), counted(rig.ledger))
    assert diff == {}, diff


def value(metrics: SelfMetrics, name: str, **labels: str) -> float:
    """A self-metric's sample value, 0 when absent."""
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found
