"""A misbehaving API on loopback: answers that trickle, never end, or never come.

Each connection reads one request, then does what ``mode`` says until the client goes
away or the server is closed:

- ``trickle_headers``: a status line, then header bytes one at a time, without end;
- ``trickle_body``: headers announcing a body, then its bytes one at a time, without end;
- ``endless``: a chunked body sent as fast as the client reads it, up to ``cap`` bytes,
  then cut (an endless body, bounded so that a client without a size bound fails with
  a wrong answer instead of eating the machine's memory);
- ``hang``: nothing at all;
- ``reset``: the connection closed at once.

``asked`` is set once a request has been read.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

PAUSE = 0.05  # between two trickled bytes


class BadApi:
    def __init__(self, mode: str, *, cap: int = 64 << 20) -> None:
        self.mode = mode
        self.cap = cap
        self.sent = 0  # body bytes sent, all connections
        self.requests = 0
        self.asked = threading.Event()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def __enter__(self) -> BadApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(65536)
                if not data:
                    return
                request += data
            self.requests += 1
            self.asked.set()
            for piece in self._answer():
                if self._closed.is_set():
                    return
                conn.sendall(piece)
                if self.mode.startswith("trickle"):
                    self._closed.wait(PAUSE)

    def _answer(self) -> Iterator[bytes]:
        if self.mode == "reset":
            return
        if self.mode == "hang":
            self._closed.wait()
            return
        if self.mode == "trickle_headers":
            yield b"HTTP/1.1 200 OK\r\n"
            while True:
                yield b"X"
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        if self.mode == "trickle_body":
            yield head + b"Content-Length: 100000000\r\n\r\n["
            while True:
                self.sent += 1
                yield b" "
        chunk = b" " * 65536
        yield head + b"Transfer-Encoding: chunked\r\n\r\n"
        while self.sent < self.cap:
            self.sent += len(chunk)
            yield b"10000\r\n" + chunk + b"\r\n"
