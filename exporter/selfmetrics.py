"""The exporter's own metrics: poll health, API requests, errors, ledger size."""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from exporter import __version__
from exporter.accounting import GUARDED_LABELS, VALUE_FIELDS
from exporter.catalogue import SELF, MetricSpec
from exporter.connections import NOISE_REASONS

_HELP = {spec.name: spec for spec in SELF}
POLL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def _spec(name: str) -> MetricSpec:
    return _HELP[name]


def _base(name: str) -> str:
    return name.removesuffix("_total")


class SelfMetrics:
    """Counters and gauges about the exporter itself, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

        def counter(name: str) -> Counter:
            spec = _spec(name)
            return Counter(_base(name), spec.help, spec.labels, registry=r)

        def gauge(name: str) -> Gauge:
            spec = _spec(name)
            return Gauge(name, spec.help, spec.labels, registry=r)

        self.build_info = gauge("neo_exporter_build_info")
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.last_poll_success = gauge("neo_exporter_last_poll_success")
        self.last_success_time = gauge("neo_exporter_last_successful_poll_timestamp_seconds")
        self.poll_duration = Histogram(
            "neo_exporter_poll_duration_seconds",
            _spec("neo_exporter_poll_duration_seconds").help,
            buckets=POLL_BUCKETS,
            registry=r,
        )
        self.polls = counter("neo_exporter_polls_total")
        self.api_requests = counter("neo_exporter_api_requests_total")
        self.errors = counter("neo_exporter_errors_total")
        self.http_errors = counter("neo_exporter_http_connection_errors_total")
        for reason in NOISE_REASONS:
            self.http_errors.labels(reason)
        self.ledger_runs = gauge("neo_exporter_ledger_runs")
        self.ledger_size = gauge("neo_exporter_ledger_size_bytes")
        self.label_overflow = counter("neo_exporter_label_overflow_total")
        self.sweep_requests = counter("neo_exporter_sweep_requests_total")
        self.sweep_runs_found = counter("neo_exporter_sweep_runs_found_total")
        self.value_decreases = counter("neo_exporter_value_decreases_total")
        for result in ("success", "failure"):
            self.polls.labels(result)
        # Present from the start so alerts on rate() see the first increase.
        for reason in (
            "credentials_rejected", "forbidden", "invalid_row", "invalid_field", "timeout",
        ):  # fmt: skip
            self.errors.labels(reason)
        for label in GUARDED_LABELS:
            self.label_overflow.labels(label)
        for name in (*VALUE_FIELDS, "agent_breakdown"):
            self.value_decreases.labels(name)

    def observe_request(self, endpoint: str, code: str) -> None:
        self.api_requests.labels(endpoint, code).inc()

    def observe_noise(self, reason: str) -> None:
        self.http_errors.labels(reason).inc()
