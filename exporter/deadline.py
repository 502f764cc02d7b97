"""Request deadlines below httpx: each socket read bounded by the request's whole deadline.

httpx's timeouts are per operation: a server that trickles a byte every few seconds,
in its headers or its body, never trips a read timeout and holds a request forever.
``DeadlineBackend`` is the network layer httpx's connection pool talks to; every read
and write it does waits at most until the deadline of the request running on the
calling thread, and gives up at once when the stop event is set (a signal), so a
shutdown never waits for an answer.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

# Reads are cut into slices this long so that a stop is noticed within one slice.
SLICE_SECONDS = 0.2


class _Deadlines(threading.local):
    at: float | None = None


class Interrupted(httpcore.ReadTimeout):
    """The stop event was set while a request was waiting on the network."""


class DeadlineBackend(httpcore.NetworkBackend):
    """A network backend whose streams honour ``deadline()`` and ``stop``."""

    def __init__(self, inner: httpcore.NetworkBackend, stop: threading.Event) -> None:
        self._inner = inner
        self.stop = stop
        self._deadlines = _Deadlines()

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Every network wait of this thread within the block ends ``seconds`` from now."""
        self._deadlines.at = time.monotonic() + seconds
        try:
            yield
        finally:
            self._deadlines.at = None

    def remaining(self, timeout: float | None) -> float:
        """How long one wait may last: the operation's own timeout, cut to the deadline.

        Raises Interrupted once the stop event is set, and httpcore.ReadTimeout once the
        deadline has passed."""
        if self.stop.is_set():
            raise Interrupted("stopped")
        at = self._deadlines.at
        left = timeout if timeout is not None else 3600.0
        if at is not None:
            left = min(left, at - time.monotonic())
        if left <= 0:
            raise httpcore.ReadTimeout("request deadline passed")
        return left

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.connect_tcp(
            host, port, self.remaining(timeout), local_address, socket_options
        )
        return _DeadlineStream(inner, self)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.connect_unix_socket(path, self.remaining(timeout), socket_options)
        return _DeadlineStream(inner, self)

    def sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: DeadlineBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # Waited in slices, each a timeout of its own that reads nothing: asked again
        # until data comes, the stop event is set or the time allowed has passed.
        ends = time.monotonic() + self._backend.remaining(timeout)
        while True:
            left = min(self._backend.remaining(ends - time.monotonic()), SLICE_SECONDS)
            try:
                return self._inner.read(max_bytes, left)
            except httpcore.ReadTimeout:
                if time.monotonic() >= ends:
                    raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.remaining(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = self._backend.remaining(timeout)
        inner = self._inner.start_tls(ssl_context, server_hostname, left)
        return _DeadlineStream(inner, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def deadline_transport(
    stop: threading.Event, limits: httpx.Limits
) -> tuple[httpx.HTTPTransport, DeadlineBackend]:
    """httpx's own transport (TLS, proxies from the environment, pooling as usual), its
    connection pool talking to the network through a DeadlineBackend."""
    transport = httpx.HTTPTransport(limits=limits)
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.ConnectionPool) or not hasattr(pool, "_network_backend"):
        # httpx or httpcore changed shape: refuse rather than run without deadlines.
        raise RuntimeError("httpx transport without an httpcore connection pool")
    backend = DeadlineBackend(pool._network_backend, stop)
    pool._network_backend = backend
    return transport, backend
