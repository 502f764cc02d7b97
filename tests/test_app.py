"""The wiring: a rotated key file read again after a 401, the address it says it serves on."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from structlog.testing import capture_logs

from exporter.app import Exporter
from exporter.settings import Settings
from exporter.simulator import ScaledClock, SimulatedApi, World

OLD_KEY = "neo_sk_" + "old0" * 8
NEW_KEY = "neo_sk_" + "new1" * 8


def test_a_rotated_key_file_takes_effect_at_the_next_poll(tmp_path: Path) -> None:
    world = World(seed=5, clock=ScaledClock(datetime.now(UTC), 1), tasks_per_day=50)
    key_file = tmp_path / "key"
    key_file.write_text(OLD_KEY + "\n")
    with SimulatedApi(world, api_key=OLD_KEY) as api:
        settings = Settings(
            api_url=api.url, state_path=tmp_path / "state.db", api_key_file=key_file
        )
        exporter = Exporter(
            settings, settings.require_credential(), host="127.0.0.1", port=0,
            process_metrics=False,
        )  # fmt: skip
        try:
            assert exporter.poller.poll_safely() is not None
            api.api_key = NEW_KEY  # the key is rotated upstream: the old one is refused
            assert exporter.poller.poll_safely() is None
            assert exporter.metrics.errors.labels("credentials_rejected")._value.get() == 1
            key_file.write_text(NEW_KEY + "\n")  # and the mounted secret follows
            with capture_logs() as logs:
                assert exporter.poller.poll_safely() is not None
            assert {"event": "credential_reloaded", "kind": "api_key", "log_level": "info"} in logs
            assert not any(OLD_KEY in str(e) or NEW_KEY in str(e) for e in logs)
        finally:
            exporter.stop()


def test_the_started_line_gives_an_address_to_browse_to(tmp_path: Path) -> None:
    """Bound to every interface (0.0.0.0), the log says where a browser can go."""
    world = World(seed=5, clock=ScaledClock(datetime.now(UTC), 1), tasks_per_day=50)
    with SimulatedApi(world, api_key=OLD_KEY) as api:
        settings = Settings(api_url=api.url, state_path=tmp_path / "state.db")
        exporter = Exporter(
            settings, ("api_key", OLD_KEY), host="0.0.0.0", port=0, process_metrics=False
        )
        with capture_logs() as logs:
            exporter.start()
        exporter.stop()
    (started,) = [e for e in logs if e["event"] == "exporter_started"]
    port = exporter.server.server_address[1]
    assert started["url"] == f"http://127.0.0.1:{port}"
