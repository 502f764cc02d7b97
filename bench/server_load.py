"""Benchmark 7: the HTTP server under load and under attack, in its own process.

Three cases against a server process serving a /metrics body of --series series:
  1. --scrapers concurrent scrapers (200), each --scrapes times on a kept-alive
     connection: latency percentiles, against the same bytes served from memory by
     the standard library's threaded server (the floor);
  2. --slow connections (500) each trickling its request head, one byte a second,
     for --seconds (10): the server's threads and memory, and a real scrape a second;
  3. --flood connections (50) each sending 98 headers of 16 KB before any
     authentication: the server's peak memory.

--code DIR runs the server from another checkout (e.g. /work/main, for the figures
before a change); by default, this one.

    .venv/bin/python bench/server_load.py [--code /work/main] [--series 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVER = """
import logging, sys, threading
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from exporter.exposition import Exposition
from exporter.selfmetrics import SelfMetrics
from exporter.server import Health, make_server
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
SERIES = int(sys.argv[2])

class Many:
    def collect(self):
        family = GaugeMetricFamily("neo_bench_series", "Bench series.", labels=["n"])
        for n in range(SERIES):
            family.add_metric([str(n)], float(n))
        yield family

usage = CollectorRegistry(auto_describe=False)
usage.register(Many())
exposition = Exposition(usage, SelfMetrics(process=True).registry)
exposition.refresh()
if sys.argv[1] == "memory":
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    body, _ = exposition.render(openmetrics=False, compress=False)
    class Fixed(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 128  # as the exporter: only handlers differ
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fixed)
else:
    server = make_server("127.0.0.1", 0, exposition, Health())
threading.Thread(target=server.serve_forever, daemon=True).start()
print(server.server_address[1], flush=True)
sys.stdin.read()
"""


class Server:
    """A server process: ``kind`` is "exporter" or "memory" (the floor)."""

    def __init__(self, kind: str, code: Path, series: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(code)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER, kind, str(series)],
            env=env, cwd=code, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def status(self) -> tuple[int, float]:
        """The process's threads and resident memory (MB)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines())
        return int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.kill()
        self.process.wait()


def scrape_once(port: int, timeout: float = 60) -> float:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.request("GET", "/metrics", headers={"Accept-Encoding": "identity"})
    connection.getresponse().read()
    connection.close()
    return time.perf_counter() - started


def concurrent(server: Server, scrapers: int, scrapes: int) -> dict[str, float]:
    times: list[float] = []
    failures = 0
    lock = threading.Lock()
    peak = [0, 0.0]
    go = threading.Event()

    def scraper() -> None:
        nonlocal failures
        go.wait()
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        for _ in range(scrapes):
            started = time.perf_counter()
            try:
                connection.request("GET", "/metrics", headers={"Accept-Encoding": "identity"})
                connection.getresponse().read()
            except OSError:
                with lock:
                    failures += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
                continue
            with lock:
                times.append(time.perf_counter() - started)
        connection.close()

    threads = [threading.Thread(target=scraper) for _ in range(scrapers)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    go.set()
    while any(t.is_alive() for t in threads):
        threads_now, rss = server.status()
        peak[0], peak[1] = max(peak[0], threads_now), max(peak[1], rss)
        time.sleep(0.05)
    wall = time.perf_counter() - started
    ordered = sorted(times)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
        "max_ms": ordered[-1] * 1000,
        "per_s": len(times) / wall,
        "failures": failures,
        "threads": peak[0],
        "rss_mb": peak[1],
    }


def slow(server: Server, connections: int, seconds: float) -> dict[str, float]:
    socks = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        socks.append(sock)
    peak = [0, 0.0]
    latencies: list[float] = []
    failed = 0
    dropped = 0
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        for sock in socks:
            try:
                sock.sendall(b"X")
            except OSError:
                dropped += 1
                socks.remove(sock)
        threads_now, rss = server.status()
        peak[0], peak[1] = max(peak[0], threads_now), max(peak[1], rss)
        try:
            latencies.append(scrape_once(server.port, timeout=30))
        except OSError:
            failed += 1
        time.sleep(1)
    for sock in socks:
        sock.close()
    return {
        "threads": peak[0],
        "rss_mb": peak[1],
        "scrape_max_ms": max(latencies, default=float("nan")) * 1000,
        "scrapes_failed": failed,
        "slow_dropped": dropped,
    }


def flood(server: Server, connections: int) -> dict[str, float]:
    header = b"X-Flood-%d: " + b"v" * 16_000 + b"\r\n"
    peak = 0.0
    socks = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", server.port))
        socks.append(sock)
    for n in range(98):
        for sock in socks:
            with contextlib.suppress(OSError):  # closed by the server: its 431 sent
                sock.sendall(header % n if n else b"GET /metrics HTTP/1.1\r\n" + header % n)
        peak = max(peak, server.status()[1])
    for sock in socks:
        sock.close()
    return {"rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=ROOT)
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--scrapers", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--flood", type=int, default=50)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"server code: {args.code}   body: {args.series} series")
    print(f"1. {args.scrapers} concurrent scrapers x {args.scrapes} scrapes (kept-alive)")
    print(f"   {'server':22} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'scrapes/s':>10} "
          f"{'failed':>7} {'threads':>8} {'RSS MB':>7}")  # fmt: skip
    results = {}
    for kind in ("memory", "exporter"):
        server = Server(kind, args.code, args.series)
        try:
            row = results[kind] = concurrent(server, args.scrapers, args.scrapes)
        finally:
            server.close()
        name = "bytes from memory" if kind == "memory" else "exporter"
        print(f"   {name:22} {row['p50_ms']:8.1f} {row['p99_ms']:8.1f} {row['max_ms']:8.1f} "
              f"{row['per_s']:10.0f} {row['failures']:7.0f} {row['threads']:8.0f} "
              f"{row['rss_mb']:7.1f}")  # fmt: skip
    ratio = results["exporter"]["p50_ms"] / results["memory"]["p50_ms"]
    print(f"   exporter / memory, median: {ratio:.2f}x   (target <= 2x)")
    server = Server("exporter", args.code, args.series)
    try:
        row = slow(server, args.slow, args.seconds)
        print(f"2. {args.slow} slow connections for {args.seconds:g} s: peak threads "
              f"{row['threads']:.0f}, peak RSS {row['rss_mb']:.1f} MB; a scrape a second: "
              f"slowest {row['scrape_max_ms']:.0f} ms, {row['scrapes_failed']:.0f} failed; "
              f"{row['slow_dropped']:.0f} slow connections dropped by the server")  # fmt: skip
    finally:
        server.close()
    server = Server("exporter", args.code, args.series)
    try:
        idle_rss = server.status()[1]
        row = flood(server, args.flood)
        print(f"3. {args.flood} connections x 98 headers of 16 KB: peak RSS "
              f"{row['rss_mb']:.1f} MB (idle {idle_rss:.1f} MB)")  # fmt: skip
    finally:
        server.close()


if __name__ == "__main__":
    main()
