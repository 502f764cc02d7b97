"""Logging: structlog set up for JSON or console output, with registered secrets redacted."""

from __future__ import annotations

import inspect
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, TextIO
from urllib.parse import quote

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[REDACTED]"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Loggers of the HTTP stack: below WARNING they describe requests and responses in detail.
QUIET_LOGGERS = ("httpx", "httpcore", "hpack", "h2")
MIN_SECRET_LENGTH = 4

_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()
_handler: logging.Handler | None = None


def register_secret(value: str) -> None:
    """Redact *value* (and its URL-encoded form) from every log line from now on."""
    global _secrets  # noqa: PLW0603 - one process-wide set, replaced atomically
    if len(value) < MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        found = set(_secrets) | {value, quote(value, safe="")}
        # Longest first, so a secret containing another is replaced whole.
        _secrets = tuple(sorted(found, key=len, reverse=True))


def reset_secrets() -> None:
    """Forget every registered secret (for tests)."""
    global _secrets  # noqa: PLW0603
    with _secrets_lock:
        _secrets = ()


def redact(text: str) -> str:
    """*text* with every registered secret replaced by ``[REDACTED]``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {_redact_value(k): _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    # Any other object is rendered through str()/repr(); check what it would print.
    try:
        shown = repr(value) if isinstance(value, BaseException) else str(value)
    except Exception:  # a broken __str__ must not break logging
        return value
    redacted = redact(shown)
    return value if redacted == shown else redacted


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Processor: redact registered secrets from every value, recursively."""
    if not _secrets:
        return event_dict
    return {key: _redact_value(value) for key, value in event_dict.items()}


class _RedactingRenderer:
    """Wraps the final renderer and redacts its output once more (belt and braces)."""

    def __init__(self, renderer: Callable[[WrappedLogger, str, EventDict], Any]) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> Any:
        rendered = self._renderer(logger, method, event_dict)
        return redact(rendered) if isinstance(rendered, str) else rendered


class _QuietHttpFilter(logging.Filter):
    """Drops HTTP-stack records below WARNING even if someone lowers those loggers' level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not any(
            record.name == name or record.name.startswith(name + ".") for name in QUIET_LOGGERS
        )


def _level(level: str) -> int:
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}"
        ) from None


def _renderer_chain(fmt: str, stream: TextIO) -> list[Processor]:
    """Exception formatting, redaction and the renderer: the tail of both pipelines."""
    if fmt == "auto":
        fmt = "console" if _isatty(stream) else "json"
    if fmt == "json":
        exceptions: Processor = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        renderer: Processor = structlog.processors.JSONRenderer()
    elif fmt == "console":
        exceptions = structlog.processors.format_exc_info
        renderer = structlog.dev.ConsoleRenderer(colors=_isatty(stream), **_NO_EVENT_PADDING)
        return [exceptions, _for_terminal, redact_secrets, _RedactingRenderer(renderer)]
    else:
        raise ValueError(f"unknown log format {fmt!r}; expected auto, json or console")
    return [exceptions, redact_secrets, _RedactingRenderer(renderer)]


# The event name is followed by one space, not padded to 30 columns (the keyword was
# renamed in structlog 25).
_NO_EVENT_PADDING: dict[str, Any] = (
    {"pad_event_to": 0}
    if "pad_event_to" in inspect.signature(structlog.dev.ConsoleRenderer).parameters
    else {"pad_event": 0}
)


def _for_terminal(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Console lines that fit a terminal: the time to the second, and no counts of zero
    or flags that are off (``poll_finished`` has a dozen, mostly 0). JSON keeps all."""
    stamp = event_dict.get("timestamp")
    if isinstance(stamp, str) and len(stamp) > 20 and stamp[19] == ".":
        event_dict["timestamp"] = stamp[:19] + "Z"
    return {
        key: value
        for key, value in event_dict.items()
        if not (isinstance(value, bool | int) and not value and key != "event")
    }


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _shared_processors() -> Iterable[Processor]:
    return (
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    )


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send structlog and stdlib ``logging`` records to *stream* (default stderr) as *fmt*."""
    global _handler  # noqa: PLW0603 - replaced on reconfiguration, never stacked
    numeric = _level(level)
    out = stream if stream is not None else sys.stderr
    tail = _renderer_chain(fmt.lower(), out)
    structlog.configure(
        processors=[*_shared_processors(), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(_QuietHttpFilter())
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(numeric)
    _handler = handler
    for name in QUIET_LOGGERS:
        quiet = logging.getLogger(name)
        # A handler of their own (e.g. added by a debugging session) would bypass our filter.
        for own in list(quiet.handlers):
            quiet.removeHandler(own)
        quiet.setLevel(max(logging.WARNING, numeric))
        quiet.propagate = True
