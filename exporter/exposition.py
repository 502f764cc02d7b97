"""Exposition: renders the usage families once per poll and serves cached bytes."""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_format
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics_format
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
EOF_LINE = b"# EOF\n"
# The OpenMetrics writer has no annotations; this gives it the signature it has.
_openmetrics_latest: Callable[[CollectorRegistry], bytes] = openmetrics_format.generate_latest
# Both writers' way of writing a float (1.0, +Inf, 1.5e+07): used as it is, to match them.
_go_float: Callable[[float], str] = floatToGoString


# A gzip member header: deflate, no flags, mtime 0, no extra flags, unknown OS.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


@dataclass(frozen=True)
class _Deflated:
    """A body prefix compressed once: raw deflate blocks ending on a byte boundary."""

    blocks: bytes
    crc: int
    size: int

    @classmethod
    def of(cls, data: bytes) -> _Deflated:
        packer = zlib.compressobj(5, zlib.DEFLATED, -zlib.MAX_WBITS)
        # A sync flush ends the stream without its final block, so more may follow.
        blocks = packer.compress(data) + packer.flush(zlib.Z_SYNC_FLUSH)
        return cls(blocks, zlib.crc32(data), len(data))

    def gzip_with(self, tail: bytes) -> bytes:
        """One gzip member holding the cached prefix followed by ``tail``.

        A single member, not two concatenated ones: some clients (httpx, curl) stop
        reading after the first member of a multi-member stream.
        """
        packer = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
        rest = packer.compress(tail) + packer.flush()
        crc = zlib.crc32(tail, self.crc)
        trailer = struct.pack("<II", crc, (self.size + len(tail)) & 0xFFFFFFFF)
        return GZIP_HEADER + self.blocks + rest + trailer


@dataclass(frozen=True)
class _Rendered:
    text: bytes
    text_gz: _Deflated
    openmetrics: bytes  # without the closing "# EOF"
    openmetrics_gz: _Deflated


@dataclass(frozen=True)
class _Collected:
    """Metric families collected once, offered to both writers as a registry would."""

    families: list[Metric]

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class Exposition:
    """Usage bytes rendered after each committed poll; self-metrics rendered per scrape.

    Both parts are concatenated per scrape. The usage part is also cached as
    compressed deflate blocks, so a gzip scrape only compresses the small tail.
    """

    def __init__(self, usage: CollectorRegistry, own: CollectorRegistry) -> None:
        self._usage = usage
        self._own = own
        self._lock = threading.Lock()
        self._rendered: _Rendered | None = None
        # Per series (family name, labels but "le"): its samples when last rendered,
        # and its text and OpenMetrics lines.
        self._series: dict[tuple[str, SeriesKey], tuple[list[Sample], bytes, bytes]] = {}
        self._headers: dict[tuple[str, str, str, str], tuple[bytes, bytes]] = {}

    def refresh(self) -> None:
        """Render the usage families after a poll.

        Only series whose samples changed are rendered again (comparing samples costs a
        fraction of rendering them); the others keep their bytes. Each sample is one
        line in both formats, so the changed series of a family are rendered together
        and their lines handed back in order.
        """
        text_parts: list[bytes] = []
        om_parts: list[bytes] = []
        kept: dict[tuple[str, SeriesKey], tuple[list[Sample], bytes, bytes]] = {}
        changed = self._rendered is None
        for family in self._usage.collect():
            series: dict[SeriesKey, list[Sample]] = {}
            for sample in family.samples:
                # A family's samples carry its labels in one order; "le" splits no series.
                key = tuple(kv for kv in sample.labels.items() if kv[0] != "le")
                found = series.get(key)
                if found is None:
                    series[key] = [sample]
                else:
                    found.append(sample)
            stale = [
                key
                for key, samples in series.items()
                if (cached := self._series.get((family.name, key))) is None or cached[0] != samples
            ]
            head = (family.name, family.documentation, family.type, family.unit)
            if head not in self._headers:
                self._headers[head] = _render(_like(family, []))
            header_text, header_om = self._headers[head]
            fresh: dict[SeriesKey, tuple[bytes, bytes]] = {}
            if stale:
                changed = True
                stale_samples = [x for key in stale for x in series[key]]
                lines = _sample_lines(family, stale_samples)
                if lines is None:  # something only prometheus_client writes: let it
                    text, om = _render(_like(family, stale_samples))
                    lines = _lines(text, header_text), _lines(om, header_om)
                text_lines, om_lines = lines
                at = 0
                for key in stale:
                    count = len(series[key])
                    fresh[key] = (
                        b"".join(text_lines[at : at + count]),
                        b"".join(om_lines[at : at + count]),
                    )
                    at += count
            text_parts.append(header_text)
            om_parts.append(header_om)
            for key, samples in series.items():
                if key in fresh:
                    text, om = fresh[key]
                else:
                    _, text, om = self._series[(family.name, key)]
                kept[(family.name, key)] = (samples, text, om)
                text_parts.append(text)
                om_parts.append(om)
        changed = changed or kept.keys() != self._series.keys()
        self._series = kept
        if not changed:
            return  # the same bytes, already compressed
        text, om = b"".join(text_parts), b"".join(om_parts)
        rendered = _Rendered(text, _Deflated.of(text), om, _Deflated.of(om))
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
            plain, packed, content_type = (
                cached.openmetrics,
                cached.openmetrics_gz,
                OPENMETRICS_TYPE,
            )
        else:
            own = text_format.generate_latest(self._own)
            plain, packed, content_type = cached.text, cached.text_gz, TEXT_TYPE
        if compress:
            return packed.gzip_with(own), content_type
        return plain + own, content_type


SeriesKey = tuple[tuple[str, str], ...]


def _like(family: Metric, samples: list[Sample]) -> Metric:
    """A family with the same name, help, type and unit, holding ``samples``."""
    copy = Metric(family.name, family.documentation, family.type, family.unit)
    copy.samples = samples
    return copy


def _render(family: Metric) -> tuple[bytes, bytes]:
    """One family in the text format and in OpenMetrics (without the closing # EOF)."""
    one = _Collected([family])
    text = text_format.generate_latest(one)
    return text, _openmetrics_latest(one).removesuffix(EOF_LINE)  # type: ignore[arg-type]


def _lines(body: bytes, header: bytes) -> list[bytes]:
    """The sample lines of a rendered family, one per sample, without its header."""
    if not body.startswith(header):
        raise AssertionError("a family rendered without its usual header")
    # Only "\n" ends a line: a label value may hold a raw "\r", which both writers keep.
    rest = body[len(header) :].split(b"\n")
    if rest[-1]:
        raise AssertionError("a rendered family that does not end with a newline")
    return [line + b"\n" for line in rest[:-1]]


def _escape(value: str) -> str:
    """A label value as both writers escape it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _legacy(name: str) -> bool:
    """[a-zA-Z_][a-zA-Z0-9_]*: written as it is by both writers (OpenMetrics would
    rewrite a ":" in a sample name, so it is left out here)."""
    return name.isascii() and name.isidentifier()


def _sample_lines(family: Metric, samples: list[Sample]) -> tuple[list[bytes], list[bytes]] | None:
    """Each sample's line in the text format and in OpenMetrics, byte for byte what
    prometheus_client writes, at a small part of its cost (it checks every character of
    every name). None when a sample needs what only prometheus_client writes: a timestamp,
    an OpenMetrics-only sample the text format moves, a name outside the legacy set, an
    exemplar where OpenMetrics allows none; the caller then lets prometheus_client write.
    """
    moved = {family.name + suffix for suffix in ("_created", "_gsum", "_gcount")}
    text: list[bytes] = []
    om: list[bytes] = []
    checked: set[tuple[str, ...]] = set()  # label name sets already found legacy
    for sample in samples:
        name, labels, value, exemplar = sample.name, sample.labels, sample.value, sample.exemplar
        if (
            sample.timestamp is not None
            or sample.native_histogram is not None
            or value is None
            or name in moved
            or not _legacy(name)
        ):
            return None
        if labels:
            names = tuple(labels)
            if names not in checked:
                if not all(_legacy(label) for label in names):
                    return None
                checked.add(names)
            pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            head = f"{name}{{{pairs}}} {_go_float(value)}"
        else:
            head = f"{name} {_go_float(value)}"
        text.append(f"{head}\n".encode())
        if exemplar is None:
            om.append(text[-1])
            continue
        # Where OpenMetrics allows exemplars: counter totals and histogram buckets.
        if not (
            (family.type == "counter" and name.endswith("_total"))
            or (family.type in ("histogram", "gaugehistogram") and name.endswith("_bucket"))
        ):
            return None
        pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(exemplar.labels.items()))
        tail = f" # {{{pairs}}} {_go_float(exemplar.value)}"
        if exemplar.timestamp is not None:
            tail += f" {exemplar.timestamp}"
        om.append(f"{head}{tail}\n".encode())
    return text, om


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
    """Whether an Accept-Encoding value admits gzip (RFC 9110): named with a q above 0,
    or not named while ``*`` is, with a q above 0. Names and parameters in any case."""
    weights: dict[str, float] = {}
    for part in accept_encoding.split(","):
        coding, *params = (p.strip() for p in part.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 0.0  # unreadable: not taken as a yes
        weights.setdefault(coding.lower(), weight)
    return weights.get("gzip", weights.get("*", 0.0)) > 0
