"""The simulated Neo API as a real HTTP server on loopback, with auth, roles and faults."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from exporter.simulator import queries, summary, views
from exporter.simulator.faults import Faults
from exporter.simulator.world import World

DEMO_API_KEY = "neo_sk_demo" + "0" * 28
DEMO_TOKEN = "sim.demo-token.0123456789abcdef"  # noqa: S105 - a public demo credential
ROLES = ("solo", "admin", "member")

STREAMS = "/api/v1/usage/streams"
TASK_USAGES = "/api/v1/usage/tasks"
TASK_USAGE = "/api/v1/usage/tasks/{task_id}"
SUMMARY = "/api/v1/usage/summary"
TASKS = "/api/v1/tasks"
TASK = "/api/v1/tasks/{id}"
CREDITS = "/api/v1/billing/credits"
USER = "/api/v1/user"
UNKNOWN = "unknown"
FIXED = {STREAMS, TASK_USAGES, SUMMARY, TASKS, CREDITS, USER}
# Who the simulated key belongs to (GET /api/v1/user): a solo user, or with a team
# world, a team admin. Tests set ``SimulatedApi.user`` to stand for another account.
SOLO_USER = {"email": "demo@example.com", "role": "user", "team": None}
TEAM_USER = {
    "email": "admin@example.com",
    "role": "user",
    "team": {"id": "team-demo", "name": "Demo team", "auto_joined": False, "role": "admin"},
}
KINDS = {
    400: "invalid request",
    401: "unauthorized request",
    403: "forbidden request",
    404: "not found",
    405: "method not allowed",
    429: "rate limited",
}

Answer = tuple[int, bytes, dict[str, str]]


class ApiProblem(Exception):
    """An error answer: HTTP status, stable code and a human message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def route(path: str) -> tuple[str, str | None]:
    """The endpoint template a path belongs to, and its path parameter."""
    path = path.rstrip("/") or "/"
    if path in FIXED:
        return path, None
    for prefix, template in ((TASK_USAGES + "/", TASK_USAGE), (TASKS + "/", TASK)):
        if path.startswith(prefix) and "/" not in path[len(prefix) :]:
            return template, unquote(path[len(prefix) :])
    return UNKNOWN, None


def _json(value: Any) -> bytes:
    def default(obj: object) -> object:
        if isinstance(obj, Decimal):
            return float(obj)
        raise TypeError(type(obj).__name__)

    return json.dumps(value, separators=(",", ":"), default=default).encode()


def error_body(status: int, code: str, message: str) -> bytes:
    kind = KINDS.get(status, "internal error")
    return _json(
        {
            "error": message,
            "code": code,
            "error_id": str(uuid.uuid4()),
            "kind": kind,
            "message": f"{kind}: {message}",
        }
    )


class Journal(list[str]):
    """A request journal (``SimulatedApi.journal``) that also says when a request has
    come in: ``came`` is set at the first, so a test waits for it instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.came = threading.Event()

    def append(self, item: str) -> None:
        super().append(item)
        self.came.set()


class SimulatedApi:
    """Serves a ``World`` over HTTP like the Neo API does; ``start()`` then use ``url``."""

    def __init__(
        self,
        world: World,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = DEMO_API_KEY,
        token: str | None = DEMO_TOKEN,
        role: str = "solo",
        faults: Faults | None = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        self.world = world
        self.api_key = api_key
        self.token = token
        self.role = role
        self.faults = faults if faults is not None else Faults()
        self.user: dict[str, Any] = dict(TEAM_USER if world.team else SOLO_USER)
        self.requests: Counter[tuple[str, int]] = Counter()
        # When a list, every request's method and target, in the order answered.
        self.journal: list[str] | None = None
        self._count_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.api = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{name}]" if ":" in name else name
        return f"http://{shown}:{port}"

    def start(self) -> SimulatedApi:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                name="neo-simulator", daemon=True,
            )  # fmt: skip
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        with self._count_lock:
            open_sockets = list(self._connections)
        for sock in open_sockets:  # wake handler threads parked on idle keep-alive sockets
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()

    def __enter__(self) -> SimulatedApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __str__(self) -> str:
        return self.url

    def count(self, template: str, status: int) -> None:
        with self._count_lock:
            self.requests[(template, status)] += 1

    def track(self, sock: socket.socket, opened: bool) -> None:
        with self._count_lock:
            if opened:
                self._connections.add(sock)
            else:
                self._connections.discard(sock)

    # -- answering -----------------------------------------------------------------------

    def answer(self, method: str, target: str, headers: Callable[[str], str | None]) -> Answer:
        """The full answer to one request, faults included."""
        split = urlsplit(target)
        template, ident = route(split.path)
        if self.journal is not None:
            with self._count_lock:
                self.journal.append(f"{method} {target}")
        faults = self.faults
        if faults.latency > 0:
            time.sleep(faults.latency)
        failure = faults.failure(template)
        if failure is not None:
            body = error_body(failure.status, failure.code, failure.error)
            return failure.status, body, failure.headers
        try:
            if not self._authorized(headers):
                raise ApiProblem(401, "unauthorized", "missing or invalid credentials")
            if template == UNKNOWN:
                raise ApiProblem(404, "not_exists", "no such endpoint")
            if method != "GET":
                raise ApiProblem(405, "method_not_allowed", f"{method} is not supported here")
            if self.role == "member" and template.startswith("/api/v1/usage"):
                raise ApiProblem(403, "forbidden", "team members cannot read usage data")
            params = dict(parse_qsl(split.query, keep_blank_values=True))
            with self.world.lock:
                payload = self._payload(template, ident, params)
        except ApiProblem as problem:
            extra = {"Allow": "GET"} if problem.status == 405 else {}
            return problem.status, error_body(problem.status, problem.code, problem.message), extra
        except queries.BadRequest as exc:
            return 400, error_body(400, "invalid_request", str(exc)), {}
        return 200, faults.body(payload), {}

    def _authorized(self, headers: Callable[[str], str | None]) -> bool:
        key = headers("X-Api-Key")
        if key is not None and key == self.api_key:
            return True
        auth = headers("Authorization") or ""
        scheme, _, credential = auth.partition(" ")
        return bool(self.token) and scheme.lower() == "bearer" and credential == self.token

    def _payload(self, template: str, ident: str | None, params: dict[str, str]) -> bytes:
        world, faults = self.world, self.faults
        now = world.sync()
        if template in (STREAMS, TASK_USAGES):
            served = dict(params)
            asked = queries.page_limit(params)
            if faults.page_cap:
                served["limit"] = str(min(asked, faults.page_cap))
            if template == STREAMS:
                page = queries.stream_page(world, now, served)
                rows = [views.stream_json(world, s, now) for s in page.items]
                finals = [s.status for s in page.items]
            else:
                page = queries.task_page(world, now, served)
                rows = [_json(views.task_row(world, t, now)).decode() for t in page.items]
                finals = [t.streams[-1].status for t in page.items]
            offset = int(params.get("offset") or 0)
            paging = faults.envelope(offset, asked, len(rows), page.total)
            return self._envelope(rows, paging, finals)
        if template == TASK_USAGE:
            task = world.task_by_id.get(ident or "")
            if task is None or not task.listed:
                raise ApiProblem(404, "not_exists", "task not found")
            row = json.loads(_json(views.task_row(world, task, now)))
            served = faults.row(row, task.streams[-1].status)
            return faults.text(served, running=row.get("status") == "running").encode()
        if template == TASK:
            task = world.task_by_id.get(ident or "")
            if task is None or (faults.private_details and world.team and not world.owns(task)):
                raise ApiProblem(404, "not_exists", "task not found")
            details = views.task_details(task, now)
            details["task"] = faults.object(details["task"])
            return _json(faults.object(details))
        if template == TASKS:
            found, cursor = queries.task_list(world, now, params)
            data = [faults.object(views.task_info(t, now)) for t in found]
            body = {"data": data, "next_cursor": cursor, "has_more": cursor is not None}
            return _json(faults.object(body))
        if template == SUMMARY:
            totals = summary.summary(world, now, params, *faults.summary_view(now))
            return _json(faults.object(faults.summary_shape(totals)))
        if template == USER:
            return _json(self.user)
        return _json(faults.object(summary.credit_balance(world, now, *faults.summary_view(now))))

    def _envelope(self, rows: list[str], paging: dict[str, Any], finals: list[str]) -> bytes:
        """A usage page; ``finals``: the status each row's run ends with."""
        faults = self.faults
        if faults.touches_rows:
            loaded = [json.loads(r) for r in rows]
            rows = [
                faults.text(faults.row(r, final), running=r.get("status") == "running")
                for r, final in zip(loaded, finals, strict=True)
            ]
        rest = _json(faults.object(paging))
        tail = b"," + rest[1:] if rest != b"{}" else b"}"
        return b'{"data":[' + ",".join(rows).encode() + b"]" + tail


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: SimulatedApi

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections are closed after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and a small body go out as two writes; without this, Nagle's algorithm
        # and the client's delayed ACK add 40 ms to every small answer.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.api.track(self.connection, opened=True)

    def finish(self) -> None:
        self.server.api.track(self.connection, opened=False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are counted in SimulatedApi.requests, not logged

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        api = self.server.api
        status, body, extra = api.answer(self.command, self.path, self.headers.get)
        api.count(route(urlsplit(self.path).path)[0], status)
        self.send_response(status)
        is_json = body[:1] in (b"{", b"[") or status != 200
        self.send_header("Content-Type", "application/json" if is_json else "text/html")
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = _handle
    do_POST = _handle
    do_PUT = _handle
    do_PATCH = _handle
    do_DELETE = _handle
