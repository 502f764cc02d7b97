"""HTTP endpoints: /metrics from cached bytes, /healthz, /readyz and a landing page."""

from __future__ import annotations

import html
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from exporter import __version__
from exporter.exposition import Exposition, accepts_gzip, wants_openmetrics
from exporter.webconfig import WebConfig

log = structlog.get_logger(__name__)

LANDING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Neo Exporter</title></head>
<body><h1>Neo Exporter</h1>
<p>Prometheus exporter for ProjectDiscovery Neo task usage, version {version}.</p>
<ul>
<li><a href="/metrics">Metrics</a></li>
<li><a href="/healthz">Health</a></li>
<li><a href="/readyz">Readiness</a></li>
</ul></body></html>
"""


class Health:
    """Readiness: the ledger is loaded, a first poll has finished since start-up, and
    nothing keeps polls from counting."""

    def __init__(self) -> None:
        self.state_loaded = threading.Event()
        self.first_poll = threading.Event()
        # Why polls cannot count now (the state file is gone, say), until they can again.
        self.failing: str | None = None

    def ready(self) -> tuple[bool, str]:
        if self.failing is not None:
            return False, self.failing
        if not self.state_loaded.is_set():
            return False, "state not loaded"
        if not self.first_poll.is_set():
            return False, "first poll not finished"
        return True, "ready"


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled client never blocks shutdown
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A request that failed, logged as an event instead of a traceback on stderr.

        A client that goes away mid-answer (a scrape timed out, a probe that hangs up
        early) is routine: a debug line. Anything else is the exporter's fault: an error
        with its traceback."""
        exc = sys.exc_info()[1]
        client = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("client_disconnected", client=client, error=type(exc).__name__)
            return
        log.error("request_failed", client=client, error=type(exc).__name__, exc_info=exc)


def make_server(
    host: str,
    port: int,
    exposition: Exposition,
    health: Health,
    *,
    web: WebConfig | None = None,
    idle_timeout: float = 30.0,
) -> ThreadingHTTPServer:
    """A threaded server; each connection gets a thread and a socket timeout."""
    config = web or WebConfig()

    class Handler(BaseHTTPRequestHandler):
        server_version = f"neo-exporter/{__version__}"
        protocol_version = "HTTP/1.1"
        # A client that stops sending is dropped after this many seconds.
        timeout = idle_timeout

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http_request", client=self.client_address[0], line=format % args)

        def do_HEAD(self) -> None:
            self._dispatch(head=True)

        def do_GET(self) -> None:
            self._dispatch(head=False)

        def _refuse(self) -> None:
            self._send(
                405,
                b"method not allowed\n",
                "text/plain; charset=utf-8",
                extra={"Allow": "GET, HEAD"},
            )

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

        def _dispatch(self, *, head: bool) -> None:
            if not config.authorized(self.headers.get("Authorization")):
                self._send(
                    401,
                    b"unauthorized\n",
                    "text/plain; charset=utf-8",
                    extra={"WWW-Authenticate": 'Basic realm="neo-exporter"'},
                )
                return
            path = self.path.split("?", 1)[0]
            routes: dict[str, Callable[[], tuple[int, bytes, str, dict[str, str]]]] = {
                "/metrics": self._metrics,
                "/healthz": lambda: (200, b"ok\n", "text/plain; charset=utf-8", {}),
                "/readyz": self._ready,
                "/": lambda: (
                    200,
                    LANDING.format(version=html.escape(__version__)).encode(),
                    "text/html; charset=utf-8",
                    {},
                ),
            }
            route = routes.get(path)
            if route is None:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")
                return
            status, body, content_type, extra = route()
            self._send(status, body, content_type, extra=extra, head=head)

        def _metrics(self) -> tuple[int, bytes, str, dict[str, str]]:
            compress = accepts_gzip(self.headers.get("Accept-Encoding", ""))
            body, content_type = exposition.render(
                openmetrics=wants_openmetrics(self.headers.get("Accept", "")), compress=compress
            )
            extra = {"Vary": "Accept, Accept-Encoding"}
            if compress:
                extra["Content-Encoding"] = "gzip"
            return 200, body, content_type, extra

        def _ready(self) -> tuple[int, bytes, str, dict[str, str]]:
            ok, why = health.ready()
            return (200 if ok else 503), f"{why}\n".encode(), "text/plain; charset=utf-8", {}

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str,
            *,
            extra: dict[str, str] | None = None,
            head: bool = False,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

    server = _Server((host, port), Handler)
    if config.tls is not None:
        server.socket = config.tls.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    return server
