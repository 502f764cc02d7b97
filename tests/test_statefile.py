"""The state file and its lock: checked before every poll, and refused at start when
they cannot be written; nothing created on disk before the settings are all valid."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from exporter.app import Exporter
from exporter.cli import EXIT_STATE
from exporter.errors import WebConfigError
from exporter.ledger import Ledger
from exporter.settings import Settings
from exporter.simulator import DEMO_API_KEY, ScaledClock, SimulatedApi, World
from tests.conftest import BUCKETS, write_web_config


@pytest.fixture
def api() -> Iterator[SimulatedApi]:
    world = World(seed=3, clock=ScaledClock(datetime.now(UTC), 1), tasks_per_day=50)
    with SimulatedApi(world) as served:
        yield served


@pytest.fixture
def polled(api: SimulatedApi, tmp_path: Path) -> Iterator[Exporter]:
    """An exporter whose first poll has counted, its state in a directory of its own."""
    settings = Settings(api_url=api.url, state_path=tmp_path / "state" / "state.db")
    exporter = Exporter(
        settings, ("api_key", DEMO_API_KEY), host="127.0.0.1", port=0, process_metrics=False
    )
    assert exporter.poller.poll_safely() is not None
    assert exporter.health.failing is None
    yield exporter
    exporter.poller.close()
    exporter.client.close()
    exporter.server.server_close()


def failed_poll(exporter: Exporter) -> str:
    """The error of a poll that must fail for its state: counted, logged, not ready."""
    with capture_logs() as logs:
        assert exporter.poller.poll_safely() is None
    (failed,) = [e for e in logs if e["event"] == "poll_failed"]
    assert (failed["log_level"], failed["reason"]) == ("error", "state")
    assert exporter.metrics.errors.labels("state")._value.get() == 1
    ready, why = exporter.health.ready()
    assert not ready
    assert why.startswith("state file unusable")
    return str(failed["error"])


def test_a_deleted_state_directory_fails_every_poll(polled: Exporter) -> None:
    shutil.rmtree(polled.settings.state_path.parent)
    assert "was deleted or moved" in failed_poll(polled)
    assert polled.metrics.polls.labels("success")._value.get() == 1


def test_a_replaced_state_file_fails_the_poll(polled: Exporter, tmp_path: Path) -> None:
    path = polled.settings.state_path
    shutil.copy(path, tmp_path / "copy.db")
    os.replace(tmp_path / "copy.db", path)
    assert "the state file" in (error := failed_poll(polled))
    assert "was replaced by another file" in error


def test_a_deleted_lock_file_fails_the_poll(polled: Exporter) -> None:
    Path(f"{polled.settings.state_path}.lock").unlink()
    assert "the lock file" in (error := failed_poll(polled))
    assert "was deleted or moved" in error


AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="runs the exporter as nobody"
)
def test_a_read_only_state_file_is_refused_at_start_with_exit_3() -> None:
    """The file belongs to root and the exporter runs as nobody: it may read, not write."""
    folder = Path(tempfile.mkdtemp())
    try:
        folder.chmod(0o777)  # the directory is writable: only the file is not
        Ledger(folder / "state.db", buckets=BUCKETS, max_label_values=5).close()
        (folder / "state.db").chmod(0o644)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "NEO_EXPORTER_API_KEY": DEMO_API_KEY,
            "NEO_EXPORTER_API_URL": "http://127.0.0.1:9",
            "NEO_EXPORTER_STATE_PATH": str(folder / "state.db"),
            "NEO_EXPORTER_LISTEN_ADDRESS": "127.0.0.1:0",
        }
        done = subprocess.run(
            [*AS_NOBODY, sys.executable, "-m", "exporter", "run"], env=env,
            cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(folder)
    assert done.returncode == EXIT_STATE
    assert "cannot be opened for writing" in done.stderr
    assert "give the exporter's user read and write access" in done.stderr


def _refused(settings: Settings, port: int = 0) -> None:
    with pytest.raises((OSError, WebConfigError)):
        Exporter(settings, ("api_key", DEMO_API_KEY), host="127.0.0.1", port=port)
    assert not settings.state_path.parent.exists()


def test_a_bad_web_config_creates_nothing_on_disk(tmp_path: Path) -> None:
    web = write_web_config(tmp_path, "tls_server_config: {cert_file: /nonexistent}\n")
    _refused(Settings(state_path=tmp_path / "state" / "state.db", web_config_file=web))


def test_a_busy_port_creates_nothing_on_disk(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        _refused(Settings(state_path=tmp_path / "state" / "state.db"), port)
