"""Logging: JSON and console output, level filtering, stdlib routing and secret redaction."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import structlog

from exporter.logs import REDACTED, configure_logging, register_secret, reset_secrets

SECRET = "neo-key-7f3a9c2e1b"
HTTP_LOGGERS = ("httpx", "httpcore", "httpcore.http11")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    levels = {name: logging.getLogger(name).level for name in HTTP_LOGGERS}
    yield
    reset_secrets()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def configured(level: str = "info", fmt: str = "json") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level, fmt, stream)
    return stream


def test_json_line_has_event_level_utc_timestamp_and_values() -> None:
    stream = configured()
    structlog.get_logger("t").info("poll_finished", runs_new=12, duration_seconds=0.41)
    (line,) = json_lines(stream)
    assert line["event"] == "poll_finished"
    assert line["level"] == "info"
    assert (line["runs_new"], line["duration_seconds"]) == (12, 0.41)
    stamp = datetime.fromisoformat(line["timestamp"])
    assert stamp.utcoffset() == timedelta(0)


def test_level_filters_lower_events() -> None:
    stream = configured("warning")
    log = structlog.get_logger("t")
    log.info("dropped")
    log.warning("kept")
    assert [line["event"] for line in json_lines(stream)] == ["kept"]


def test_debug_level_keeps_debug_events() -> None:
    stream = configured("DEBUG")
    structlog.get_logger("t").debug("shown")
    assert json_lines(stream)[0]["level"] == "debug"


def test_auto_format_is_json_when_not_a_terminal() -> None:
    stream = configured(fmt="auto")
    structlog.get_logger("t").info("hello")
    assert json_lines(stream)[0]["event"] == "hello"


def test_console_format_is_readable_and_uncoloured_off_a_terminal() -> None:
    stream = configured(fmt="console")
    structlog.get_logger("t").info("poll_finished", runs_new=3)
    text = stream.getvalue()
    assert "poll_finished" in text
    assert "runs_new=3" in text
    assert "\x1b[" not in text


def test_unknown_level_or_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("loud", "json", io.StringIO())
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml", io.StringIO())


def test_secret_redacted_in_event_and_values() -> None:
    stream = configured()
    register_secret(SECRET)
    structlog.get_logger("t").info(
        f"event {SECRET}", header=f"X-API-Key: {SECRET}", nested={"a": [SECRET, 1]}
    )
    raw = stream.getvalue()
    (line,) = json_lines(stream)
    assert SECRET not in raw
    assert line["event"] == f"event {REDACTED}"
    assert line["header"] == f"X-API-Key: {REDACTED}"
    assert line["nested"] == {"a": [REDACTED, 1]}


def test_secret_redacted_before_json_escaping() -> None:
    stream = configured()
    awkward = 'k"ey\\é1234'
    register_secret(awkward)
    structlog.get_logger("t").info("escaped", value=f"<{awkward}>")
    assert json_lines(stream)[0]["value"] == f"<{REDACTED}>"


def test_secret_redacted_in_objects_rendered_by_str() -> None:
    class Holder:
        def __str__(self) -> str:
            return f"holder({SECRET})"

    stream = configured()
    register_secret(SECRET)
    structlog.get_logger("t").info("held", value=Holder())
    assert SECRET not in stream.getvalue()
    assert json_lines(stream)[0]["value"] == f"holder({REDACTED})"


def test_url_encoded_secret_is_redacted_too() -> None:
    stream = configured()
    register_secret("key/with+chars")
    structlog.get_logger("t").info("url", url="https://x/?k=key%2Fwith%2Bchars")
    assert json_lines(stream)[0]["url"] == f"https://x/?k={REDACTED}"


def raise_with_secret() -> None:
    raise RuntimeError(f"request failed with key {SECRET}")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_secret_redacted_in_exception_tracebacks(fmt: str) -> None:
    stream = configured(fmt=fmt)
    register_secret(SECRET)
    try:
        raise_with_secret()
    except RuntimeError:
        structlog.get_logger("t").exception("poll_failed")
    text = stream.getvalue()
    assert "poll_failed" in text
    assert "RuntimeError" in text
    assert "raise_with_secret" in text
    assert SECRET not in text
    assert REDACTED in text


def test_json_exception_is_structured() -> None:
    stream = configured()
    try:
        raise_with_secret()
    except RuntimeError:
        structlog.get_logger("t").exception("poll_failed")
    (line,) = json_lines(stream)
    assert line["exception"][0]["exc_type"] == "RuntimeError"
    assert "locals" not in line["exception"][0]["frames"][-1]


def test_short_secrets_are_not_registered() -> None:
    stream = configured()
    register_secret("abc")
    structlog.get_logger("t").info("short", value="abc")
    assert json_lines(stream)[0]["value"] == "abc"


def test_reset_secrets_forgets_them() -> None:
    stream = configured()
    register_secret(SECRET)
    reset_secrets()
    structlog.get_logger("t").info("plain", value=SECRET)
    assert json_lines(stream)[0]["value"] == SECRET


def test_stdlib_logging_is_rendered_and_redacted() -> None:
    stream = configured()
    register_secret(SECRET)
    logging.getLogger("some.library").warning("token is %s", SECRET)
    (line,) = json_lines(stream)
    assert line["event"] == f"token is {REDACTED}"
    assert line["logger"] == "some.library"
    assert line["level"] == "warning"


def test_stdlib_exception_traceback_is_redacted() -> None:
    stream = configured()
    register_secret(SECRET)
    try:
        raise_with_secret()
    except RuntimeError:
        logging.getLogger("some.library").exception("failed")
    assert SECRET not in stream.getvalue()
    assert json_lines(stream)[0]["exception"][0]["exc_value"].endswith(REDACTED)


@pytest.mark.parametrize("name", HTTP_LOGGERS)
def test_http_client_info_and_debug_never_print(name: str) -> None:
    stream = configured("debug")
    logger = logging.getLogger(name)
    logger.info("HTTP Request: GET https://neo/ headers=[(b'X-Api-Key', b'k')]")
    logger.setLevel(logging.DEBUG)  # even if something lowers the level again
    logger.debug("send_request_headers.started")
    assert stream.getvalue() == ""


def test_http_client_warnings_still_print() -> None:
    stream = configured()
    logging.getLogger("httpx").warning("connection pool full")
    assert json_lines(stream)[0]["event"] == "connection pool full"


def test_reconfiguring_does_not_duplicate_stdlib_lines() -> None:
    configured()
    stream = configured()
    logging.getLogger("some.library").warning("once")
    assert len(json_lines(stream)) == 1


def test_console_lines_start_with_an_iso_timestamp() -> None:
    stream = configured(fmt="console")
    structlog.get_logger("t").info("hello")
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", stream.getvalue())


def test_a_console_poll_finished_line_fits_a_terminal() -> None:
    """A steady poll: most of its dozen counts are 0, and are left out on a terminal."""
    stream = configured(fmt="console")
    structlog.get_logger("t").info(
        "poll_finished", rows=40, rows_unchanged=1100, runs_new=0, runs_updated=2,
        rows_invalid=0, fields_invalid=0, pages=1, full_listing=False, task_requests=0,
        rows_unconfirmed=0, runs_confirmed=0, duration_seconds=0.051,
    )  # fmt: skip
    line = stream.getvalue().rstrip("\n")
    assert len(line) <= 120, line
    assert line.endswith(
        "[info     ] poll_finished duration_seconds=0.051 pages=1 rows=40 "
        "rows_unchanged=1100 runs_updated=2"
    )
