"""Benchmark 1: /metrics at large cardinality, cached bytes vs memory vs per-scrape rendering.

Builds a ledger with MODELS x TOOLS tool-duration histograms (about 100,000 series with
the counters), then measures the median latency of GET /metrics over loopback for
  - the exporter's server serving bytes rendered once per poll (text, OpenMetrics, gzip),
  - the same server code answering with a fixed bytes object from memory (the floor),
  - prometheus_client rendering the same registry on every scrape (the naive exporter).

    .venv/bin/python bench/metrics_endpoint.py [--models 50] [--tools 100] [--scrapes 30]
"""

from __future__ import annotations

import argparse
import http.client
import logging
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import structlog
from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest

from exporter.accounting import Deltas
from exporter.collector import UsageCollector
from exporter.exposition import Exposition
from exporter.ledger import Ledger, PollChanges
from exporter.selfmetrics import SelfMetrics
from exporter.server import Health, make_server

BUCKETS = {
    "neo_tool_call_duration_seconds": [
        0.1,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
        60,
        120,
        300,
        900,
        1800,
        3600,
    ],
    "neo_task_run_credits": [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100],
    "neo_task_run_execution_seconds": [10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200],
}
STATUSES = ("completed", "error", "failed", "aborted")


def build_ledger(path: Path, models: int, tools: int) -> Ledger:
    ledger = Ledger(path, buckets=BUCKETS, max_label_values=max(models, tools, 10) + 1)
    deltas = Deltas()
    for m in range(models):
        model = f"model-{m:02d}"
        for status in STATUSES:
            for name in ("neo_credits_total", "neo_steps_total", "neo_tool_calls_total"):
                deltas.add(name, (model, status), 1000 + m)
            deltas.observe("neo_task_run_credits", (model, status), 10**9)
        for t in range(tools):
            for duration in (80, 2500, 700_000):
                deltas.observe("neo_tool_call_duration_seconds", (model, f"tool_{t:03d}"), duration)
    ledger.commit(PollChanges(deltas=deltas))
    return ledger


def grow(ledger: Ledger, share: float) -> int:
    """A poll that grows ``share`` of the tool-duration series; returns how many it grew."""
    deltas = Deltas()
    names = sorted(k for k in ledger.histograms if k[0] == "neo_tool_call_duration_seconds")
    picked = names[:: max(1, round(1 / share))]
    for name, labels in picked:
        deltas.observe(name, labels, 1234)
    ledger.commit(PollChanges(deltas=deltas))
    return len(picked)


class _Fixed(BaseHTTPRequestHandler):
    body = b""
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


class _Naive(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = generate_latest(self.registry)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve(server: ThreadingHTTPServer) -> str:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/metrics"


def median_ms(url: str, scrapes: int, headers: dict[str, str]) -> tuple[float, int]:
    """Median time to fetch the whole (possibly compressed) body on a kept-alive connection.

    The stdlib client reads the body in one go, so the figure is the server's, not
    a client library's parsing cost.
    """
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=60)
    times = []
    size = 0
    for attempt in range(scrapes + 1):
        started = time.perf_counter()
        connection.request("GET", address.path, headers=headers)
        body = connection.getresponse().read()
        if attempt:  # the first one warms up
            times.append(time.perf_counter() - started)
        size = len(body)
    connection.close()
    return statistics.median(times) * 1000, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--tools", type=int, default=100)
    parser.add_argument("--scrapes", type=int, default=30)
    args = parser.parse_args()
    disable_created_metrics()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        ledger = build_ledger(Path(tmp) / "bench.db", args.models, args.tools)
        usage = CollectorRegistry(auto_describe=False)
        usage.register(UsageCollector(ledger, lookback=86_400, pinned=[]))
        own = SelfMetrics(process=True)
        exposition = Exposition(usage, own.registry)
        started = time.perf_counter()
        exposition.refresh()
        refresh_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        exposition.refresh()  # a poll that changed nothing
        quiet_ms = (time.perf_counter() - started) * 1000
        changed = grow(ledger, share=0.01)
        started = time.perf_counter()
        exposition.refresh()  # a poll that changed 1% of the series
        grown_ms = (time.perf_counter() - started) * 1000
        health = Health()
        cached = serve(make_server("127.0.0.1", 0, exposition, health))
        body, _ = exposition.render(openmetrics=False, compress=False)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        _Fixed.body = body
        memory = serve(ThreadingHTTPServer(("127.0.0.1", 0), _Fixed))
        _Naive.registry = usage
        naive = serve(ThreadingHTTPServer(("127.0.0.1", 0), _Naive))

        plain = {"Accept-Encoding": "identity"}
        gz = {"Accept-Encoding": "gzip"}
        om = {"Accept": "application/openmetrics-text;version=1.0.0", **plain}
        rows = [
            ("bytes from memory (floor)", *median_ms(memory, args.scrapes, plain)),
            ("exporter, text", *median_ms(cached, args.scrapes, plain)),
            ("exporter, OpenMetrics", *median_ms(cached, args.scrapes, om)),
            ("exporter, text + gzip", *median_ms(cached, args.scrapes, gz)),
            (
                "exporter, OpenMetrics + gzip",
                *median_ms(cached, args.scrapes, {**om, "Accept-Encoding": "gzip"}),
            ),
            ("prometheus_client per scrape", *median_ms(naive, max(5, args.scrapes // 5), plain)),
        ]
        floor, exporter_text, naive_ms = rows[0][1], rows[1][1], rows[-1][1]
        print(
            f"series: {series:,}   body: {len(body) / 1e6:.1f} MB   "
            f"render once per poll: {refresh_ms:.0f} ms; again, nothing changed: "
            f"{quiet_ms:.0f} ms; {changed:,} series changed: {grown_ms:.0f} ms"
        )
        print(f"{'case':34} {'median ms':>10} {'bytes sent':>12}")
        for name, ms, size in rows:
            print(f"{name:34} {ms:10.2f} {size:12,}")
        print(f"exporter / memory floor:       {exporter_text / floor:6.2f}x   (target <= 2x)")
        print(f"per-scrape render / exporter:  {naive_ms / exporter_text:6.1f}x   (target >= 50x)")
        ledger.close()


if __name__ == "__main__":
    main()
