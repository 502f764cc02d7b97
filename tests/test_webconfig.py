"""The exporter-toolkit style web config: what it accepts, and what it refuses by name."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import bcrypt
import pytest
import yaml

from exporter import webconfig
from exporter.errors import WebConfigError
from exporter.webconfig import WebConfig, load_web_config
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
        ("tls_server_config:\n  cert_file: a.pem\n", "cert_file and key_file are both needed"),
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


TLS = "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One self-signed certificate and key for the module (openssl takes half a second)."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"), "server")
    return cert.read_text(), key.read_text()


@pytest.fixture
def tls_dir(tmp_path: Path, certificate: tuple[str, str]) -> Path:
    (tmp_path / "server.pem").write_text(certificate[0])
    (tmp_path / "server-key.pem").write_text(certificate[1])
    return tmp_path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  client_ca_flie: server.pem\n", r"tls_server_config: \['client_ca_flie'\]"),
        ("  min_versoin: TLS13\n", r"unknown keys in tls_server_config: \['min_versoin'\]"),
        ("  max_version: TLS10\n", "max_version is lower than min_version"),
        ("  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n", "'TLS_RSA_WITH_RC4_128_SHA' is not one"),
        ("  cipher_suites: TLS_RSA_WITH_AES_128_CBC_SHA\n", "must be a list of strings"),
        ("  prefer_server_cipher_suites: 'yes'\n", "must be true or false"),
        ("  curve_preferences: [CurveP256, CurveP384]\n", "can name one curve only"),
        ("  curve_preferences: [P256]\n", "'P256' is not one of"),
        ("  client_allowed_sans: [a.example]\n", "needs client_auth_type RequireAndVerify"),
        ("  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
        ("  cert: inline\n", "exclusive with cert_file"),
    ],
)  # fmt: skip
def test_every_tls_key_is_read_or_refused_by_name(tls_dir: Path, extra: str, message: str) -> None:
    with pytest.raises(WebConfigError, match=message):
        load_web_config(write_web_config(tls_dir, TLS + extra))


@pytest.mark.parametrize("body", ["tls_server_config: {}\n", "tls_server_config:\n"])
def test_an_empty_tls_section_is_refused_not_served_as_plain_http(
    tmp_path: Path, body: str
) -> None:
    with pytest.raises(WebConfigError, match="tls_server_config must be a mapping with cert_file"):
        load_web_config(write_web_config(tmp_path, body))


def test_tls_keys_are_honoured(tls_dir: Path) -> None:
    config = load_web_config(
        write_web_config(
            tls_dir,
            TLS + "  max_version: TLS12\n  prefer_server_cipher_suites: false\n"
            "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256]\n"
            "  curve_preferences: [CurveP384]\n",
        )
    )
    assert config.tls is not None
    context = config.tls.context
    assert context.maximum_version == ssl.TLSVersion.TLSv1_2
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"] == [
        "ECDHE-RSA-AES256-GCM-SHA384"
    ]


def test_inline_certificate_and_key_are_read(tls_dir: Path) -> None:
    cert = (tls_dir / "server.pem").read_text()
    key = (tls_dir / "server-key.pem").read_text()
    body = yaml.safe_dump({"tls_server_config": {"cert": cert, "key": key, "client_ca": cert}})
    config = load_web_config(write_web_config(tls_dir, body))
    assert config.tls is not None
    assert config.tls.context.verify_mode == ssl.CERT_REQUIRED
    assert len(config.tls.context.get_ca_certs()) == 1


VALID = "$2b$10$" + "a" * 53


@pytest.mark.parametrize(
    ("hashed", "message"),
    [
        ("$2b$10$short", "must be a bcrypt hash"),
        ("$2b$10$" + "!" * 53, "must be a bcrypt hash"),
        ("$2b$99$" + "a" * 53, "has cost 99; bcrypt allows 4 to 31"),
        ("$2x$10$" + "a" * 53, "must be a bcrypt hash"),
    ],
)
def test_bcrypt_hashes_are_checked_at_start(tmp_path: Path, hashed: str, message: str) -> None:
    with pytest.raises(WebConfigError, match=message) as caught:
        load_web_config(write_web_config(tmp_path, f"basic_auth_users:\n  prom: '{hashed}'\n"))
    assert hashed not in str(caught.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("http_server_config:\n  http2: true\n", "serves HTTP/1.1 only"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "must be one of"),
        ("http_server_config:\n  headers:\n    X-Powered-By: me\n", "is not one of"),
        ("http_server_config:\n  htp2: false\n", "unknown keys in http_server_config"),
        ("rate_limit:\n  interval: 1s\n  burst: 5\n", "rate_limit is not supported"),
    ],
)
def test_http_server_config_is_read_or_refused(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(WebConfigError, match=message):
        load_web_config(write_web_config(tmp_path, body))


def basic(user: str, password: bytes) -> str:
    return "Basic " + base64.b64encode(user.encode() + b":" + password).decode()


@pytest.fixture
def users(tmp_path: Path) -> WebConfig:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=5)).decode()
    return load_web_config(write_web_config(tmp_path, f"basic_auth_users:\n  prom: '{hashed}'\n"))


def test_basic_auth_verdicts(users: WebConfig) -> None:
    assert users.authorized(basic("prom", b"s3cret"))
    assert users.authorized("basic " + basic("prom", b"s3cret")[6:])  # scheme in any case
    assert not users.authorized(basic("prom", b"wrong"))
    assert not users.authorized(basic("nobody", b"s3cret"))
    assert not users.authorized(basic("prom", b"x" * 100))  # past bcrypt's 72 bytes
    assert not users.authorized(basic("prom", b"s3cret\xff"))
    assert not users.authorized("Bearer abc")
    assert not users.authorized("Basic !!!")


def test_unknown_users_cost_a_check_at_the_configured_cost(
    users: WebConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown name is checked against a hash of the users' cost, not answered at once:
    its time tells nothing of whether the name exists."""
    checked: list[bytes] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        checked.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(webconfig.bcrypt, "checkpw", spy)
    assert not users.authorized(basic("nobody", b"s3cret"))
    assert not users.authorized(basic("prom", b"wrong"))
    assert [h[:7] for h in checked] == [b"$2b$05$", b"$2b$05$"]
    assert not users.authorized(basic("nobody", b"s3cret"))  # remembered, like a known user
    assert len(checked) == 2
