"""Wiring: builds the ledger, client, poller, exposition and server from one Settings."""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import httpx
import structlog
from prometheus_client import CollectorRegistry, disable_created_metrics

from exporter.balance import BalanceReader
from exporter.client import NeoClient, RetryPolicy
from exporter.collector import UsageCollector
from exporter.connections import ServerLimits
from exporter.errors import ExporterError, IdentityError, StateError
from exporter.exposition import Exposition
from exporter.identity import IdentityCheck, new_ledger_if_other
from exporter.ledger import Ledger, PollChanges
from exporter.logs import register_secret
from exporter.poll import Poller, Timing
from exporter.selfmetrics import SelfMetrics
from exporter.server import Health, make_server
from exporter.settings import Settings, browser_url
from exporter.statefile import StateGuard, lock_state
from exporter.webconfig import WebConfig, load_web_config

if TYPE_CHECKING:
    from exporter.connections import BoundedServer


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


def probe_listen(host: str, port: int) -> None:
    """Raise the OSError binding *host*:*port* would meet (in use, no such address), before
    anything is created on disk; the server binds it for real once the ledger is open."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


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
        new_ledger: bool = False,
        on_fatal: Callable[[], object] = lambda: None,
    ) -> None:
        # *_created series only add cardinality here (the function is untyped upstream)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.settings = settings
        self.health = Health()
        self.metrics = SelfMetrics(process=process_metrics)
        self.stop_event = threading.Event()  # set: requests in flight and retry waits end
        # What a poll met that the daemon cannot go on from (another account's ledger):
        # on_fatal is called, and the command exits with it.
        self.fatal: ExporterError | None = None
        self._on_fatal = on_fatal
        self._credential = credential
        self._rejected = False  # the API answered 401 or 403: read a key file again
        # Everything that can be refused is, before anything is created on disk.
        web = load_web_config(settings.web_config_file) if settings.web_config_file else WebConfig()
        probe_listen(host, port)
        self._state_lock = lock_state(settings.state_path)
        try:
            self.client = NeoClient(
                settings.api_url,
                credential,
                timeout=settings.request_timeout,
                max_concurrent=settings.max_concurrent_requests,
                retry=RetryPolicy(
                    max_retries=settings.max_retries, backoff_max=settings.retry_backoff_max
                ),
                transport=transport,
                on_request=self._observe_request,
                stop=self.stop_event,
            )
            if new_ledger:
                new_ledger_if_other(settings.state_path, self.client, settings.api_url, clock())
            self.ledger = Ledger(
                settings.state_path,
                buckets=bucket_settings(settings),
                max_label_values=settings.max_label_values,
                defer_index=True,  # loaded by the poller thread, after serving starts
            )
            self.identity = IdentityCheck(self.ledger, self.client, settings.api_url)
            self.identity.check_url()
            self.guard = StateGuard(settings.state_path, self._state_lock)
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
            self.poller = Poller(
                self.client,
                self.ledger,
                self.metrics,
                timing=Timing(
                    lookback=settings.lookback,
                    full_list_interval=settings.full_list_interval,
                    account_interval=settings.reconcile_interval,
                    sweep_lookback=settings.sweep_lookback,
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
                before_poll=self._before_poll,
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
            for part in ("ledger", "client"):  # a half-built exporter keeps nothing open
                if hasattr(self, part):
                    getattr(self, part).close()
            os.close(self._state_lock)
            raise
        self._threads: list[threading.Thread] = []

    def _before_poll(self) -> None:
        """What must hold for a poll to count: the state file and lock are the ones
        opened, and the credential's account is the ledger's. Either failing makes
        /readyz answer 503; another account's ledger also stops the daemon."""
        try:
            self.guard.check()
            self._reload_credential()
            self.identity.check_account()
        except IdentityError as exc:
            self.health.failing = "the ledger counts another account"
            self.fatal = exc
            self._on_fatal()
            raise
        except StateError as exc:
            self.health.failing = f"state file unusable: {exc}"
            raise
        self.health.failing = None

    def _observe_request(self, endpoint: str, code: str) -> None:
        self.metrics.observe_request(endpoint, code)
        if code in ("401", "403"):
            self._rejected = True

    def _reload_credential(self) -> None:
        """After the API rejected the credential, read its file again: a rotated key
        takes effect at the next poll, without a restart (and the account behind it is
        checked again before anything is counted)."""
        settings = self.settings
        if not self._rejected or (settings.api_key_file or settings.api_token_file) is None:
            return
        self._rejected = False
        credential = settings.require_credential()  # ConfigError if it cannot be read
        if credential == self._credential:
            return
        register_secret(credential[1])
        self.client.use_credential(credential)
        self._credential = credential
        self.identity.confirmed = False
        log.info("credential_reloaded", kind=credential[0])

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
            url=browser_url(self.url),  # an address to browse to, not 0.0.0.0
            listen_address=self.settings.listen_address,
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
        if self._threads:  # shutdown() waits for a serve_forever() that was started
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
