"""The exporter-toolkit style web config: what it accepts, and what it refuses by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.errors import WebConfigError
from exporter.webconfig import load_web_config
from tests.conftest import self_signed, write_web_config


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("basic_auth_users:\n  prom: plaintext\n", "must be a bcrypt hash"),
        ("tls_server_config:\n  cert_file: missing.pem\n  key_file: k.pem\n", "cannot load"),
        ("nonsense: 1\n", "unknown keys"),
        ("- a list\n", "expected a mapping"),
        ("basic_auth_users: [\n", "not valid YAML"),
        ("basic_auth_users:\n  prom: '$2b$plaintext\n", "not valid YAML at line"),
        ("tls_server_config:\n  min_version: TLS99\n", "min_version 'TLS99' is not one of"),
    ],
)
def test_bad_web_config_is_named(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(WebConfigError, match=message) as caught:
        load_web_config(write_web_config(tmp_path, body))
    assert "plaintext" not in str(caught.value)  # a password is never echoed back


def test_unverifiable_client_auth_types_are_refused(tmp_path: Path) -> None:
    self_signed(tmp_path, "server")
    config = (
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
        "  client_ca_file: server.pem\n  client_auth_type: RequireAnyClientCert\n"
    )
    with pytest.raises(WebConfigError, match="'RequireAnyClientCert' is not supported"):
        load_web_config(write_web_config(tmp_path, config))
