"""Wiring: builds the ledger, client, poller, exposition and server from one Settings."""

from __future__ import annotations

import fcntl
import os
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import httpx
import structlog
from prometheus_client import CollectorRegistry, disable_created_metrics

from exporter.balance import BalanceReader
from exporter.client import NeoClient, RetryPolicy
from exporter.collector import UsageCollector
from exporter.connections import ServerLimits
from exporter.errors import StateError
from exporter.exposition import Exposition
from exporter.ledger import Ledger, PollChanges
from exporter.poll import Poller, Timing
from exporter.selfmetrics import SelfMetrics
from exporter.server import Health, make_server
from exporter.webconfig import WebConfig, load_web_config

if TYPE_CHECKING:
    from exporter.connections import BoundedServer
    from exporter.settings import Settings

log = structlog.get_logger(__name__)
MEMBER_SALT_KEY = "member_salt"
# How long a stop waits for the poller: requests in flight and retry waits end within
# a fraction of a second of the stop, a commit in progress within this.
STOP_GRACE_SECONDS = 4.0


def bucket_settings(settings: Settings) -> dict[str, list[float]]:
    return {
        "neo_tool_call_duration_seconds": list(settings.tool_duration_buckets),
        "neo_task_run_credits": list(settings.run_credits_buckets),
        "neo_task_run_execution_seconds": list(settings.run_duration_buckets),
    }


def lock_state(path: Path) -> int:
    """Hold an exclusive lock beside the ledger for the life of the process.

    Two exporters writing one ledger would each overwrite the other's totals; the
    second one is refused. The kernel drops the lock when the process dies, kill -9
    included, so a crash never leaves a stale lock behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = Path(f"{path}.lock")
    handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise StateError(
            f"another neo-exporter is using the state file {path} (it holds {lock}): "
            "run one exporter per state file"
        ) from None
    return handle


class Exporter:
    """The running daemon: serves restored totals at once, then polls until stopped."""

    def __init__(
        self,
        settings: Settings,
        credential: tuple[Literal["api_key", "token"], str],
        *,
        host: str,
        port: int,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        process_metrics: bool = True,
    ) -> None:
        # *_created series only add cardinality here (the function is untyped upstream)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.settings = settings
        self.health = Health()
        # Read before anything is made on disk: a bad web config leaves no trace.
        web = load_web_config(settings.web_config_file) if settings.web_config_file else WebConfig()
        self.metrics = SelfMetrics(process=process_metrics)
        self.stop_event = threading.Event()  # set: requests in flight and retry waits end
        self._state_lock = lock_state(settings.state_path)
        try:
            self.ledger = Ledger(
                settings.state_path,
                buckets=bucket_settings(settings),
                max_label_values=settings.max_label_values,
                defer_index=True,  # loaded by the poller thread, after serving starts
            )
            self.health.state_loaded.set()
            pinned = list(settings.task_ids)
            usage = CollectorRegistry(auto_describe=False)
            usage.register(
                UsageCollector(
                    self.ledger,
                    lookback=settings.lookback,
                    pinned=pinned,
                    clock=clock,
                    team_view=settings.team_view,
                )
            )
            self.exposition = Exposition(usage, self.metrics.registry)
            self.exposition.refresh()  # restored totals are served before any poll
            self.metrics.ledger_size.set(self.ledger.size_bytes())
            self.client = NeoClient(
                settings.api_url,
                credential,
                timeout=settings.request_timeout,
                max_concurrent=settings.max_concurrent_requests,
                retry=RetryPolicy(
                    max_retries=settings.max_retries, backoff_max=settings.retry_backoff_max
                ),
                transport=transport,
                on_request=self.metrics.observe_request,
                stop=self.stop_event,
            )
            self.poller = Poller(
                self.client,
                self.ledger,
                self.metrics,
                timing=Timing(
                    lookback=settings.lookback, full_list_interval=settings.full_list_interval
                ),
                pinned=pinned,
                max_workers=settings.max_concurrent_requests,
                clock=clock,
                on_commit=self.exposition.refresh,
                account=BalanceReader(
                    self.client,
                    lookback=settings.lookback,
                    team_view=settings.team_view,
                    export_emails=settings.export_emails,
                    salt=self._member_salt(),
                ),
            )
            self.server: BoundedServer = make_server(
                host, port, self.exposition, self.health, web=web,
                on_noise=self.metrics.observe_noise,
                limits=ServerLimits(
                    max_connections=settings.http_max_connections,
                    request_timeout=settings.http_request_timeout,
                ),
            )  # fmt: skip
        except BaseException:
            os.close(self._state_lock)  # a half-built exporter must not keep the lock
            raise
        self._threads: list[threading.Thread] = []

    def _member_salt(self) -> bytes:
        """This installation's key for member pseudonyms, made once and kept."""
        salt = self.ledger.meta.get(MEMBER_SALT_KEY)
        if salt is None:
            salt = secrets.token_hex(16)
            self.ledger.commit(PollChanges(meta={MEMBER_SALT_KEY: salt}))
        return bytes.fromhex(salt)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        host = str(host)
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.settings.web_config_file and self._tls() else "http"
        return f"{scheme}://{host}:{port}"

    def _tls(self) -> bool:
        return hasattr(self.server.socket, "context")

    def start(self) -> None:
        serve = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)
        poll = threading.Thread(target=self._poll_loop, name="poller", daemon=True)
        self._threads = [serve, poll]
        serve.start()
        poll.start()
        log.info(
            "exporter_started",
            url=self.url,
            state_path=str(self.settings.state_path),
            runs_restored=self.ledger.run_count,
        )

    def _poll_loop(self) -> None:
        self.poller.load_index()
        self.exposition.refresh()  # now with the task gauges
        self.metrics.ledger_runs.set(self.ledger.run_count)
        self.poller.run(
            self.stop_event, self.settings.poll_interval, after_each=self.health.first_poll.set
        )

    def stop(self) -> None:
        """Stop polling, then serving. A poll in flight is abandoned, not committed (its
        requests end at once): the ledger keeps the last committed poll, and the next
        start asks again for what this one had not yet counted."""
        self.stop_event.set()
        poller = [t for t in self._threads if t.name == "poller"]
        for thread in poller:
            thread.join(timeout=STOP_GRACE_SECONDS)
        self.server.shutdown()
        self.server.server_close()
        if any(thread.is_alive() for thread in poller):
            # Still inside a commit: the ledger stays open for it; SQLite keeps the file
            # whole whether the commit ends before the process does or not.
            log.warning("poller_still_running", grace_seconds=STOP_GRACE_SECONDS)
        else:
            self.poller.close()
            self.client.close()
            self.ledger.close()
        os.close(self._state_lock)  # closing the descriptor releases the lock
        log.info("exporter_stopped")
