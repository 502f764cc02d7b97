"""The command line: demo defaults, printed URLs, and start-up errors without tracebacks."""

from __future__ import annotations

import argparse
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from exporter.cli import EXIT_STATE, browser_url, demo_settings
from exporter.settings import load_settings
from exporter.simulator import DEMO_API_KEY

SIMULATOR_URL = "http://127.0.0.1:8080"


def child_env(**settings: str) -> dict[str, str]:
    """The test's environment without NEO_EXPORTER_* variables, plus *settings*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEO_EXPORTER_")}
    env.update({f"NEO_EXPORTER_{name.upper()}": value for name, value in settings.items()})
    return env


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another socket is listening on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def test_demo_listens_on_loopback_by_default() -> None:
    settings = demo_settings(load_settings(argparse.Namespace(), environ={}), SIMULATOR_URL)
    assert settings.listen_address == "127.0.0.1:9877"


@pytest.mark.parametrize(
    ("flags", "environ"),
    [
        ({"listen_address": ":9999"}, {}),
        ({}, {"NEO_EXPORTER_LISTEN_ADDRESS": ":9999"}),
    ],
)
def test_demo_keeps_an_explicit_listen_address(
    flags: dict[str, str], environ: dict[str, str]
) -> None:
    given = load_settings(argparse.Namespace(**flags), environ=environ)
    assert demo_settings(given, SIMULATOR_URL).listen_address == ":9999"


@pytest.mark.parametrize(
    ("bound", "shown"),
    [
        ("http://0.0.0.0:9877", "http://127.0.0.1:9877"),
        ("https://[::]:9877", "https://[::1]:9877"),
        ("http://127.0.0.1:9877", "http://127.0.0.1:9877"),
        ("http://[::1]:9877", "http://[::1]:9877"),
        ("http://exporter.example:9877", "http://exporter.example:9877"),
    ],
)
def test_browser_url_replaces_only_wildcard_hosts(bound: str, shown: str) -> None:
    assert browser_url(bound) == shown


def test_demo_on_every_interface_prints_a_loopback_url_that_answers(tmp_path: Path) -> None:
    env = child_env(listen_address=":0", state_path=str(tmp_path / "state.db"))
    child = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stderr is not None
    try:
        url = ""
        deadline = time.monotonic() + 30
        while not url and time.monotonic() < deadline:
            if select.select([child.stderr], [], [], 1)[0]:
                line = child.stderr.readline()
                if line.startswith("Exporter:"):
                    url = line.split()[1]
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/metrics")
        assert httpx.get(url, timeout=10).status_code == 200
    finally:
        child.terminate()
        child.communicate(timeout=30)


def test_run_with_the_listen_port_in_use_names_the_setting(busy_port: int, tmp_path: Path) -> None:
    env = child_env(
        api_key=DEMO_API_KEY,
        api_url="http://127.0.0.1:9",
        listen_address=f"127.0.0.1:{busy_port}",
        state_path=str(tmp_path / "state.db"),
    )
    done = run_cli("run", env=env)
    assert (done.returncode, done.stderr.splitlines()) == (
        EXIT_STATE,
        [
            "neo-exporter: listen_address (--listen-address / NEO_EXPORTER_LISTEN_ADDRESS): "
            f"cannot listen on 127.0.0.1:{busy_port}: Address already in use"
        ],
    )


def test_run_with_a_state_path_that_cannot_be_created_names_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    state = blocker / "state.db"
    env = child_env(
        api_key=DEMO_API_KEY,
        api_url="http://127.0.0.1:9",
        listen_address="127.0.0.1:0",
        state_path=str(state),
    )
    done = run_cli("run", env=env)
    assert (done.returncode, done.stderr.splitlines()) == (
        EXIT_STATE,
        [
            "neo-exporter: state_path (--state-path / NEO_EXPORTER_STATE_PATH): "
            f"cannot create or open {state}: {blocker} exists and is not a directory"
        ],
    )


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_bad_web_config_exits_2_before_anything_is_made_on_disk(
    tmp_path: Path, command: str
) -> None:
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  min_versoin: x\n")
    state = tmp_path / "state" / "state.db"
    env = child_env(
        api_key=DEMO_API_KEY, web_config_file=str(web), state_path=str(state),
        listen_address="127.0.0.1:0",
    )  # fmt: skip
    done = run_cli(command, env=env)
    assert done.returncode == 2, done.stderr
    assert "unknown keys in tls_server_config: ['min_versoin']" in done.stderr
    assert "Traceback" not in done.stderr
    assert not state.parent.exists()
