"""Container health check: exit 0 when the exporter on this host answers /healthz."""

from __future__ import annotations

import http.client
import os
import ssl
import sys

DEFAULT_LISTEN_ADDRESS = "0.0.0.0:9877"
TIMEOUT_SECONDS = 4.0


def target(listen_address: str) -> tuple[str, int]:
    """The loopback host and port to probe for a NEO_EXPORTER_LISTEN_ADDRESS value."""
    host, _, port = listen_address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        # A wildcard bind is reachable on loopback; IPv4 is the common denominator.
        host = "127.0.0.1" if host != "::" else "::1"
    return host, int(port)


def uses_tls(web_config_path: str | None) -> bool:
    """Whether the exporter-toolkit style web config turns on TLS."""
    if not web_config_path:
        return False
    import yaml

    with open(web_config_path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    return bool(config.get("tls_server_config"))


def probe(host: str, port: int, *, tls: bool) -> int:
    """HTTP status of GET /healthz; raises OSError when nothing answers."""
    connection: http.client.HTTPConnection
    if tls:
        # Liveness on loopback only asks "does the process answer", not "is the cert right".
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(
            host, port, timeout=TIMEOUT_SECONDS, context=context
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_SECONDS)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status
    finally:
        connection.close()


def main() -> int:
    host, port = target(os.environ.get("NEO_EXPORTER_LISTEN_ADDRESS", DEFAULT_LISTEN_ADDRESS))
    try:
        status = probe(host, port, tls=uses_tls(os.environ.get("NEO_EXPORTER_WEB_CONFIG_FILE")))
    except (OSError, http.client.HTTPException) as exc:
        print(f"healthcheck: {host}:{port} did not answer: {exc}", file=sys.stderr)
        return 1
    # 401: basic auth from the web config guards every path; the process is alive.
    if status in (200, 401):
        return 0
    print(f"healthcheck: /healthz answered {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
