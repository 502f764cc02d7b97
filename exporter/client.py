"""Neo API client: authenticated httpx calls with timeouts, retries and paging."""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

import httpx
import structlog
from pydantic import BaseModel, ValidationError

from exporter import __version__
from exporter.deadline import deadline_transport
from exporter.decoding import Defect, UsagePage, read_one_row, read_page
from exporter.errors import (
    ApiError,
    ApiInterrupted,
    ApiPayloadError,
    ApiPayloadTooLarge,
    ApiStatusError,
    ApiTimeout,
    ApiTransportError,
    CredentialsRejected,
    NotFound,
    RateLimited,
    RoleForbidden,
)
from exporter.models import (
    CreditBalance,
    ErrorResponse,
    TaskDetails,
    TaskInfo,
    TaskUsage,
    UsageSummary,
    UserProfile,
    describe_validation_error,
)

log = structlog.get_logger(__name__)

PAGE_LIMIT = 200  # the documented maximum of `limit` on the usage lists
STREAMS = "/api/v1/usage/streams"
TASK_USAGES = "/api/v1/usage/tasks"
TASK_USAGE = "/api/v1/usage/tasks/{task_id}"
TASKS = "/api/v1/tasks"
TASK = "/api/v1/tasks/{id}"
SUMMARY = "/api/v1/usage/summary"
CREDITS = "/api/v1/billing/credits"
USER = "/api/v1/user"

# The most an answer of each endpoint may hold, decoded, before it is refused: a usage
# page of 200 rows is about 0.7 MB, a task's usage row grows with its tool calls, any
# other answer is a few kilobytes. Generous, so only a server gone wrong (an endless
# body) meets them.
MAX_BODY_BYTES = {STREAMS: 64 << 20, TASK_USAGES: 64 << 20, TASK_USAGE: 64 << 20, TASKS: 16 << 20}
MAX_BODY_DEFAULT = 4 << 20

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")
RequestObserver = Callable[[str, str], None]
PageObserver = Callable[[int, int | None], None]  # rows received so far, the API's total


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry transport errors, 5xx and 429."""

    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        # Full jitter keeps many exporters from retrying in lock step.
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        return float(ceiling * (0.5 + rng.random() / 2))


@dataclass
class InvalidRow:
    """A row that failed validation: skipped, reported, never fatal for its page."""

    task_id: str | None
    reason: str


@dataclass
class Listing(Generic[R]):
    """All rows of a paged usage list, de-duplicated, plus what had to be skipped.

    ``rows`` holds each row as the caller's ``convert`` made it (by default the row)."""

    rows: list[R] = field(default_factory=list)
    invalid: list[InvalidRow] = field(default_factory=list)
    defects: list[Defect] = field(default_factory=list)  # fields read as not reported
    unchanged: set[str] = field(default_factory=set)
    pages: int = 0
    duplicates: int = 0
    # Envelopes that contradicted each other or the rows, by kind (see ``_pages``:
    # "rows_past_total", "has_more_past_total", "offset_ignored", ...).
    inconsistent: list[str] = field(default_factory=list)


Fingerprint = Callable[[TaskUsage], int | None]
# A listing whose pages bring nothing new this many times in a row (the same page, or
# rows already seen) is a server that ignores the offset: given up on, not paged forever.
STALE_PAGES = 3
MAX_ROWS_UNTOLD = 10_000_000  # rows a listing takes at most while pages bring new rows
# With a total reported, a listing is given up past this many rows more than it (or past
# PAST_TOTAL_FACTOR times it): rows arriving while it pages, or a total a little wrong,
# stay well within; a server making rows up forever does not. Given up, the poll fails
# and commits nothing: the bound loses no row.
ROWS_PAST_TOTAL = 20_000
PAST_TOTAL_FACTOR = 4


def rows_allowed(total: int | None) -> int:
    """The most rows a listing takes before it is given up, given its reported total."""
    if total is None:
        return MAX_ROWS_UNTOLD
    return min(MAX_ROWS_UNTOLD, max(total * PAST_TOTAL_FACTOR, total + ROWS_PAST_TOTAL))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ceil_second(moment: datetime) -> datetime:
    """``moment`` rounded up to a whole second. The API takes whole seconds: an end
    truncated down would leave out what started in its last fraction of a second (the
    caller keeps only rows before the exact end)."""
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + timedelta(seconds=1)


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP date (one
    without a zone is read as UTC, as HTTP dates are). Anything else is ignored (None),
    never raised: the answer is a 429 either way, retried with the usual backoff."""
    text = (value or "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - now).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), 86_400.0)


class NeoClient:
    """Reads usage and task state from the Neo API.

    ``timeout`` bounds each request as a whole (connecting, headers and body), not each
    read; an answer larger than its endpoint's MAX_BODY_BYTES is refused. Setting
    ``stop`` ends a request in flight and every backoff wait at once (ApiInterrupted).
    ``transport`` lets tests hand in ``httpx.MockTransport`` (the deadline is then
    checked between chunks only); ``sleep`` lets them skip backoff waits;
    ``on_request(endpoint, code)`` feeds the self-metrics.
    """

    def __init__(
        self,
        base_url: str,
        credential: tuple[Literal["api_key", "token"], str],
        *,
        timeout: float = 30.0,
        max_concurrent: int = 4,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], object] | None = None,
        on_request: RequestObserver | None = None,
        seed: int | None = None,
        stop: threading.Event | None = None,
        max_body: Mapping[str, int] | None = None,
    ) -> None:
        self._stop = stop or threading.Event()
        self._timeout = timeout
        limits = httpx.Limits(
            max_connections=max_concurrent, max_keepalive_connections=max_concurrent
        )
        self._deadline: Callable[[float], contextlib.AbstractContextManager[None]] = lambda _: (
            contextlib.nullcontext()
        )
        if transport is None:
            transport, backend = deadline_transport(self._stop, limits)
            self._deadline = backend.deadline
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Accept": "application/json", "User-Agent": f"neo-exporter/{__version__}"},
            timeout=httpx.Timeout(timeout),
            transport=transport,
            limits=limits,
            follow_redirects=False,
        )
        self._max_body = {**MAX_BODY_BYTES, **(max_body or {})}
        self.use_credential(credential)
        url = self._http.base_url
        self._host = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._retry = retry or RetryPolicy()
        self._sleep = sleep if sleep is not None else self._stop.wait
        self._on_request = on_request
        self._rng = random.Random(seed)
        self._noted: set[tuple[str, str]] = set()  # paging inconsistencies logged once

    def use_credential(self, credential: tuple[Literal["api_key", "token"], str]) -> None:
        """Authenticate the requests from now on with *credential* (a rotated key)."""
        kind, secret = credential
        headers = self._http.headers
        headers.pop("X-Api-Key", None)
        headers.pop("Authorization", None)
        if kind == "api_key":
            headers["X-Api-Key"] = secret
        else:
            headers["Authorization"] = f"Bearer {secret}"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NeoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the endpoints -------------------------------------------------------

    def list_stream_usage(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        task_id: str | None = None,
        fingerprint: Fingerprint | None = None,
        known: Mapping[str, int | None] | None = None,
    ) -> Listing[TaskUsage]:
        """Every per-stream usage row in [since, until), or of one task.

        With ``fingerprint`` and ``known`` (stream id -> fingerprint of the row last
        counted), rows that have not changed are only noted in ``Listing.unchanged``,
        which keeps a poll's cost in what changed.
        """
        return self.map_stream_usage(
            _as_is, since=since, until=until, task_id=task_id, fingerprint=fingerprint, known=known
        )

    def map_stream_usage(
        self,
        convert: Callable[[TaskUsage, int | None], R],
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        task_id: str | None = None,
        fingerprint: Fingerprint | None = None,
        known: Mapping[str, int | None] | None = None,
        on_page: PageObserver | None = None,
    ) -> Listing[R]:
        """``list_stream_usage``, with each new or changed row handed to ``convert``
        (with its fingerprint) as soon as its page is decoded: a large listing then holds
        only what ``convert`` keeps, not every decoded row. ``on_page(rows, total)`` is
        told after each page the rows received so far and the ``total`` the API reports."""
        params: dict[str, str] = {}
        if since is not None:
            params["from"] = _iso(since)
        if until is not None:
            params["to"] = _iso(_ceil_second(until))
        if task_id is not None:
            params["task_id"] = task_id
        return self._list(
            STREAMS, params, convert, key=lambda r: r.stream_id, fp=fingerprint, known=known,
            on_page=on_page,
        )  # fmt: skip

    def list_task_usage(self, *, since: datetime | None = None) -> Listing[TaskUsage]:
        """Every per-task aggregate row created since ``since``."""
        return self.map_task_usages(_as_is, since=since)

    def map_task_usages(
        self,
        convert: Callable[[TaskUsage, int | None], R],
        *,
        since: datetime | None = None,
        key: Callable[[TaskUsage], str] = lambda row: row.task_id,
        fingerprint: Fingerprint | None = None,
        known: Mapping[str, int | None] | None = None,
    ) -> Listing[R]:
        """``map_stream_usage`` over the per-task rows (each task's runs summed), each
        known by ``key`` (in ``known`` too)."""
        params = {"from": _iso(since)} if since is not None else {}
        return self._list(TASK_USAGES, params, convert, key=key, fp=fingerprint, known=known)

    def get_task_usage(self, task_id: str) -> TaskUsage:
        return self.read_task_usage(task_id)[0]

    def read_task_usage(self, task_id: str) -> tuple[TaskUsage, list[Defect]]:
        """A task's usage over all its runs, and the values of it that could not be read
        (each costs only itself). An answer that is no row is asked again, like one cut
        short; still none, ApiPayloadError."""
        path = f"/api/v1/usage/tasks/{_quote(task_id)}"
        return self._get(TASK_USAGE, path, decode=read_one_row)  # type: ignore[no-any-return]

    def get_task(self, task_id: str) -> TaskDetails:
        body = self._get(TASK, f"/api/v1/tasks/{_quote(task_id)}")
        return self._parse(TASK, TaskDetails, body)

    def list_tasks(self, *, status: str | None = None, max_pages: int = 50) -> list[TaskInfo]:
        """The caller's own tasks (cursor paging), optionally of one status."""
        found: dict[str, TaskInfo] = {}
        cursor: str | None = None
        for _ in range(max_pages):
            params: dict[str, str] = {"limit": "100"}
            if status:
                params["status"] = status
            if cursor:
                params["cursor"] = cursor
            body = self._get(TASKS, TASKS, params)
            if not isinstance(body, dict) or not isinstance(body.get("data"), list):
                raise ApiPayloadError("task list without a data array", endpoint=TASKS)
            for raw in body["data"]:
                try:
                    info = TaskInfo.model_validate(raw)
                except ValidationError as exc:
                    log.warning(
                        "row_skipped", endpoint=TASKS, reason=describe_validation_error(exc)
                    )
                    continue
                found[info.id] = info
            cursor = body.get("next_cursor") or None
            if not cursor or body.get("has_more") is False:
                break
        return list(found.values())

    def get_summary(self, *, since: datetime | None = None) -> UsageSummary:
        """Account totals and balance; with ``since``, usage figures cover that window."""
        params = {"from": _iso(since)} if since is not None else None
        return self._parse(SUMMARY, UsageSummary, self._get(SUMMARY, SUMMARY, params))

    def get_credits(self) -> CreditBalance:
        return self._parse(CREDITS, CreditBalance, self._get(CREDITS, CREDITS))

    def get_user(self) -> UserProfile:
        """Who the credential belongs to: its user and team."""
        return self._parse(USER, UserProfile, self._get(USER, USER))

    # -- paging ---------------------------------------------------------------

    def _list(
        self,
        endpoint: str,
        params: dict[str, str],
        convert: Callable[[TaskUsage, int | None], R],
        key: Callable[[TaskUsage], str | None],
        fp: Fingerprint | None = None,
        known: Mapping[str, int | None] | None = None,
        on_page: PageObserver | None = None,
    ) -> Listing[R]:
        listing: Listing[R] = Listing()
        seen: dict[str, int] = {}
        # Rows new to this listing so far: the pager's check that paging goes somewhere.
        progress = lambda: len(seen) + len(listing.unchanged)  # noqa: E731
        for page in self._pages(endpoint, params, listing, progress):
            listing.pages += 1
            for bad in page.skipped:
                listing.invalid.append(InvalidRow(bad.task_id, bad.reason))
                log.warning(
                    "row_skipped", endpoint=endpoint, task_id=bad.task_id, reason=bad.reason
                )
            for row in page.rows:
                ident = key(row)
                if ident is None:
                    listing.invalid.append(InvalidRow(row.task_id, "row without stream_id"))
                    log.warning(
                        "row_skipped", endpoint=endpoint, task_id=row.task_id,
                        reason="row without stream_id",
                    )  # fmt: skip
                    continue
                digest = fp(row) if fp is not None else None
                if digest is not None and known is not None and known.get(ident, -1) == digest:
                    listing.unchanged.add(ident)
                    continue
                if ident in seen:
                    # Rows shift down while we page; keep the later (never older) copy.
                    listing.duplicates += 1
                    listing.rows[seen[ident]] = convert(row, digest)
                    continue
                seen[ident] = len(listing.rows)
                listing.rows.append(convert(row, digest))
            # A value that still cannot be read in a row that has not changed was
            # reported when the row was counted: not again at every poll.
            unchanged = listing.unchanged
            listing.defects += [d for d in page.defects if d.stream_id not in unchanged]
            if on_page is not None:
                on_page(len(seen) + len(unchanged) + len(listing.invalid), page.total)
        return listing

    def _pages(
        self,
        endpoint: str,
        params: dict[str, str],
        listing: Listing[Any],
        progress: Callable[[], int],
    ) -> Iterator[UsagePage]:
        """The pages of a usage list, paged by the rows received and nothing else.

        A listing ends on an empty page, or once the rows received are exactly the page's
        ``total`` while ``has_more`` does not say otherwise; never on a short page (the
        API may cap ``limit``) nor on ``has_more`` alone (it may be worked out from the
        ``limit`` asked for, not the one served). Envelopes that contradict each other
        or the rows (more rows than ``total``) are followed to an empty page and noted
        in ``listing.inconsistent``. A page that brings no row not already seen while
        ``has_more`` is false ends the listing (a server that ignores the offset). A
        listing that would never end is given up with ApiPayloadError: after
        STALE_PAGES pages in a row that bring nothing new (the same page again, or only
        rows already seen), or past ``rows_allowed(total)`` rows (MAX_ROWS_UNTOLD without
        a total). So ``has_more`` true forever costs the rows and a few pages, never
        millions of requests."""
        offset = 0
        stale = 0
        last_digest: int | None = None
        while True:
            query = {**params, "limit": str(PAGE_LIMIT), "offset": str(offset)}
            before = progress()
            page: UsagePage = self._get(endpoint, endpoint, query, decode=read_page)
            yield page
            offset += page.size
            total, more = page.total, page.has_more
            if page.size == 0:
                if total is not None and offset < total:
                    self._inconsistent(listing, endpoint, "total_not_reached")
                return
            new = progress() > before
            if total is not None and offset == total and more is not True:
                return
            if not new and more is False:
                if total is not None and offset < total:
                    self._inconsistent(listing, endpoint, "offset_ignored")
                return
            if total is not None and offset > total:
                self._inconsistent(listing, endpoint, "rows_past_total")
            elif total is not None and offset == total:
                self._inconsistent(listing, endpoint, "has_more_past_total")
            elif more is False and total is not None:
                self._inconsistent(listing, endpoint, "has_more_false_before_total")
            nothing = page.digest == last_digest or (not new and not page.skipped)
            stale = stale + 1 if nothing else 0
            last_digest = page.digest
            if stale >= STALE_PAGES or offset > rows_allowed(total):
                raise ApiPayloadError(
                    f"{endpoint}: paging did not end ({offset} rows received, total "
                    f"{'not reported' if total is None else total})",
                    endpoint=endpoint,
                )

    def _inconsistent(self, listing: Listing[Any], endpoint: str, kind: str) -> None:
        listing.inconsistent.append(kind)
        if (endpoint, kind) not in self._noted:  # once per kind: a poll lists many times
            self._noted.add((endpoint, kind))
            log.warning("paging_inconsistent", endpoint=endpoint, kind=kind)

    # -- one request ----------------------------------------------------------

    def _parse(self, endpoint: str, model: type[M], body: Any) -> M:
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            raise ApiPayloadError(
                f"{endpoint}: unexpected payload: {describe_validation_error(exc)}",
                endpoint=endpoint,
            ) from None

    def _get(
        self,
        endpoint: str,
        path: str,
        params: dict[str, str] | None = None,
        *,
        decode: Callable[[bytes], Any] = json.loads,
    ) -> Any:
        attempt = 0
        while True:
            try:
                return self._get_once(endpoint, path, params, decode)
            except ApiInterrupted:
                raise
            except (ApiTransportError, ApiPayloadError, ApiStatusError) as exc:
                if self._stop.is_set():
                    raise ApiInterrupted(f"{endpoint}: stopped", endpoint=endpoint) from None
                retryable, wait = _retry_decision(exc)
                if not retryable or attempt >= self._retry.max_retries:
                    if isinstance(exc, ApiStatusError) and exc.status == 429:
                        raise RateLimited(
                            str(exc),
                            endpoint=endpoint,
                            status=429,
                            code=exc.code,
                            error_id=exc.error_id,
                        ) from None
                    raise
                delay = self._retry.delay(attempt, self._rng)
                if wait is not None:
                    delay = min(max(wait, 0.0), self._retry.backoff_max)
                log.info(
                    "api_retry",
                    endpoint=endpoint,
                    attempt=attempt + 1,
                    reason=exc.reason,
                    delay_seconds=round(delay, 3),
                )
                self._sleep(delay)
                if self._stop.is_set():
                    raise ApiInterrupted(f"{endpoint}: stopped", endpoint=endpoint) from None
                attempt += 1

    def _get_once(
        self,
        endpoint: str,
        path: str,
        params: dict[str, str] | None,
        decode: Callable[[bytes], Any],
    ) -> Any:
        with self._slots:
            try:
                response, content = self._fetch(endpoint, path, params)
            except httpx.TimeoutException as exc:
                if self._stop.is_set():
                    raise ApiInterrupted(f"{endpoint}: stopped", endpoint=endpoint) from None
                self._observe(endpoint, "timeout")
                phase = "no connection" if isinstance(exc, httpx.ConnectTimeout) else "no answer"
                raise ApiTimeout(
                    f"{endpoint}: {phase} from {self._host} within the timeout",
                    endpoint=endpoint,
                ) from None
            except httpx.HTTPError as exc:
                self._observe(endpoint, "error")
                raise ApiTransportError(
                    f"{endpoint}: connection to {self._host} failed: {transport_failure(exc)}",
                    endpoint=endpoint,
                ) from None
        self._observe(endpoint, str(response.status_code))
        if response.status_code >= 400:
            raise _status_error(endpoint, response, content)
        try:
            return decode(content)
        except ValueError:
            raise ApiPayloadError(
                f"{endpoint}: answer is not JSON ({len(content)} bytes)", endpoint=endpoint
            ) from None

    def _fetch(
        self, endpoint: str, path: str, params: dict[str, str] | None
    ) -> tuple[httpx.Response, bytes]:
        """One GET, its body read within the request's deadline and size bound.

        Streamed and joined by us: httpx keeps a response in a reference cycle, and a
        body cached on it (a usage page: 0.7 MB) would stay until the cyclic collector
        runs, which a poll pauses."""
        limit = self._max_body.get(endpoint, MAX_BODY_DEFAULT)
        ends = time.monotonic() + self._timeout
        chunks: list[bytes] = []
        size = 0
        request = self._http.stream("GET", path, params=params)
        with self._deadline(self._timeout), request as response:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    self._observe(endpoint, str(response.status_code))
                    raise ApiPayloadTooLarge(
                        f"{endpoint}: answer larger than {limit >> 20} MiB, refused",
                        endpoint=endpoint,
                    )
                if time.monotonic() > ends:
                    raise httpx.ReadTimeout("request deadline passed")
                chunks.append(chunk)
        return response, b"".join(chunks)

    def _observe(self, endpoint: str, code: str) -> None:
        if self._on_request is not None:
            self._on_request(endpoint, code)


def transport_failure(exc: BaseException) -> str:
    """What failed under an httpx error, in words: DNS, TLS verification, refused, reset.

    Read from the exceptions it was raised from (the socket's and ssl's own); never the
    request, so never a header or credential."""
    cause: BaseException | None = exc
    for _ in range(8):
        if cause is None:
            break
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"TLS certificate verification failed ({cause.verify_message}); a private "
                "CA is trusted with SSL_CERT_FILE (see the README)"
            )
        if isinstance(cause, ssl.SSLError):
            return f"TLS error ({cause.reason or cause.strerror})"
        if isinstance(cause, socket.gaierror):
            return f"DNS lookup failed ({cause.strerror})"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset by the server"
        cause = cause.__cause__ or cause.__context__
    return f"{type(exc).__name__} ({str(exc)[:200]})" if str(exc) else type(exc).__name__


def _quote(value: str) -> str:
    return httpx.URL("/").copy_with(path="/" + value).raw_path.decode()[1:].replace("/", "%2F")


def _as_is(row: TaskUsage, fingerprint: int | None) -> TaskUsage:
    return row


def _retry_decision(exc: ApiError) -> tuple[bool, float | None]:
    if isinstance(exc, ApiPayloadTooLarge):
        return False, None  # asked again, it would cost the bound again
    if isinstance(exc, ApiStatusError):
        if exc.status == 429:
            return True, exc.retry_after
        return exc.status >= 500, None
    return True, None


def _status_error(endpoint: str, response: httpx.Response, content: bytes) -> ApiStatusError:
    detail = ErrorResponse()
    with contextlib.suppress(ValueError, ValidationError):
        detail = ErrorResponse.model_validate(json.loads(content))
    status = response.status_code
    kinds: dict[int, tuple[type[ApiStatusError], str]] = {
        401: (CredentialsRejected, "credentials rejected: check the API key or token"),
        403: (
            RoleForbidden,
            "role not allowed to read usage: a team admin's or solo account's key is needed",
        ),
        404: (NotFound, "not found"),
    }
    cls, text = kinds.get(status, (ApiStatusError, f"HTTP {status}"))
    code = detail.code
    # error_id is what Neo support needs to find the failure on their side.
    log.warning("api_error", endpoint=endpoint, status=status, code=code, error_id=detail.error_id)
    error = cls(
        f"{endpoint}: {text}" + (f" (code {code})" if code else ""),
        endpoint=endpoint,
        status=status,
        code=code,
        error_id=detail.error_id,
    )
    if status == 429:
        error.retry_after = retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
    return error
