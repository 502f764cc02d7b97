"""Exposition: renders the usage families once per poll and serves cached bytes."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_format
from prometheus_client.openmetrics import exposition as openmetrics_format

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
EOF_LINE = b"# EOF\n"
# The OpenMetrics writer has no annotations; this gives it the signature it has.
_openmetrics_latest: Callable[[CollectorRegistry], bytes] = openmetrics_format.generate_latest


@dataclass(frozen=True)
class _Rendered:
    text: bytes
    text_gz: bytes
    openmetrics: bytes  # without the closing "# EOF"
    openmetrics_gz: bytes


def _gzip(data: bytes) -> bytes:
    # mtime=0 keeps the bytes identical for identical input.
    return gzip.compress(data, compresslevel=5, mtime=0)


class Exposition:
    """Usage bytes rendered after each committed poll; self-metrics rendered per scrape.

    Both parts are concatenated per scrape. Gzip members may be concatenated too
    (RFC 1952 multi-member streams), so the compressed usage part is cached as well.
    """

    def __init__(self, usage: CollectorRegistry, own: CollectorRegistry) -> None:
        self._usage = usage
        self._own = own
        self._lock = threading.Lock()
        self._rendered: _Rendered | None = None

    def refresh(self) -> None:
        text = text_format.generate_latest(self._usage)
        om = _openmetrics_latest(self._usage).removesuffix(EOF_LINE)
        rendered = _Rendered(text, _gzip(text), om, _gzip(om))
        with self._lock:
            self._rendered = rendered

    def render(self, *, openmetrics: bool, compress: bool) -> tuple[bytes, str]:
        """The whole exposition and its content type."""
        with self._lock:
            cached = self._rendered
        if cached is None:
            self.refresh()
            return self.render(openmetrics=openmetrics, compress=compress)
        if openmetrics:
            own = _openmetrics_latest(self._own)
            head = cached.openmetrics_gz if compress else cached.openmetrics
            content_type = OPENMETRICS_TYPE
        else:
            own = text_format.generate_latest(self._own)
            head = cached.text_gz if compress else cached.text
            content_type = TEXT_TYPE
        tail = _gzip(own) if compress else own
        return head + tail, content_type


def wants_openmetrics(accept: str) -> bool:
    """True when the Accept header asks for OpenMetrics 1.0 (as Prometheus does)."""
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media != "application/openmetrics-text":
            continue
        values = dict(p.split("=", 1) for p in params if "=" in p)
        if values.get("version", "1.0.0") in ("1.0.0", "0.0.1"):
            q = values.get("q", "1")
            try:
                if float(q) > 0:
                    return True
            except ValueError:
                return False
    return False


def accepts_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        coding, *params = (p.strip() for p in part.split(";"))
        if coding.lower() == "gzip":
            return not any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00") for p in params)
    return False
