"""The HTTP server's connections: how many, how long each may take, how big a request.

The standard library's threaded server gives each connection a thread and no bounds.
Here each bound is explicit (``ServerLimits``):

- at most ``max_connections`` connections, and so worker threads, at once. When all
  are taken, a new connection takes the place of the one that has waited longest for
  a request (idle, or trickling its head), which is closed: slow clients cannot keep
  a scrape out. When every connection is busy answering, new ones wait in the
  kernel's listen queue of 1,024 (a burst of scrapes queues, not fails);
- a request's head (request line and headers) must arrive whole within
  ``request_timeout`` of its first byte (of the connection, for the first request),
  and within ``max_head_bytes`` and ``max_headers``: a trickle or a flood of headers
  holds a connection for seconds and kilobytes, before authentication;
- a TLS handshake must finish within ``request_timeout``;
- an answer must be sent within ``write_timeout``; a keep-alive connection idle for
  ``idle_timeout`` is closed;
- accept() failing for lack of file descriptors backs off (5 ms doubling to 1 s)
  instead of spinning.

What a client does wrong (a failed handshake, a hang-up mid-answer, a malformed or
oversized request, a timeout) is routine network noise: a debug line and a count by
reason through ``on_noise``, never a traceback.
"""

from __future__ import annotations

import errno
import io
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any

import structlog

log = structlog.get_logger(__name__)

NoiseObserver = Callable[[str], None]
NOISE_REASONS = (
    "tls_handshake",
    "client_gone",
    "timeout",
    "malformed_request",
    "accept_failed",
    "evicted",
)
# How long and how much a closing connection is read before it is closed.
LINGER_SECONDS = 0.5
LINGER_READS = 4
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


@dataclass(frozen=True)
class ServerLimits:
    """The HTTP server's bounds; see the module docstring."""

    max_connections: int = 64
    request_timeout: float = 10.0
    idle_timeout: float = 30.0
    write_timeout: float = 30.0
    max_head_bytes: int = 16_384
    max_headers: int = 64


class HeadTooLarge(Exception):
    """A request head past ``max_head_bytes`` or ``max_headers``."""


class RequestReader(io.RawIOBase):
    """A connection's reads, each bounded by the current request's deadline.

    Before a request starts, a read waits up to ``idle_timeout`` (``request_timeout``
    for a connection's first request); from its first byte, the whole head must come
    within ``request_timeout``: each read waits only for what is left of it."""

    def __init__(self, sock: socket.socket, limits: ServerLimits) -> None:
        self.sock = sock
        self.limits = limits
        self.deadline: float | None = time.monotonic() + limits.request_timeout
        self.started = False  # a byte of the current request has come

    def readable(self) -> bool:
        return True

    def next_request(self) -> None:
        self.deadline, self.started = None, False

    def readinto(self, buffer: Any) -> int:
        if self.deadline is None:
            wait = self.limits.idle_timeout
        else:
            wait = self.deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError("request not received in time")
        self.sock.settimeout(wait)
        try:
            count = self.sock.recv_into(buffer)
        except TimeoutError:
            if self.deadline is None:
                return 0  # a keep-alive connection left idle: closed, not an error
            raise
        if count and not self.started:
            self.started = True
            if self.deadline is None:
                self.deadline = time.monotonic() + self.limits.request_timeout
        return count


class SocketWriter(io.BufferedIOBase):
    """A connection's writes, each sent whole (within the socket's timeout)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any, /) -> int:
        self.sock.sendall(data)
        return len(data)


def read_head(reader: io.BufferedIOBase, limits: ServerLimits) -> bytes | None:
    """A request's head, up to and with its blank line; None at a clean end of stream.

    Raises HeadTooLarge past the limits, TimeoutError past the deadline."""
    head = b""
    lines = 0
    while True:
        line = reader.readline(limits.max_head_bytes - len(head) + 1)
        if not line:
            return None  # the end of the stream, between requests or mid-head
        head += line
        lines += 1
        if len(head) > limits.max_head_bytes or lines > limits.max_headers + 1:
            raise HeadTooLarge
        if line in (b"\r\n", b"\n") and lines > 1:
            return head
        if line in (b"\r\n", b"\n"):  # blank lines before a request line are skipped
            head, lines = b"", 0


def handshake(sock: ssl.SSLSocket, timeout: float) -> None:
    """The TLS handshake of an accepted socket, whole within ``timeout``."""
    deadline = time.monotonic() + timeout
    sock.setblocking(False)
    try:
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                wanted: tuple[list[Any], list[Any]] = ([sock], [])
            except ssl.SSLWantWriteError:
                wanted = ([], [sock])
            left = deadline - time.monotonic()
            if left <= 0 or not any(select.select(*wanted, [], left)[:2]):
                raise TimeoutError("TLS handshake not finished in time")
    finally:
        sock.setblocking(True)


class BoundedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a bound on connections and a backoff on accept failures."""

    daemon_threads = True  # a stalled client never blocks shutdown
    allow_reuse_address = True
    request_queue_size = 1024  # a burst of scrapes waits here, not in SYN retries

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[Any],
        limits: ServerLimits,
        on_noise: NoiseObserver,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.limits = limits
        self.on_noise = on_noise
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._count_lock = threading.Lock()
        self.active = 0  # connections accepted and not yet closed (each has a thread)
        # Connections waiting for a request (a head not yet whole), and since when.
        self._waiting: dict[socket.socket, float] = {}
        self._sleep = sleep
        self._backoff = 0.0
        super().__init__(address, handler)

    def noise(self, reason: str, client: Any, error: str) -> None:
        host = client[0] if isinstance(client, tuple) else str(client)
        log.debug("http_connection_error", reason=reason, client=host, error=error)
        self.on_noise(reason)

    def waiting(self, sock: socket.socket) -> None:
        """``sock`` waits for a request: it may give its place to a new connection."""
        with self._count_lock:
            self._waiting[sock] = time.monotonic()

    def working(self, sock: socket.socket) -> None:
        """``sock`` has a whole request: it keeps its place until answered."""
        with self._count_lock:
            self._waiting.pop(sock, None)

    def _evict(self) -> None:
        """Close the connection that has waited longest for a request, if any."""
        with self._count_lock:
            if not self._waiting:
                return
            sock = min(self._waiting, key=self._waiting.__getitem__)
            del self._waiting[sock]
        try:
            peer = sock.getpeername()
            # The plain socket's shutdown, also for TLS: it wakes the connection's
            # thread from its read without touching the TLS state that thread uses.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            return  # closed meanwhile: its place is free anyway
        self.noise("evicted", peer, "every connection taken")

    def get_request(self) -> tuple[socket.socket, Any]:
        if not self._slots.acquire(blocking=False):
            self._evict()
            # The wait is short so that shutdown() is not held up; the serve loop asks
            # again, and meanwhile new connections queue in the kernel.
            if not self._slots.acquire(timeout=0.5):
                raise OSError("every connection slot is busy")
        try:
            accepted = self.socket.accept()
        except OSError as exc:
            self._slots.release()
            if exc.errno in _OUT_OF_DESCRIPTORS:
                self._backoff = min(1.0, self._backoff * 2 or 0.005)
                if self._backoff == 0.005:
                    log.warning("http_accept_failed", error=exc.strerror)
                self.on_noise("accept_failed")
                self._sleep(self._backoff)
            raise
        self._backoff = 0.0
        with self._count_lock:
            self.active += 1
        self.waiting(accepted[0])
        return accepted

    def shutdown_request(self, request: Any) -> None:
        """Close a connection, reading for a moment what the client still sends: closing
        a socket with unread input resets it, and a reset can drop the answer (a 431)
        before the client has read it."""
        try:
            request.shutdown(socket.SHUT_WR)
            request.settimeout(LINGER_SECONDS)
            for _ in range(LINGER_READS):
                if not request.recv(65536):
                    break
        except OSError:
            pass  # gone already, or a reset: nothing left to save
        finally:
            with self._count_lock:
                self.active -= 1
                self._waiting.pop(request, None)
            self._slots.release()
            self.close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A request that failed: a client's doing is noise, anything else is ours."""
        exc = sys.exc_info()[1]
        reason = noise_reason(exc)
        if reason is not None:
            self.noise(reason, client_address, type(exc).__name__)
            return
        client = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        log.error("request_failed", client=client, error=type(exc).__name__, exc_info=exc)


def noise_reason(exc: BaseException | None) -> str | None:
    """The noise reason of an exception met while serving a client, or None if it is
    not the client's doing."""
    if isinstance(exc, TimeoutError):  # socket.timeout too
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return "tls_handshake"
    if isinstance(exc, ConnectionError):
        return "client_gone"
    return None
