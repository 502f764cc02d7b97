"""The HTTP server's bounds, over loopback: connections, request deadlines, head sizes,
bodies that are never taken for requests, accept backoff, and noise counted quietly."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest
import structlog.testing
from prometheus_client import CollectorRegistry

from exporter.connections import BoundedServer, ServerLimits
from exporter.exposition import Exposition
from exporter.selfmetrics import SelfMetrics
from exporter.server import Health, make_server
from exporter.webconfig import WebConfig, load_web_config
from tests.conftest import self_signed, write_web_config

HANG_GUARD = 20.0  # seconds a socket read may take before the test calls it hung
# Deadlines that a loaded machine meets, for tests about something else; and a short
# one for the tests about deadlines.
LIMITS = ServerLimits(max_connections=4, request_timeout=10, idle_timeout=10)
SHORT = ServerLimits(max_connections=4, request_timeout=0.5, idle_timeout=2)


class Served:
    """A server on loopback and the noise it reported."""

    def __init__(self, limits: ServerLimits, web: WebConfig | None = None) -> None:
        self.noise: list[str] = []
        self.live: list[int] = []  # connections being served at each noise report
        exposition = Exposition(CollectorRegistry(), SelfMetrics(process=False).registry)
        self.server = make_server(
            "127.0.0.1", 0, exposition, Health(), web=web, limits=limits, on_noise=self._note
        )
        self.port = self.server.server_address[1]
        serving = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        serving.start()

    def _note(self, reason: str) -> None:
        self.live.append(self.server.active)
        self.noise.append(reason)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.settimeout(HANG_GUARD)
        return sock

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served() -> Iterator[Served]:
    running = Served(LIMITS)
    yield running
    running.close()


@pytest.fixture
def hasty() -> Iterator[Served]:
    """A server whose request deadline is half a second."""
    running = Served(SHORT)
    yield running
    running.close()


def answers(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_a_body_is_never_served_as_a_request(served: Served) -> None:
    """A POST (or GET) whose body is itself a request: one answer, then the connection
    ends; the same with a chunked body."""
    inner = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    for framing in (
        b"Content-Length: %d\r\n\r\n" % len(inner) + inner,
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(inner) + inner + b"\r\n0\r\n\r\n",
    ):
        for method in (b"POST", b"GET"):
            with served.connect() as sock:
                sock.sendall(method + b" /metrics HTTP/1.1\r\nHost: x\r\n" + framing)
                received = answers(sock)
            assert received.count(b"HTTP/1.1 ") == 1, received
            assert b"Connection: close" in received


def test_a_request_head_has_a_size_bound(served: Served) -> None:
    """Seventy headers of 300 bytes, or one of 20 KB: 431 and the connection closed."""
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 300) for i in range(70))
    for headers in (many, b"X-Big: " + b"v" * 20_000 + b"\r\n"):
        with served.connect() as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
            received = answers(sock)
        assert received.startswith(b"HTTP/1.1 431 "), received[:100]
    assert served.noise == ["malformed_request", "malformed_request"]


def test_a_trickled_request_head_is_dropped_at_its_deadline(hasty: Served) -> None:
    """A byte every 50 ms never trips a per-read timeout; the head's deadline ends it."""
    with hasty.connect() as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        closed = False
        sock.settimeout(0.05)  # the trickle's pace
        for _ in range(int(HANG_GUARD / 0.05)):
            try:
                sock.sendall(b"X")
                closed = sock.recv(1) == b""
            except TimeoutError:
                continue
            except OSError:  # reset: closed by the server
                closed = True
            if closed:
                break
        assert closed, "the server kept a trickling request open"
    assert hasty.noise == ["timeout"]


def test_connections_and_threads_are_bounded(hasty: Served) -> None:
    """Ten connections that send nothing: at most four are served at once, and each is
    closed by the server (its place taken by a newer one, or at its first request's
    deadline)."""
    idle = [hasty.connect() for _ in range(10)]
    try:
        for sock in idle:
            assert sock.recv(1) == b""  # closed by the server, not by the test
    finally:
        for sock in idle:
            sock.close()
    # Six evictions and four timeouts on a quiet machine; on a loaded one a connection
    # may reach its deadline before a newer one takes its place.
    assert len(hasty.noise) == 10
    assert set(hasty.noise) <= {"evicted", "timeout"}
    assert max(hasty.live) <= SHORT.max_connections


def test_slow_clients_cannot_keep_a_scrape_out() -> None:
    """Every place taken by a client trickling its request head (and a deadline of a
    minute): a scrape is still answered, in the place of the slowest."""
    running = Served(ServerLimits(max_connections=4, request_timeout=60, idle_timeout=60))
    slow = [running.connect() for _ in range(8)]
    try:
        for sock in slow:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        url = f"http://127.0.0.1:{running.port}/healthz"
        for _ in range(3):
            assert httpx.get(url, timeout=HANG_GUARD).status_code == 200
    finally:
        for sock in slow:
            sock.close()
        running.close()
    assert running.noise.count("evicted") >= 3
    assert max(running.live) <= 4


def test_accept_backs_off_when_out_of_file_descriptors() -> None:
    """accept() failing with EMFILE sleeps 5 ms, doubling to 1 s, instead of spinning;
    a connection accepted again starts over."""
    slept: list[float] = []
    server = BoundedServer(
        ("127.0.0.1", 0), BaseHTTPRequestHandler, LIMITS, lambda _: None, sleep=slept.append
    )
    listening = server.socket
    failures = iter(range(10))

    class Exhausted:
        def accept(self) -> tuple[socket.socket, object]:
            if next(failures, None) is None:
                return listening.accept()
            raise OSError(errno.EMFILE, "Too many open files")

    server.socket = Exhausted()  # type: ignore[assignment]
    try:
        for _ in range(10):
            with pytest.raises(OSError, match="Too many open files"):
                server.get_request()
        assert slept == [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0]
        with socket.create_connection(listening.getsockname()):
            conn, _ = server.get_request()
            conn.close()
        server.shutdown_request(conn)
        failures = iter(range(1))
        with pytest.raises(OSError):
            server.get_request()
        assert slept[-1] == 0.005
    finally:
        listening.close()


def test_plain_http_to_the_tls_port_is_quiet_noise(tmp_path: Path) -> None:
    self_signed(tmp_path, "server")
    body = "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
    running = Served(LIMITS, load_web_config(write_web_config(tmp_path, body)))
    try:
        with structlog.testing.capture_logs() as events:
            for _ in range(3):
                with running.connect() as sock:
                    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                    answers(sock)
    finally:
        running.close()
    assert running.noise == ["tls_handshake"] * 3
    assert {(e["event"], e["log_level"]) for e in events} == {("http_connection_error", "debug")}


def test_malformed_requests_and_odd_headers(served: Served) -> None:
    """A malformed request line is a 400 counted as noise; the Server header names the
    exporter and no Python version."""
    with served.connect() as sock:
        sock.sendall(b"NOT A REQUEST\r\n\r\n")
        assert answers(sock).startswith(b"HTTP/1.1 400 ")
    with served.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = answers(sock)
    server_header = next(h for h in received.split(b"\r\n") if h.startswith(b"Server:"))
    assert server_header.startswith(b"Server: neo-exporter/")
    assert b"Python" not in received
    assert served.noise == ["malformed_request"]


def test_keep_alive_and_http_1_0_as_before(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answers(sock).count(b"HTTP/1.1 200 ") == 3
    with served.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        received = answers(sock)  # closed after one answer, as HTTP/1.0 expects
        assert received.startswith(b"HTTP/1.1 200 ")
        assert received.endswith(b"\r\n\r\nok\n")
    assert served.noise == []
