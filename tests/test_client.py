"""The Neo API client against the simulated API over loopback."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from structlog.testing import capture_logs

from exporter import client as client_module
from exporter.accounting import row_fingerprint
from exporter.client import (
    STALE_PAGES,
    STREAMS,
    Listing,
    NeoClient,
    RetryPolicy,
    retry_after,
)
from exporter.decoding import Defect, read_page, read_row
from exporter.errors import (
    ApiPayloadError,
    ApiStatusError,
    ApiTimeout,
    ApiTransportError,
    CredentialsRejected,
    NotFound,
    RateLimited,
    RoleForbidden,
)
from exporter.models import TaskUsage
from exporter.simulator import DEMO_API_KEY, DEMO_TOKEN, ManualClock, SimulatedApi, World
from tests.conftest import self_signed

START = datetime(2026, 11, 20, 9, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def world(clock: ManualClock) -> World:
    return World(seed=3, clock=clock, tasks_per_day=1200)


@pytest.fixture
def api(world: World) -> Iterator[SimulatedApi]:
    with SimulatedApi(world) as served:
        yield served


def client_for(api: SimulatedApi, **options: object) -> NeoClient:
    defaults: dict[str, object] = {
        "timeout": 5.0,
        "retry": RetryPolicy(max_retries=3, backoff_base=0.0, backoff_max=0.0),
        "sleep": lambda _: None,
    }
    defaults.update(options)
    return NeoClient(api.url, ("api_key", DEMO_API_KEY), **defaults)  # type: ignore[arg-type]


def window(world: World, clock: ManualClock) -> list[str]:
    since = clock.now() - timedelta(days=1)
    return sorted(s.stream_id for s in world.visible_streams() if s.created_at >= since)


def test_lists_every_stream_of_the_window_once(api: SimulatedApi, world: World) -> None:
    with client_for(api) as client:
        listing = client.list_stream_usage(since=START - timedelta(days=1))
    assert listing.pages > 3
    assert sorted(r.stream_id or "" for r in listing.rows) == window(world, world.clock)
    assert listing.invalid == []


def test_rows_shifting_between_pages_are_deduplicated(
    api: SimulatedApi, world: World, clock: ManualClock
) -> None:
    """New runs arrive while paging (newest first), pushing rows seen already onto later pages."""

    def advance(endpoint: str, code: str) -> None:
        clock.advance(900)

    before = window(world, clock)
    with client_for(api, on_request=advance) as client:
        listing = client.list_stream_usage(since=START - timedelta(days=1))
    ids = [r.stream_id for r in listing.rows]
    assert len(ids) == len(set(ids))
    assert listing.duplicates > 0
    assert set(before) <= set(ids)  # nothing that was there when paging began is lost


def test_fingerprint_fast_path_skips_known_rows(api: SimulatedApi) -> None:
    with client_for(api) as client:
        first = client.list_stream_usage(since=START - timedelta(days=1), fingerprint=lambda r: 7)
        known = dict.fromkeys((r.stream_id or "" for r in first.rows), 7)
        again = client.list_stream_usage(
            since=START - timedelta(days=1), fingerprint=lambda r: 7, known=known
        )
    assert again.rows == []
    assert again.unchanged == set(known)


def test_task_endpoints(api: SimulatedApi, world: World) -> None:
    stream = world.visible_streams()[0]
    with client_for(api) as client:
        usage = client.get_task_usage(stream.task_id)
        details = client.get_task(stream.task_id)
        with pytest.raises(NotFound):
            client.get_task("no-such-task")
        summary = client.get_summary()
        active = client.list_tasks(status="active")
    truth = [s for s in world.visible_streams() if s.task_id == stream.task_id]
    assert usage.step_count == sum(s.steps for s in truth)
    assert usage.neo_credits == sum(s.credits for s in truth)
    assert details.task.id == stream.task_id
    assert stream.stream_id in {s.stream_id for s in details.streams or ()}
    assert summary.total_neo_credits is not None
    assert all(info.status == "active" for info in active)


def test_bearer_token_is_accepted(api: SimulatedApi) -> None:
    with NeoClient(api.url, ("token", DEMO_TOKEN), timeout=5) as client:
        assert client.get_summary().total_tasks is not None


def test_wrong_key_is_a_clear_credentials_error(api: SimulatedApi) -> None:
    with NeoClient(api.url, ("api_key", "neo_sk_wrong_wrong_wrong"), timeout=5) as client:
        with pytest.raises(CredentialsRejected, match="credentials rejected") as caught:
            client.get_summary()
    assert caught.value.status == 401
    assert caught.value.code == "unauthorized"
    assert caught.value.error_id
    assert "neo_sk_wrong" not in str(caught.value)
    assert api.requests[("/api/v1/usage/summary", 401)] == 1  # 4xx is not retried


def test_error_status_is_logged_as_a_warning_with_code_and_error_id(api: SimulatedApi) -> None:
    with (
        capture_logs() as events,
        NeoClient(api.url, ("api_key", "neo_sk_wrong_wrong_wrong"), timeout=5) as client,
        pytest.raises(CredentialsRejected) as caught,
    ):
        client.get_summary()
    assert caught.value.error_id
    assert [e for e in events if e["event"] == "api_error"] == [
        {
            "event": "api_error",
            "log_level": "warning",
            "endpoint": "/api/v1/usage/summary",
            "status": 401,
            "code": "unauthorized",
            "error_id": caught.value.error_id,
        }
    ]
    assert "neo_sk_wrong" not in repr(events)


def test_member_role_is_a_clear_forbidden_error(world: World) -> None:
    with SimulatedApi(world, role="member") as api, client_for(api) as client:
        with pytest.raises(RoleForbidden, match="role not allowed to read usage"):
            client.list_stream_usage(since=START)


def test_5xx_burst_is_retried(api: SimulatedApi) -> None:
    api.faults.burst(2, status=503)
    sleeps: list[float] = []
    with client_for(api, sleep=sleeps.append) as client:
        client.get_summary()
    assert len(sleeps) == 2
    assert api.requests[("/api/v1/usage/summary", 503)] == 2


def test_5xx_beyond_the_budget_fails(api: SimulatedApi) -> None:
    api.faults.burst(10, status=502)
    with client_for(api) as client, pytest.raises(ApiStatusError) as caught:
        client.get_summary()
    assert caught.value.status == 502
    assert api.requests[("/api/v1/usage/summary", 502)] == 4


def test_429_honours_retry_after(api: SimulatedApi) -> None:
    api.faults.rate_limit(1, retry_after=7)
    sleeps: list[float] = []
    with client_for(api, sleep=sleeps.append, retry=RetryPolicy(3, 0.0, 60.0)) as client:
        client.get_summary()
    assert sleeps == [7.0]


def test_429_beyond_the_budget_is_rate_limited(api: SimulatedApi) -> None:
    api.faults.rate_limit(10, retry_after=1)
    with client_for(api) as client, pytest.raises(RateLimited):
        client.get_summary()


def test_timeout_is_retried_then_reported(api: SimulatedApi) -> None:
    api.faults.latency = 0.5
    seen: list[tuple[str, str]] = []
    sleeps: list[float] = []
    with client_for(
        api, timeout=0.1, retry=RetryPolicy(2, 0.0, 0.0), sleep=sleeps.append,
        on_request=lambda e, c: seen.append((e, c)),
    ) as client:  # fmt: skip
        with pytest.raises(ApiTimeout):
            client.get_summary()
    assert seen == [("/api/v1/usage/summary", "timeout")] * 3  # asked, then twice again
    assert len(sleeps) == 2


def test_connection_refused_is_a_transport_error() -> None:
    with NeoClient("http://127.0.0.1:9", ("api_key", "k" * 20), timeout=1) as client:
        client._retry = RetryPolicy(0, 0.0, 0.0)
        with pytest.raises(ApiTransportError, match=r"connection to 127\.0\.0\.1:9 failed"):
            client.get_summary()


def test_garbage_and_truncated_bodies_are_retried(api: SimulatedApi) -> None:
    api.faults.garbage_rate = 1.0
    with client_for(api) as client, pytest.raises(ApiPayloadError, match="not JSON"):
        client.get_summary()
    api.faults.garbage_rate = 0.0
    api.faults.truncate_rate = 0.5
    with client_for(api, retry=RetryPolicy(20, 0.0, 0.0)) as client:
        listing = client.list_stream_usage(since=START - timedelta(hours=6))
    assert listing.rows


def test_schema_drift_is_tolerated(api: SimulatedApi, world: World) -> None:
    api.faults.extra_fields = True
    api.faults.null_fields = True
    api.faults.unknown_status = True
    with client_for(api) as client:
        listing = client.list_stream_usage(since=START - timedelta(days=1))
    assert listing.invalid == []
    assert sorted(r.stream_id or "" for r in listing.rows) == window(world, world.clock)
    assert "quarantined" in {r.status for r in listing.rows}


@pytest.mark.parametrize("drift", [False, True])
def test_a_page_decoded_whole_reads_as_its_rows_one_by_one(api: SimulatedApi, drift: bool) -> None:
    """The fast path (the page decoded whole from its bytes) and the fallback (the page
    taken apart, then each row) must agree on every field, or a bad row elsewhere on a
    page would change what its neighbours count."""
    api.faults.extra_fields = api.faults.null_fields = api.faults.unknown_status = drift
    params = {"from": "2026-11-19T09:00:00Z", "limit": "200"}
    content = httpx.get(
        f"{api.url}{STREAMS}", params=params, headers={"X-Api-Key": DEMO_API_KEY}
    ).content
    whole = read_page(content).rows
    one_by_one = [read_row(json.dumps(raw).encode())[0] for raw in json.loads(content)["data"]]
    assert len(whole) > 100
    assert all(type(row) is TaskUsage for row in whole)
    assert whole == one_by_one
    assert [row_fingerprint(r) for r in whole] == [row_fingerprint(r) for r in one_by_one]
    # One bad value sends the page down the fallback, where only that value is lost.
    broken = json.loads(content)
    broken["data"][3]["step_count"] = "many"
    page = read_page(json.dumps(broken).encode())
    assert page.rows[:3] + page.rows[4:] == whole[:3] + whole[4:]
    assert page.rows[3] == msgspec.structs.replace(whole[3], step_count=None)
    assert page.skipped == []
    assert page.defects == [
        Defect(
            whole[3].task_id, whole[3].stream_id, "step_count", "Expected `int | null`, got `str`"
        )
    ]


def test_a_wrong_type_costs_only_its_field(api: SimulatedApi, world: World) -> None:
    """A wrong type costs its field, never its row (a created_at given as a number is
    read as unix seconds, as msgspec's lax mode reads it)."""
    api.faults.wrong_type_rate = 0.05
    with client_for(api) as client:
        listing = client.list_stream_usage(since=START - timedelta(days=1))
    assert listing.invalid == []
    assert all(d.task_id and d.stream_id for d in listing.defects)
    assert {d.field for d in listing.defects} == {
        "step_count", "tool_calls", "neo_credits", "agent_triggers"
    }  # fmt: skip
    assert sorted(r.stream_id or "" for r in listing.rows) == window(world, world.clock)


def test_requests_are_counted_by_endpoint_and_code(api: SimulatedApi) -> None:
    seen: list[tuple[str, str]] = []
    api.faults.burst(1, status=500)
    with client_for(api, on_request=lambda e, c: seen.append((e, c))) as client:
        client.list_stream_usage(since=START - timedelta(hours=1))
    assert seen[:2] == [(STREAMS, "500"), (STREAMS, "200")]


def test_an_empty_first_page_ends_the_listing_in_one_request() -> None:
    calls: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url)
        return httpx.Response(200, json={"data": []})

    with NeoClient(
        "http://neo", ("api_key", "k" * 20), transport=httpx.MockTransport(handler)
    ) as c:
        assert c.list_stream_usage().rows == []
    assert len(calls) == 1


PAGING = [
    (cap, has_more, total)
    for cap in (0, 37)
    for has_more in ("truthful", "requested", "omitted", "always")
    for total in ("truthful", "omitted")
]


@pytest.mark.parametrize(("cap", "has_more", "total"), PAGING)
def test_every_row_is_listed_whatever_the_paging(
    api: SimulatedApi, world: World, cap: int, has_more: str, total: str
) -> None:
    """A capped limit, a has_more worked out from the limit asked for, omitted or
    always true, a total omitted: the listing holds every row of the window, once, and
    pays at most one request more than the rows need (the empty page that proves the end
    where no total does)."""
    api.faults.page_cap, api.faults.has_more, api.faults.total = cap, has_more, total
    with client_for(api) as client:
        listing = client.list_stream_usage(since=START - timedelta(days=1))
    expected = window(world, world.clock)
    assert sorted(r.stream_id or "" for r in listing.rows) == expected
    served = cap or 200
    needed = -(-len(expected) // served)
    told = total == "truthful"
    assert listing.pages == needed + (not told or has_more == "always")
    contradicts = told and (has_more == "always" or (has_more == "requested" and cap != 0))
    assert bool(listing.inconsistent) == contradicts


def test_an_offset_ignored_is_given_up_on_within_a_few_pages() -> None:
    """A server that says has_more forever and serves the same rows whatever the offset:
    the listing fails after STALE_PAGES pages that bring nothing new, not after millions."""
    calls: list[httpx.URL] = []
    row = {"task_id": "t", "stream_id": "s", "model": "m", "status": "completed",
           "created_at": "2026-11-20T08:00:00Z"}  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url)
        return httpx.Response(200, json={"data": [row], "has_more": True})

    with (
        NeoClient("http://neo", ("api_key", "k" * 20), transport=httpx.MockTransport(handler)) as c,
        pytest.raises(ApiPayloadError, match="paging did not end"),
    ):
        c.list_stream_usage()
    assert len(calls) == 1 + STALE_PAGES


def row_of(number: int, **extra: object) -> dict[str, object]:
    return {"task_id": "t", "stream_id": f"s{number}", "model": "m", "status": "completed",
            "created_at": "2026-11-20T08:00:00Z", **extra}  # fmt: skip


class Server:
    """A usage list over MockTransport: ``rows`` newest first; ``envelope`` makes a
    page's has_more and total from (offset, rows served, rows in all); ``arrive``: rows
    added at the head before each answer (a busy account)."""

    def __init__(
        self, count: int, envelope: Any, *, cap: int = 200, arrive: int = 0,
        ignore_offset: bool = False,
    ) -> None:  # fmt: skip
        self.rows = [row_of(n) for n in range(count, 0, -1)]
        self.envelope, self.cap, self.arrive = envelope, cap, arrive
        self.ignore_offset = ignore_offset
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        newest = len(self.rows)
        self.rows[:0] = [row_of(newest + n) for n in range(self.arrive, 0, -1)]
        offset = 0 if self.ignore_offset else int(request.url.params["offset"])
        limit = min(int(request.url.params["limit"]), self.cap)
        data = self.rows[offset : offset + limit]
        body = {"data": data, **self.envelope(offset, len(data), len(self.rows))}
        return httpx.Response(200, json=body)

    def listing(self) -> Listing[TaskUsage]:
        with NeoClient(
            "http://neo", ("api_key", "k" * 20), transport=httpx.MockTransport(self)
        ) as client:
            return client.list_stream_usage()


def truthful(offset: int, served: int, count: int) -> dict[str, object]:
    return {"has_more": offset + served < count, "total": count}


@pytest.mark.parametrize(
    ("envelope", "inconsistent"),
    [
        (lambda o, s, n: {"total": n // 2}, "rows_past_total"),  # total too low
        (lambda o, s, n: {"total": 0}, "rows_past_total"),
        (lambda o, s, n: {"has_more": o + s < n, "total": 0}, "rows_past_total"),
        (lambda o, s, n: {"has_more": o + s < n, "total": n + 300}, "total_not_reached"),
        (lambda o, s, n: {"has_more": "yes", "total": "many"}, None),  # unreadable: absent
    ],
)
def test_a_wrong_total_costs_no_row(envelope: Any, inconsistent: str | None) -> None:
    server = Server(450, envelope)
    listing = server.listing()
    assert len(listing.rows) == 450
    assert listing.inconsistent[-1:] == ([inconsistent] if inconsistent else [])


def test_an_offset_ignored_with_has_more_false_ends_at_once() -> None:
    """Everything in one page, whatever the offset: the second page brings nothing new
    and says there is no more: the listing ends, with every row."""
    server = Server(20, lambda o, s, n: {"has_more": False}, ignore_offset=True)
    assert len(server.listing().rows) == 20
    assert server.requests == 2


def test_pages_of_rows_that_cannot_be_placed_are_progress() -> None:
    """Rows without a created_at cost only themselves, however many pages they fill."""
    server = Server(1000, truthful, cap=10)
    for row in server.rows[5:900]:
        del row["created_at"]
    listing = server.listing()
    assert len(listing.rows) == 105
    assert len(listing.invalid) == 895


@pytest.mark.parametrize("arrive", [1, 5, 50])
def test_a_busy_account_without_a_total_loses_no_row(arrive: int) -> None:
    """Runs start while the listing pages (newest first, no total, has_more honest):
    every row there when the listing began is listed."""
    server = Server(1000, lambda o, s, n: {"has_more": o + s < n}, arrive=arrive)
    before = {r["stream_id"] for r in server.rows}
    listing = server.listing()
    assert before <= {r.stream_id for r in listing.rows}


def pages_of_endless_rows() -> int:
    """Pages asked of a server that makes up new rows forever while reporting a total of
    500, until the listing gives up (ApiPayloadError naming the total)."""
    calls: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params["offset"])
        calls.append(request.url)
        rows = [row_of(offset + i) for i in range(200)]
        return httpx.Response(200, json={"data": rows, "has_more": True, "total": 500})

    with (
        NeoClient("http://neo", ("api_key", "k" * 20), transport=httpx.MockTransport(handler)) as c,
        pytest.raises(ApiPayloadError, match="total 500"),
    ):
        c.list_stream_usage()
    return len(calls)


def test_new_rows_forever_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that makes up new rows forever is given up on past MAX_ROWS_UNTOLD."""
    monkeypatch.setattr(client_module, "MAX_ROWS_UNTOLD", 2000)
    assert pages_of_endless_rows() == 2000 // 200 + 1


def test_an_inconsistent_envelope_is_logged_once_per_client(api: SimulatedApi) -> None:
    api.faults.page_cap, api.faults.has_more = 50, "requested"
    with client_for(api) as client, capture_logs() as logs:
        first = client.list_stream_usage(since=START - timedelta(days=1))
        second = client.list_stream_usage(since=START - timedelta(days=1))
    assert first.inconsistent
    assert first.inconsistent == second.inconsistent
    warned = [e for e in logs if e["event"] == "paging_inconsistent"]
    assert warned == [
        {"event": "paging_inconsistent", "log_level": "warning", "endpoint": STREAMS,
         "kind": "has_more_false_before_total"}
    ]  # fmt: skip


NOW = datetime(2026, 11, 20, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-5", 0.0),
        ("1e400", 86_400.0),
        ("nan", None),
        ("", None),
        (None, None),
        ("soon", None),
        ("Fri, 20 Nov 2026 09:00:30 GMT", 30.0),
        ("Fri, 20 Nov 2026 09:00:30", 30.0),  # no zone: HTTP dates are UTC
        ("Wed, 21 Oct 2015 07:28:00", 0.0),  # in the past
        ("Wed, 99 Foo 2015 07:28:00 GMT", None),
        ("Fri, 20 Nov 2026 09:00:30 +9999", None),
        ("\x00\udc80", None),
    ],
)
def test_retry_after_in_any_form_is_read_or_ignored(
    header: str | None, seconds: float | None
) -> None:
    assert retry_after(header, NOW) == seconds


@pytest.mark.parametrize("header", ["soon", "Wed, 21 Oct 2015 07:28:00", "Fri, 99 Nov"])
def test_a_garbage_retry_after_is_retried_with_the_usual_backoff(header: str) -> None:
    answers = iter(
        [httpx.Response(429, headers={"Retry-After": header}), httpx.Response(200, json={})]
    )
    sleeps: list[float] = []
    with NeoClient(
        "http://neo", ("api_key", "k" * 20), transport=httpx.MockTransport(lambda r: next(answers)),
        retry=RetryPolicy(3, 0.5, 30.0), sleep=sleeps.append, seed=1,
    ) as c:  # fmt: skip
        c.get_summary()
    assert len(sleeps) == 1
    assert 0.25 <= sleeps[0] <= 0.5 or sleeps[0] == 0.0


def test_new_rows_forever_past_a_reported_total_are_bounded_by_it() -> None:
    """A server that makes up new rows forever while reporting a total of 500 is given
    up on past 500 + ROWS_PAST_TOTAL rows: about a hundred pages, not fifty thousand."""
    assert pages_of_endless_rows() == (500 + client_module.ROWS_PAST_TOTAL) // 200 + 1


@pytest.mark.parametrize(
    ("total", "allowed"), [(None, 10_000_000), (0, 20_000), (500, 20_500), (10_000, 40_000)]
)
def test_rows_allowed_past_a_total(total: int | None, allowed: int) -> None:
    assert client_module.rows_allowed(total) == allowed


SECRET_KEY = ("api_key", "neo_sk_" + "k3y" * 10)


def transport_error(url: str) -> str:
    with (
        NeoClient(url, SECRET_KEY, retry=RetryPolicy(max_retries=0)) as client,
        pytest.raises(ApiTransportError) as caught,
    ):
        client.get_credits()
    assert SECRET_KEY[1] not in str(caught.value)
    return str(caught.value)


def test_a_refused_connection_names_the_host_and_says_refused() -> None:
    with socket.socket() as bound:  # bound, not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        error = transport_error(f"http://127.0.0.1:{port}")
    assert error == (
        f"/api/v1/billing/credits: connection to 127.0.0.1:{port} failed: connection refused"
    )


def test_a_dns_failure_names_the_host_and_says_dns() -> None:
    error = transport_error("https://neo-exporter-test.invalid")
    assert "connection to neo-exporter-test.invalid:443 failed: DNS lookup failed (" in error


@pytest.fixture
def tls_api(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTPS server with a self-signed certificate, and that certificate."""
    cert, key = self_signed(tmp_path, "private-ca")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"available_credits": 5, "issued_credits": 10, "used_credits": 5}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()
    server.server_close()


def test_tls_verification_failure_says_so_and_ssl_cert_file_trusts_a_private_ca(
    tls_api: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cert = tls_api
    error = transport_error(url)
    assert "failed: TLS certificate verification failed (self-signed certificate" in error
    assert "SSL_CERT_FILE" in error
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # what the README tells operators
    with NeoClient(url, SECRET_KEY, retry=RetryPolicy(max_retries=0)) as client:
        assert client.get_credits().available_credits == 5
