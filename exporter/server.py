"""HTTP endpoints: /metrics from cached bytes, /healthz, /readyz and a landing page."""

from __future__ import annotations

import html
import io
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

import structlog

from exporter import __version__
from exporter.connections import (
    BoundedServer,
    HeadTooLarge,
    NoiseObserver,
    RequestReader,
    ServerLimits,
    SocketWriter,
    handshake,
    read_head,
)
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


def make_server(
    host: str,
    port: int,
    exposition: Exposition,
    health: Health,
    *,
    web: WebConfig | None = None,
    limits: ServerLimits | None = None,
    on_noise: NoiseObserver = lambda _: None,
) -> BoundedServer:
    """A threaded server within ``limits`` (exporter.connections); network noise is
    counted through ``on_noise(reason)``."""
    config = web or WebConfig()
    bounds = limits or ServerLimits()

    class Handler(BaseHTTPRequestHandler):
        server_version = f"neo-exporter/{__version__}"
        protocol_version = "HTTP/1.1"
        # A request line too broken to name a version is answered as HTTP/1.0, with a
        # status line and headers, not as HTTP/0.9's bare body.
        default_request_version = "HTTP/1.0"
        server: BoundedServer

        def version_string(self) -> str:
            return self.server_version  # not the Python version

        def setup(self) -> None:
            self.connection = self.request
            tls = config.tls
            if tls is not None:
                handshake(self.request, bounds.request_timeout)
                if not tls.peer_allowed(self.request.getpeercert()):
                    raise ssl.SSLError("client certificate without an allowed SAN")
            self.reader = RequestReader(self.request, bounds)
            self.rfile = io.BufferedReader(self.reader)
            self.wfile = SocketWriter(self.request)

        def handle_one_request(self) -> None:
            self.server.waiting(self.request)
            try:
                head = read_head(self.rfile, bounds)
            except HeadTooLarge:
                self.close_connection = True
                self.request.settimeout(bounds.write_timeout)
                self.command, self.requestline = "", ""
                self.request_version = self.default_request_version
                self.send_error(431, "request head too large")
                return
            if head is None:
                self.close_connection = True
                return
            self.server.working(self.request)
            line, _, fields = head.partition(b"\n")
            self.raw_requestline = line + b"\n"
            stream, self.rfile = self.rfile, io.BufferedReader(io.BytesIO(fields))
            try:
                parsed = self.parse_request()
            finally:
                self.rfile = stream
            self.reader.next_request()
            self.request.settimeout(bounds.write_timeout)
            if not parsed:
                return
            if self.headers.get("Content-Length", "0").strip() not in ("", "0") or (
                "Transfer-Encoding" in self.headers
            ):
                # A body is never read: the connection ends with this answer, so what
                # the body holds is never taken for a request of its own.
                self.close_connection = True
            method = getattr(self, f"do_{self.command}", None)
            if method is None:
                self.send_error(501, "unsupported method")
                return
            method()
            self.wfile.flush()

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            if code in (400, 414, 431, 501, 505):
                self.server.noise("malformed_request", self.client_address, str(code))
                self.close_connection = True
            super().send_error(code, message, explain)

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
            if self.close_connection:
                self.send_header("Connection", "close")
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in {**config.headers, **(extra or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

    server = BoundedServer((host, port), Handler, bounds, on_noise)
    if config.tls is not None:
        server.socket = config.tls.context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    return server
