"""Bounded API answers: a whole-request deadline, a size bound per endpoint, and a stop
that ends requests in flight; against a misbehaving API on loopback."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import structlog
from structlog.typing import EventDict

from exporter.client import CREDITS, MAX_BODY_DEFAULT, STREAMS, NeoClient, RetryPolicy
from exporter.errors import ApiInterrupted, ApiPayloadTooLarge, ApiTimeout
from exporter.poll.fetch import Fetcher
from exporter.poll.report import PollReport
from exporter.selfmetrics import SelfMetrics
from tests.badapi import BadApi

HANG_GUARD = 20.0  # seconds a call may take before the test calls it hung


def client_for(api: BadApi, **options: object) -> NeoClient:
    defaults: dict[str, object] = {
        "timeout": 0.5,
        "retry": RetryPolicy(max_retries=1, backoff_base=0.0, backoff_max=0.0),
    }
    defaults.update(options)
    return NeoClient(api.url, ("api_key", "k"), **defaults)  # type: ignore[arg-type]


def outcome(call: Callable[[], object]) -> BaseException | None:
    """What ``call`` raised, run on a thread; fails the test if it does not end."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed back to the test
            raised.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HANG_GUARD)
    assert not worker.is_alive(), "the request did not end"
    return raised[0] if raised else None


@pytest.mark.parametrize("mode", ["trickle_headers", "trickle_body"])
def test_a_trickling_answer_ends_at_the_request_deadline(mode: str) -> None:
    """A byte every 50 ms never trips a per-read timeout; the whole-request one ends it."""
    with BadApi(mode) as api, client_for(api) as client:
        error = outcome(client.get_credits)
    assert isinstance(error, ApiTimeout)
    assert error.endpoint == CREDITS


def test_an_endless_body_is_refused_at_the_bound_of_its_endpoint() -> None:
    with BadApi("endless") as api, client_for(api, timeout=30) as client:
        error = outcome(client.get_credits)
    assert isinstance(error, ApiPayloadTooLarge)
    assert str(error) == f"{CREDITS}: answer larger than 4 MiB, refused"
    assert api.requests == 1  # asked again, it would cost the bound again
    # Read no further than the bound, give or take the socket buffers.
    assert api.sent < MAX_BODY_DEFAULT + (16 << 20)


def test_usage_pages_have_a_bound_of_their_own() -> None:
    with BadApi("endless") as api, client_for(api, timeout=30, max_body={STREAMS: 1 << 20}) as c:
        error = outcome(c.list_stream_usage)
    assert isinstance(error, ApiPayloadTooLarge)
    assert str(error).startswith(f"{STREAMS}: answer larger than 1 MiB")


def test_stop_ends_a_request_in_flight() -> None:
    """A hanging API, a request timeout of an hour: setting stop ends the request."""
    stop = threading.Event()
    with BadApi("hang") as api, client_for(api, timeout=3600, stop=stop) as client:
        result: list[BaseException | None] = []
        worker = threading.Thread(target=lambda: result.append(outcome(client.get_credits)))
        worker.start()
        api.asked.wait()  # the request has reached the server
        stop.set()
        worker.join()
    assert isinstance(result[0], ApiInterrupted)


def test_stop_ends_a_retry_wait() -> None:
    """Backoff waits are waits on the stop event: a stopped client asks no more."""
    stop = threading.Event()
    retry = RetryPolicy(max_retries=5, backoff_base=3600.0, backoff_max=3600.0)
    retrying = threading.Event()

    def note(_: object, __: str, event: EventDict) -> EventDict:
        if event["event"] == "api_retry":
            retrying.set()
        return event

    structlog.configure(processors=[note, structlog.processors.KeyValueRenderer()])
    with BadApi("reset") as api, client_for(api, stop=stop, retry=retry) as client:
        result: list[BaseException | None] = []
        worker = threading.Thread(target=lambda: result.append(outcome(client.get_credits)))
        worker.start()
        retrying.wait()  # the client is about to wait an hour before asking again
        stop.set()
        worker.join()
    assert isinstance(result[0], ApiInterrupted)
    assert api.requests == 1


def test_a_read_the_exporter_stop_cut_short_is_no_api_error() -> None:
    """An optional read of a poll that the exporter's own stop cut short is not counted
    in neo_exporter_errors_total, nor warned about; a real failure is."""
    metrics = SelfMetrics(process=False)
    with NeoClient("http://neo.invalid", ("api_key", "k" * 20)) as client:
        fetch = Fetcher(client, metrics, {})
        report = PollReport()
        fetch.failed("t1", ApiInterrupted("/api/v1/tasks/{id}: stopped"), report)
        assert report.warnings == []
        assert (
            metrics.registry.get_sample_value(
                "neo_exporter_errors_total", {"reason": "interrupted"}
            )
            is None
        )
        fetch.failed("t2", ApiTimeout("/api/v1/tasks/{id}: no answer"), report)
        assert len(report.warnings) == 1
        fetch.close()
