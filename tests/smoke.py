"""Smoke test of an installed neo-exporter: start it against the simulated API behind a
web config with basic auth, wait for its first poll, scrape it in both formats, stop it.

Run by tests/run.sh in a second virtualenv that holds the lowest version of every
runtime dependency that pyproject.toml allows (tests/lowest.py): the declared bounds are
true only if this passes there. Exits non-zero, saying what failed, on any problem.

    python tests/smoke.py
"""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import bcrypt
import httpx
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as text

from exporter.app import Exporter
from exporter.logs import configure_logging
from exporter.settings import Settings
from exporter.simulator import DEMO_API_KEY, ScaledClock, SimulatedApi, World

PASSWORD = "smoke-test-password"


def main() -> int:
    configure_logging("warning", "json")
    with (
        tempfile.TemporaryDirectory() as folder,
        SimulatedApi(
            World(seed=7, clock=ScaledClock(datetime.now(UTC), 60), tasks_per_day=300)
        ) as api,
    ):
        web = Path(folder) / "web.yml"
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        web.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
        settings = Settings(
            api_url=api.url, state_path=Path(folder) / "state.db", poll_interval=1,
            web_config_file=web,
        )  # fmt: skip
        exporter = Exporter(settings, ("api_key", DEMO_API_KEY), host="127.0.0.1", port=0)
        exporter.start()
        try:
            if not exporter.health.first_poll.wait(timeout=120):
                print("smoke: the first poll did not finish", file=sys.stderr)
                return 1
            auth = ("prom", PASSWORD)
            if httpx.get(f"{exporter.url}/metrics").status_code != 401:
                print("smoke: /metrics answered without credentials", file=sys.stderr)
                return 1
            plain = httpx.get(f"{exporter.url}/metrics", auth=auth)
            rich = httpx.get(
                f"{exporter.url}/metrics", auth=auth,
                headers={"Accept": "application/openmetrics-text; version=1.0.0"},
            )  # fmt: skip
        finally:
            exporter.stop()
    names = {family.name for family in text(plain.text)}
    rich_names = {family.name for family in openmetrics(rich.text)}
    wanted = {"neo_credits", "neo_exporter_last_poll_success", "neo_task_run_credits"}
    if plain.status_code != 200 or not wanted <= names or not wanted <= rich_names:
        print(f"smoke: /metrics lacks {sorted(wanted - names - rich_names)}", file=sys.stderr)
        return 1
    print(f"smoke: ok ({len(names)} metric families after the first poll)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
