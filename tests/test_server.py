"""HTTP endpoints over loopback: routes, negotiation, readiness, stalled clients, web config."""

from __future__ import annotations

import base64
import gzip
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt
import httpx
import pytest
import structlog.testing
from prometheus_client import CollectorRegistry

from exporter.connections import ServerLimits
from exporter.exposition import Exposition
from exporter.selfmetrics import SelfMetrics
from exporter.server import Health, make_server
from exporter.webconfig import WebConfig, load_web_config
from tests.conftest import self_signed, write_web_config


def serve(
    health: Health, web: WebConfig | None = None, limits: ServerLimits | None = None
) -> Iterator[str]:
    own = SelfMetrics(process=False)
    exposition = Exposition(CollectorRegistry(), own.registry)
    bounds = limits or ServerLimits(request_timeout=2, idle_timeout=2)
    server = make_server("127.0.0.1", 0, exposition, health, web=web, limits=bounds)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    scheme = "https" if web and web.tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
def url(health: Health) -> Iterator[str]:
    yield from serve(health)


def test_metrics_plain_and_negotiated(url: str) -> None:
    plain = httpx.get(f"{url}/metrics")
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b"neo_exporter_build_info{" in plain.content
    om = httpx.get(
        f"{url}/metrics", headers={"Accept": "application/openmetrics-text;version=1.0.0"}
    )
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.content.endswith(b"# EOF\n")
    packed = httpx.get(f"{url}/metrics", headers={"Accept-Encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip"
    assert b"neo_exporter_build_info{" in packed.content  # httpx decoded it


def test_raw_gzip_body_is_valid(url: str) -> None:
    with httpx.Client(headers={"Accept-Encoding": "gzip"}) as client:
        with client.stream("GET", f"{url}/metrics") as response:
            raw = b"".join(response.iter_raw())
    assert b"neo_exporter_polls_total" in gzip.decompress(raw)


def test_readiness_follows_state_and_first_poll(url: str, health: Health) -> None:
    assert httpx.get(f"{url}/healthz").status_code == 200
    response = httpx.get(f"{url}/readyz")
    assert (response.status_code, response.text) == (503, "state not loaded\n")
    health.state_loaded.set()
    assert httpx.get(f"{url}/readyz").text == "first poll not finished\n"
    health.first_poll.set()
    assert httpx.get(f"{url}/readyz").status_code == 200


def test_landing_head_unknown_and_wrong_method(url: str) -> None:
    landing = httpx.get(f"{url}/")
    assert 'href="/metrics"' in landing.text
    head = httpx.head(f"{url}/metrics")
    assert head.status_code == 200
    assert int(head.headers["content-length"]) > 0
    assert head.content == b""
    assert httpx.get(f"{url}/nope").status_code == 404
    refused = httpx.post(f"{url}/metrics")
    assert (refused.status_code, refused.headers["allow"]) == (405, "GET, HEAD")


def test_stalled_clients_do_not_block_scrapes(url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    for sock in stalled:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes the headers
    try:
        with ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(lambda _: httpx.get(f"{url}/metrics", timeout=5).status_code, range(40))
            )
        assert codes == [200] * 40
    finally:
        for sock in stalled:
            sock.close()


def test_a_request_that_fails_is_an_event_not_a_traceback(
    health: Health, capsys: pytest.CaptureFixture[str]
) -> None:
    """A client gone mid-answer is a debug event; any other failure an error event with
    its traceback; neither is printed raw on stderr (socketserver's default)."""
    own = SelfMetrics(process=False)
    server = make_server("127.0.0.1", 0, Exposition(CollectorRegistry(), own.registry), health)
    try:
        with structlog.testing.capture_logs() as events:
            for exc in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(), KeyError("x")):
                try:
                    raise exc
                except Exception:
                    server.handle_error(None, ("127.0.0.1", 5555))
    finally:
        server.server_close()
    assert [(e["event"], e["log_level"], e["error"]) for e in events] == [
        ("http_connection_error", "debug", "BrokenPipeError"),
        ("http_connection_error", "debug", "ConnectionResetError"),
        ("request_failed", "error", "KeyError"),
    ]
    assert capsys.readouterr().err == ""


def test_basic_auth(tmp_path: Path, health: Health) -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = load_web_config(write_web_config(tmp_path, f"basic_auth_users:\n  prom: '{hashed}'\n"))
    for url in serve(health, web):
        denied = httpx.get(f"{url}/metrics")
        assert denied.status_code == 401
        assert "Basic" in denied.headers["www-authenticate"]
        assert httpx.get(f"{url}/metrics", auth=("prom", "wrong")).status_code == 401
        assert httpx.get(f"{url}/metrics", auth=("nobody", "s3cret")).status_code == 401
        assert httpx.get(f"{url}/metrics", auth=("prom", "s3cret")).status_code == 200


def test_tls(tmp_path: Path, health: Health) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    config = "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
    web = load_web_config(write_web_config(tmp_path, config))
    for url in serve(health, web):
        assert url.startswith("https://")
        response = httpx.get(
            f"{url}/healthz", verify=ssl.create_default_context(cafile=tmp_path / "cert.pem")
        )
        assert response.status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz")  # an unknown CA is refused
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(url.replace("https", "http") + "/healthz")


def test_client_certificates_are_required_with_a_client_ca(tmp_path: Path, health: Health) -> None:
    server_cert, _ = self_signed(tmp_path, "server")
    client_cert, client_key = self_signed(tmp_path, "client")
    config = (
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
        "  client_ca_file: client.pem\n"
    )
    web = load_web_config(write_web_config(tmp_path, config))
    for url in serve(health, web):
        trusted = ssl.create_default_context(cafile=server_cert)
        with pytest.raises((httpx.ReadError, httpx.ConnectError, httpx.RemoteProtocolError)):
            httpx.get(f"{url}/healthz", verify=trusted)  # no client certificate
        trusted.load_cert_chain(client_cert, client_key)
        assert httpx.get(f"{url}/healthz", verify=trusted).status_code == 200


def test_client_allowed_sans_admit_only_the_names_listed(tmp_path: Path, health: Health) -> None:
    server_cert, _ = self_signed(tmp_path, "server")
    good = self_signed(tmp_path, "good", san="DNS:scraper.example")
    bad = self_signed(tmp_path, "bad", san="DNS:other.example")
    (tmp_path / "clients.pem").write_text(good[0].read_text() + bad[0].read_text())
    config = (
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
        "  client_ca_file: clients.pem\n  client_allowed_sans: [scraper.example]\n"
    )
    web = load_web_config(write_web_config(tmp_path, config))
    for url in serve(health, web):
        for (cert, key), admitted in ((good, True), (bad, False)):
            context = ssl.create_default_context(cafile=server_cert)
            context.load_cert_chain(cert, key)
            if admitted:
                assert httpx.get(f"{url}/healthz", verify=context).status_code == 200
            else:
                with pytest.raises(httpx.RemoteProtocolError):
                    httpx.get(f"{url}/healthz", verify=context)


def test_any_password_gets_an_answer(tmp_path: Path, health: Health) -> None:
    """Past bcrypt's 72 bytes, or not UTF-8: 401, never a dropped connection; the scheme
    name in any case; the config's extra headers on every answer."""
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    body = (
        f"basic_auth_users:\n  prom: '{hashed}'\n"
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    )
    web = load_web_config(write_web_config(tmp_path, body))
    for url in serve(health, web):
        long = httpx.get(f"{url}/metrics", auth=("prom", "x" * 100))
        assert long.status_code == 401
        assert long.headers["x-frame-options"] == "deny"
        raw = base64.b64encode(b"prom:s3cret").decode()
        lower = httpx.get(f"{url}/healthz", headers={"Authorization": f"basic {raw}"})
        assert lower.status_code == 200
        assert lower.headers["x-frame-options"] == "deny"


def test_curve_preferences_are_honoured_over_the_wire(tmp_path: Path, health: Health) -> None:
    """With curve_preferences [CurveP384], a client offering only P-256 is refused, in
    TLS 1.2 and 1.3 alike; one offering P-384 is served (openssl s_client as client)."""
    self_signed(tmp_path, "server")
    config = (
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
        "  curve_preferences: [CurveP384]\n"
    )
    web = load_web_config(write_web_config(tmp_path, config))
    for url in serve(health, web):
        address = url.removeprefix("https://")
        outcomes = {}
        for group in ("P-256", "P-384"):
            for version in ("-tls1_2", "-tls1_3"):
                done = subprocess.run(
                    ["openssl", "s_client", "-connect", address, "-groups", group, version],
                    input=b"", capture_output=True, timeout=30, check=False,
                )  # fmt: skip
                outcomes[group, version] = b"Cipher is (NONE)" not in done.stdout
    assert outcomes == {
        ("P-256", "-tls1_2"): False, ("P-256", "-tls1_3"): False,
        ("P-384", "-tls1_2"): True, ("P-384", "-tls1_3"): True,
    }  # fmt: skip
