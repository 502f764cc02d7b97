"""The command line: demo defaults, printed URLs, and start-up errors without tracebacks."""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from exporter.cli import EXIT_STATE, browser_url, demo_ignores, demo_settings, main
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


def help_of(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


def test_each_command_offers_only_the_settings_it_uses(capsys: pytest.CaptureFixture[str]) -> None:
    run, demo, backfill = (help_of(c, capsys) for c in ("run", "demo", "backfill"))
    assert "--listen-address" in run
    assert "--sim-speed" not in run
    assert "--sim-speed" in demo
    assert "--api-url" not in demo  # the demo talks to its own simulator
    assert "--api-key-file" not in demo
    assert "--listen-address" not in backfill
    assert "--poll-interval" not in backfill
    assert "--max-retries" in backfill


def test_demo_help_states_the_demo_s_own_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    demo = " ".join(help_of("demo", capsys).split())  # argparse wraps lines
    assert "default 127.0.0.1:9877)" in demo
    assert "NEO_EXPORTER_POLL_INTERVAL; default 2s)" in demo
    assert "default a temporary directory, removed on exit)" in demo


def lines_until(stream: IO[str], wanted: str) -> list[str]:
    """What a child wrote on *stream* up to a line that contains *wanted*, as lines.
    Read from the descriptor: a buffered readline would hide lines from select()."""
    text = ""
    deadline = time.monotonic() + 30
    while wanted not in text and time.monotonic() < deadline:
        if select.select([stream], [], [], 1)[0]:
            chunk = os.read(stream.fileno(), 65536).decode()
            if not chunk:
                break
            text += chunk
    return [line for line in text.splitlines() if line]


def said_until(command: list[str], env: dict[str, str], wanted: str) -> list[str]:
    """What a command said on stderr up to a line with *wanted*; then it is stopped."""
    child = subprocess.Popen(
        [sys.executable, "-m", "exporter", *command],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stderr is not None
    try:
        return lines_until(child.stderr, wanted)
    finally:
        child.terminate()  # the daemon finishes the poll in flight, then exits
        try:
            child.communicate(timeout=120)
        finally:
            child.kill()  # a no-op once it exited; never a child left running
            child.communicate()


def test_demo_removes_its_temporary_ledger_on_exit() -> None:
    # A small world: the first poll, which a stop waits for, is short.
    env = child_env(listen_address="127.0.0.1:0", log_format="json", sim_tasks_per_day="20")
    seen = said_until(["demo"], env, "Exporter:")
    (started,) = [json.loads(s) for s in seen if '"exporter_started"' in s]
    state = Path(started["state_path"])
    assert state.name == "state.db"
    assert state.parent.name.startswith("neo-exporter-demo-")
    assert not state.parent.exists()


def test_simulate_says_which_key_it_accepts() -> None:
    command = ["simulate", "--listen-address", "127.0.0.1:0"]
    seen = said_until(command, child_env(), "NEO_EXPORTER_API_KEY=")
    assert any(
        f"NEO_EXPORTER_API_KEY={DEMO_API_KEY} neo-exporter run --api-url http://" in line
        for line in seen
    )


def test_demo_names_the_api_settings_it_ignores() -> None:
    environ = {"NEO_EXPORTER_API_URL": "https://neo.example", "NEO_EXPORTER_API_KEY": "k" * 20}
    assert demo_ignores(load_settings(argparse.Namespace(), environ=environ)) == [
        "api_url", "api_key",
    ]  # fmt: skip
    assert demo_ignores(load_settings(argparse.Namespace(), environ={})) == []
