"""The daemon as users run it: secrets never leak, scrapes stay correct while polling."""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter
from exporter.errors import ConfigError, StateError
from exporter.ledger import Ledger
from exporter.settings import Settings, load_settings
from exporter.simulator import DEMO_API_KEY, Journal, ScaledClock, SimulatedApi, World
from tests.conftest import BUCKETS

SECRET = "neo_sk_" + "s3cr3tVALUE" * 3


@pytest.fixture
def api() -> Iterator[SimulatedApi]:
    world = World(seed=4, clock=ScaledClock(datetime.now(UTC), 600), tasks_per_day=1000)
    with SimulatedApi(world, api_key=SECRET) as served:
        yield served


def daemon_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEO_EXPORTER_")}
    env.update({f"NEO_EXPORTER_{k.upper()}": v for k, v in values.items()})
    return env


def test_secret_never_appears_in_anything_the_process_emits(
    api: SimulatedApi, tmp_path: Path
) -> None:
    """Debug logs, a rejected key with tracebacks, metrics, landing page, check-config."""
    key_file = tmp_path / "key"
    key_file.write_text(SECRET + "\n")
    env = daemon_env(
        api_url=api.url,
        api_key_file=str(key_file),
        state_path=str(tmp_path / "state.db"),
        poll_interval="1",
        listen_address="127.0.0.1:0",
        log_level="debug",
        log_format="console",
    )
    checked = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config"],
        env={**env, "NEO_EXPORTER_API_KEY_FILE": "", "NEO_EXPORTER_API_KEY": SECRET},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    child = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = LogWatch(child)
    scraped = ""
    try:
        started = log.wait_for(r"exporter_started.*url=(http://127\.0\.0\.1:\d+)")
        url = started.group(1)  # the port the daemon reports, never a guess
        log.wait_for(r"poll_finished", count=2)  # polls, with debug logging of every request
        api.faults.burst(50, status=401)  # now the key is rejected: errors and tracebacks
        log.wait_for(r"credentials_rejected", count=2)
        for path in ("/metrics", "/", "/healthz", "/readyz"):
            scraped += httpx.get(url + path).text
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
        log.close()
    emitted = "\n".join((checked.stdout, checked.stderr, log.text(), scraped))
    assert "poll_finished" in emitted
    assert "credentials" in emitted
    assert SECRET not in emitted
    assert SECRET[:12] not in emitted.replace(SECRET[:7], "")
    assert child.returncode == 0


class LogWatch:
    """Reads a child's stdout and stderr as they come, so that a test waits for what the
    daemon says (a line, a number of lines) instead of sleeping."""

    def __init__(self, child: subprocess.Popen[str]) -> None:
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._streams = [s for s in (child.stdout, child.stderr) if s is not None]
        self._pumps = [
            threading.Thread(target=self._pump, args=(stream,), daemon=True)
            for stream in self._streams
        ]
        for pump in self._pumps:
            pump.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._lines.append("")  # end of a stream: wake the waiters to see it
            self._changed.notify_all()

    def text(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, pattern: str, count: int = 1) -> re.Match[str]:
        """The ``count``-th match of ``pattern`` in what the child said; fails if the
        child ends (or a minute passes, a bound for a hung child) without it."""
        found: list[re.Match[str]] = []

        def enough() -> bool:
            found[:] = list(re.finditer(pattern, "".join(self._lines)))
            return len(found) >= count or self._lines.count("") == len(self._pumps)

        with self._changed:
            self._changed.wait_for(enough, timeout=60)
        assert len(found) >= count, f"the daemon never said {pattern!r} {count} times"
        return found[count - 1]

    def close(self) -> None:
        for pump in self._pumps:
            pump.join(timeout=30)
        for stream in self._streams:
            stream.close()


def test_concurrent_scrapes_while_polling_stay_correct(api: SimulatedApi, tmp_path: Path) -> None:
    clock = ScaledClock(datetime.now(UTC), 600)
    settings_ = Settings(api_url=api.url, state_path=tmp_path / "state.db", poll_interval=1)
    exporter = Exporter(
        settings_, ("api_key", SECRET), host="127.0.0.1", port=0, clock=clock.now,
        process_metrics=False,
    )  # fmt: skip
    exporter.start()
    failures: list[str] = []
    seen: dict[int, list[float]] = {}
    stop = threading.Event()
    progress = threading.Condition()  # notified on every scrape and every commit

    def scrape(worker: int) -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                response = client.get(f"{exporter.url}/metrics")
                if response.status_code != 200:
                    failures.append(f"status {response.status_code}")
                    continue
                total = 0.0
                for family in text_string_to_metric_families(response.text):
                    if family.name == "neo_steps":
                        total = sum(s.value for s in family.samples)
                with progress:
                    seen.setdefault(worker, []).append(total)
                    progress.notify_all()

    refresh = exporter.poller.on_commit

    def committed() -> None:
        refresh()
        with progress:
            progress.notify_all()

    exporter.poller.on_commit = committed
    workers = [threading.Thread(target=scrape, args=(n,)) for n in range(6)]
    host, port = exporter.url.removeprefix("http://").rsplit(":", 1)
    hung: list[socket.socket] = []
    try:
        hung = [socket.create_connection((host, int(port))) for _ in range(5)]
        for sock in hung:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never another byte
        for worker in workers:
            worker.start()
        polls_before = exporter.poller.polls_done
        # Liveness, not speed: polls keep committing while scrapes hammer the server
        # and five clients hold connections open (a minute bounds a hung poller).
        with progress:
            progress.wait_for(lambda: exporter.poller.polls_done >= polls_before + 2, timeout=60)
            scraped = {w: len(t) for w, t in seen.items()}
            # A few more scrapes by every worker after the last poll.
            progress.wait_for(
                lambda: all(len(seen.get(n, ())) > scraped.get(n, 0) + 5 for n in range(6)),
                timeout=60,
            )
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
        assert exporter.poller.polls_done >= polls_before + 2, "polling was held up"
    finally:
        stop.set()
        for sock in hung:
            sock.close()
        exporter.stop()
    assert failures == []
    for totals in seen.values():
        assert len(totals) > 5
        assert totals == sorted(totals), "a counter went down between scrapes"
    assert max(max(t) for t in seen.values()) > 0


ENV_NAMES = ["poll_interval", "lookback", "listen_address", "task_ids", "max_retries",
             "tool_duration_buckets", "log_level", "api_url", "request_timeout"]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(ENV_NAMES), st.text(max_size=20), max_size=4))
def test_any_setting_value_is_accepted_or_a_config_error(values: dict[str, str]) -> None:
    environ = {f"NEO_EXPORTER_{k.upper()}": v for k, v in values.items()}
    environ["NEO_EXPORTER_API_KEY"] = DEMO_API_KEY
    import argparse

    from exporter.settings import add_settings_arguments

    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    try:
        loaded = load_settings(parser.parse_args([]), environ)
    except ConfigError as exc:
        assert DEMO_API_KEY not in str(exc)
        assert "Traceback" not in str(exc)
    else:
        assert loaded.poll_interval >= 1
        assert loaded.lookback >= loaded.poll_interval


def test_a_second_exporter_on_the_same_state_file_is_refused(
    api: SimulatedApi, tmp_path: Path
) -> None:
    settings_ = Settings(api_url=api.url, state_path=tmp_path / "state.db")

    def build() -> Exporter:
        exporter = Exporter(
            settings_, ("api_key", SECRET), host="127.0.0.1", port=0, process_metrics=False
        )
        exporter.start()
        return exporter

    first = build()
    with pytest.raises(StateError, match="another neo-exporter is using"):
        build()
    first.stop()
    second = build()  # the lock goes with the exporter that held it
    second.stop()


def test_http_settings_reach_the_server(api: SimulatedApi, tmp_path: Path) -> None:
    settings_ = load_settings(
        argparse.Namespace(),
        environ={
            "NEO_EXPORTER_API_URL": api.url, "NEO_EXPORTER_STATE_PATH": str(tmp_path / "s.db"),
            "NEO_EXPORTER_HTTP_MAX_CONNECTIONS": "3", "NEO_EXPORTER_HTTP_REQUEST_TIMEOUT": "2s",
        },
    )  # fmt: skip
    exporter = Exporter(
        settings_, ("api_key", SECRET), host="127.0.0.1", port=0, process_metrics=False
    )
    exporter.start()
    try:
        assert exporter.server.limits.max_connections == 3
        assert exporter.server.limits.request_timeout == 2.0
    finally:
        exporter.stop()


def test_sigterm_ends_the_daemon_at_once_while_the_api_hangs(tmp_path: Path) -> None:
    """With a request timeout of a minute and an API that never answers, SIGTERM still
    ends the daemon cleanly, long before the request would time out; the ledger keeps
    the poll committed before."""
    world = World(seed=6, clock=ScaledClock(datetime.now(UTC), 600), tasks_per_day=1000)
    state_path = tmp_path / "state.db"
    with SimulatedApi(world) as api:
        env = daemon_env(
            api_url=api.url, api_key=DEMO_API_KEY, state_path=str(state_path),
            poll_interval="1", listen_address="127.0.0.1:0", request_timeout="60",
            log_format="json",
        )  # fmt: skip
        child = subprocess.Popen(
            [sys.executable, "-m", "exporter", "run"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        log = LogWatch(child)
        try:
            log.wait_for("poll_finished")
            api.faults.latency = 3600.0  # from now on every request hangs
            journal = Journal()
            api.journal = journal
            journal.came.wait()  # the poller is in a request that will not be answered
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=20)  # a hang guard: the old exporter took over 2 minutes
        finally:
            child.kill()
            child.wait()
            log.close()
    assert child.returncode == 0, log.text()[-2000:]
    assert "exporter_stopped" in log.text()
    # The poll in flight is interrupted (poll_interrupted) or, when the request that
    # hung was an optional one (task details), ends without it: never a failed poll.
    assert "poll_failed" not in log.text()
    ledger = Ledger(state_path, buckets=BUCKETS, max_label_values=100)
    try:
        assert ledger.run_count > 0
        assert "recent_at" in ledger.meta
    finally:
        ledger.close()


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    """The first SIGINT asks for an orderly stop; a second one ends the process even
    when that stop has not finished (here it never would)."""
    script = (
        "import os, signal, threading, time\n"
        "from exporter.cli import _install_signal_handlers\n"
        "_install_signal_handlers(threading.Event())\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "while True:\n"
        "    time.sleep(1)  # an orderly stop that never ends\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=20, check=False
    )
    assert child.returncode == 128 + signal.SIGINT, child.stderr
