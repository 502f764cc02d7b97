"""Against a real Prometheus: scraping, rules, dashboard queries, exemplars and backfill.

One Prometheus (Debian package ``prometheus``) runs for the module. Before it starts,
``neo-exporter backfill`` writes the six hours before the exporter's baseline and
``promtool tsdb create-blocks-from openmetrics`` turns them into blocks; then it scrapes
an exporter fed by the simulated API with a fast clock, with every rule of the rule files
loaded, read through the selector job=~"neo-exporter|" so that they see the backfilled
history (which has no job label) too.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.accounting import NON_TERMINAL
from exporter.app import Exporter
from exporter.settings import Settings
from exporter.simulator import DEMO_API_KEY, ManualClock, ScaledClock, SimulatedApi, World
from tests.deploy_files import all_rules, dashboard_queries, load_module

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "deploy" / "kubernetes" / "generate_prometheusrule.py"
# The rules as the README suggests after a backfill: the backfilled series carry no job
# label, and this selector reads them along with the live job's.
BACKFILL_SELECTOR = 'job=~"neo-exporter|"'
SEED = 9
TASKS_PER_DAY = 2000
BACKFILL_HOURS = 6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binary(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} missing: install the Debian package prometheus (tests/run.sh does)"
    return found


@dataclass
class Stack:
    prometheus: str
    backfill_end: datetime
    backfill_expected: Decimal
    backfill_report: str

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = httpx.get(f"{self.prometheus}/api/v1/query", params=params, timeout=10).json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Any]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        body = httpx.get(f"{self.prometheus}/api/v1/query_range", params=params, timeout=30).json()
        assert body["status"] == "success", (expr, body)
        result: list[Any] = body["data"]["result"]
        return result


def backfill(tmp: Path, start: datetime, end: datetime, now: datetime) -> tuple[Decimal, str]:
    """Run the real backfill command against a frozen copy of the world; returns truth."""
    world = World(seed=SEED, clock=ManualClock(now), tasks_per_day=TASKS_PER_DAY)
    with SimulatedApi(world) as api:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEO_EXPORTER_")}
        env.update(NEO_EXPORTER_API_URL=api.url, NEO_EXPORTER_API_KEY=DEMO_API_KEY)
        done = subprocess.run(
            [sys.executable, "-m", "exporter", "backfill", "--from", start.isoformat(),
             "--to", end.isoformat(), "--step", "5m", "--output", str(tmp / "backfill.om")],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        expected = sum(
            (
                s.credits
                for s in world.visible_streams()
                if start <= s.created_at < end and s.status not in NON_TERMINAL
            ),
            Decimal(0),
        )
    blocks = subprocess.run(
        [binary("promtool"), "tsdb", "create-blocks-from", "openmetrics",
         str(tmp / "backfill.om"), str(tmp / "data")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert blocks.returncode == 0, blocks.stderr + blocks.stdout
    return expected, done.stderr


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("prometheus")
    now = datetime.now(UTC)
    baseline = now - timedelta(days=1)  # where the live exporter's counting will begin
    start = baseline - timedelta(hours=BACKFILL_HOURS)
    expected, report = backfill(tmp, start, baseline, now)

    clock = ScaledClock(now, 300)
    world = World(seed=SEED, clock=clock, tasks_per_day=TASKS_PER_DAY)
    with SimulatedApi(world) as api:
        pinned = world.visible_streams()[0].task_id
        settings = Settings(
            api_url=api.url,
            state_path=tmp / "state.db",
            poll_interval=1,
            task_ids=[pinned],
            team_view=True,
        )
        exporter = Exporter(
            settings, ("api_key", DEMO_API_KEY), host="127.0.0.1", port=0, clock=clock.now
        )
        exporter.start()
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp / "neo.rules.yml")],
            "scrape_configs": [
                {
                    "job_name": "neo-exporter",
                    "static_configs": [{"targets": [exporter.url.removeprefix("http://")]}],
                }
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        generator = load_module(GENERATOR, "generate_prometheusrule")
        groups = generator.with_selector(generator.rule_groups(), BACKFILL_SELECTOR)
        (tmp / "neo.rules.yml").write_text(yaml.safe_dump({"groups": groups}))
        prometheus = subprocess.Popen(
            [binary("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--enable-feature=exemplar-storage", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            stack = Stack(url, baseline, expected, report)
            wait_for(lambda: httpx.get(f"{url}/-/ready").status_code == 200, 60, "Prometheus")
            # Enough scrapes for rate() over a few seconds, with counters moving.
            wait_for(
                lambda: stack.query("sum(increase(neo_steps_total[20s])) > 0"),
                90,
                "steps to grow between scrapes",
            )
            time.sleep(3)
            yield stack
        finally:
            prometheus.terminate()
            _, err = prometheus.communicate(timeout=30)
            exporter.stop()
            assert b"level=error" not in err, err.decode()[-3000:]


def test_scrape_is_healthy(stack: Stack) -> None:
    up = stack.query('up{job="neo-exporter"}')
    assert [float(r["value"][1]) for r in up] == [1.0]
    targets = httpx.get(f"{stack.prometheus}/api/v1/targets").json()["data"]["activeTargets"]
    assert targets[0]["lastError"] == ""


def test_every_rule_evaluates_without_error(stack: Stack) -> None:
    groups = httpx.get(f"{stack.prometheus}/api/v1/rules").json()["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    expected = {rule.get("record") or rule.get("alert") for rule in all_rules()}
    assert expected <= set(loaded)
    broken = {name: rule["lastError"] for name, rule in loaded.items() if rule["health"] != "ok"}
    assert broken == {}


def test_every_recording_rule_returns_data(stack: Stack) -> None:
    empty = [rule["record"] for rule in all_rules() if "record" in rule]
    for _ in range(20):
        empty = [name for name in empty if not stack.query(name)]
        if not empty:
            break
        time.sleep(1)
    assert empty == []


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    pending = dashboard_queries()
    assert len(pending) > 10
    for _ in range(20):
        pending = [(title, expr) for title, expr in pending if not stack.query(expr)]
        if not pending:
            break
        time.sleep(1)
    assert pending == []


def test_exemplars_carry_task_ids(stack: Stack) -> None:
    end = time.time()
    body = httpx.get(
        f"{stack.prometheus}/api/v1/query_exemplars",
        params={"query": "neo_credits_total", "start": f"{end - 600:.0f}", "end": f"{end:.0f}"},
    ).json()
    assert body["status"] == "success"
    labels = [e["labels"] for series in body["data"] for e in series["exemplars"]]
    assert labels
    assert all(set(label) == {"task_id"} and label["task_id"] for label in labels)


def test_backfilled_history_matches_the_ground_truth(stack: Stack) -> None:
    assert "progress" not in stack.backfill_report  # no progress bar when not a terminal
    result = stack.query('sum(neo_credits_total{job=""})', at=stack.backfill_end.timestamp())
    assert len(result) == 1
    assert float(result[0]["value"][1]) == pytest.approx(float(stack.backfill_expected), rel=1e-9)
    assert stack.backfill_expected > 0


BACKFILLED = 'count(neo_credits_total{job=""})'
LIVE = 'count(neo_credits_total{job!=""})'


def test_no_instant_has_both_backfilled_and_live_series(stack: Stack) -> None:
    """The live series begin where the backfill ends, so a sum never counts a run twice."""
    end = stack.backfill_end.timestamp()
    around_end = [end + offset for offset in range(-5, 6)]
    # The backfilled side is present at the boundary, so the check there is not vacuous.
    assert [bool(stack.query(BACKFILLED, at=at)) for at in around_end] == [True] * 11
    assert [stack.query(f"{BACKFILLED} and {LIVE}", at=at) for at in around_end] == [[]] * 11
    # Live samples only exist from the test's start (scrape time), a day after the
    # boundary: every instant from the backfill's start to now must hold one side at most.
    # The steps end exactly at now, where the live series are.
    now, step = time.time(), 15
    start = now - math.ceil((now - end + BACKFILL_HOURS * 3600) / step) * step
    assert stack.query_range(BACKFILLED, start, now, step)
    assert stack.query_range(LIVE, start, now, step)
    assert stack.query_range(f"{BACKFILLED} and {LIVE}", start, now, step) == []
