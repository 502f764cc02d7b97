"""Exporter-toolkit style web config: optional TLS and bcrypt basic auth for the endpoints."""

from __future__ import annotations

import base64
import binascii
import hmac
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from exporter.errors import WebConfigError

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}


# exporter-toolkit client_auth_type values Python's ssl can honour. The toolkit's
# RequestClientCert and RequireAnyClientCert accept unverified certificates: refused.
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}


@dataclass
class WebConfig:
    """What the web config file asks for: a TLS context and/or basic-auth users."""

    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    _cache: dict[tuple[str, bytes], bool] = field(default_factory=dict, repr=False)

    def authorized(self, header: str | None) -> bool:
        """True when no users are configured, or the Authorization header matches one."""
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            bcrypt.checkpw(b"timing", _DUMMY)  # same cost whether or not the user exists
            return False
        # bcrypt is slow on purpose; remember verdicts so scrapes stay cheap.
        key = (user, hmac.digest(hashed, password.encode(), "sha256"))
        if key not in self._cache:
            if len(self._cache) > 1000:
                self._cache.clear()
            self._cache[key] = bcrypt.checkpw(password.encode(), hashed)
        return self._cache[key]


_DUMMY = bcrypt.hashpw(b"dummy", bcrypt.gensalt(rounds=4))


def _resolve(base: Path, value: Any, name: str) -> Path:
    if not isinstance(value, str) or not value:
        raise WebConfigError(f"web config: {name} must be a file path")
    path = Path(value)
    return path if path.is_absolute() else base / path


def load_web_config(path: Path) -> WebConfig:
    """Parse ``path``; relative file names are read relative to its folder, like the toolkit."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise WebConfigError(f"web config {path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        # Only the position: the text around it may be a password hash.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise WebConfigError(f"web config {path}: not valid YAML{where}") from None
    if not isinstance(document, dict):
        raise WebConfigError(f"web config {path}: expected a mapping at the top")
    unknown = set(document) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise WebConfigError(f"web config {path}: unknown keys {sorted(unknown)}")
    config = WebConfig()
    users = document.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError(f"web config {path}: basic_auth_users must map user names to hashes")
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(
                f"web config {path}: the password of user {user!r} must be a bcrypt hash "
                "(htpasswd -nBC 10 \"\" | tr -d ':\\n')"
            )
        config.users[str(user)] = hashed.encode()
    tls = document.get("tls_server_config")
    if tls:
        config.tls = _tls_context(path.parent, tls, path)
    return config


def _tls_context(base: Path, tls: Any, path: Path) -> ssl.SSLContext:
    if not isinstance(tls, dict):
        raise WebConfigError(f"web config {path}: tls_server_config must be a mapping")
    version = str(tls.get("min_version", "TLS12"))
    if version not in TLS_VERSIONS:
        raise WebConfigError(
            f"web config {path}: tls_server_config.min_version {version!r} is not one of "
            f"{', '.join(TLS_VERSIONS)}"
        )
    cert = _resolve(base, tls.get("cert_file"), "tls_server_config.cert_file")
    key = _resolve(base, tls.get("key_file"), "tls_server_config.key_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[version]
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(
            f"web config {path}: cannot load certificate {cert} / key {key}: {exc}"
        ) from None
    ca = tls.get("client_ca_file")
    # Given a CA and no auth type, client certificates are required and verified.
    auth_type = str(
        tls.get("client_auth_type", "RequireAndVerifyClientCert" if ca else "NoClientCert")
    )
    if auth_type not in CLIENT_AUTH:
        raise WebConfigError(
            f"web config {path}: tls_server_config.client_auth_type {auth_type!r} is not "
            f"supported; use one of {', '.join(CLIENT_AUTH)}"
        )
    if CLIENT_AUTH[auth_type] != ssl.CERT_NONE and not ca:
        raise WebConfigError(
            f"web config {path}: client_auth_type {auth_type} needs "
            "tls_server_config.client_ca_file"
        )
    if ca:
        ca_path = _resolve(base, ca, "tls_server_config.client_ca_file")
        try:
            context.load_verify_locations(ca_path)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(
                f"web config {path}: cannot load client_ca_file {ca_path}: {exc}"
            ) from None
        context.verify_mode = CLIENT_AUTH[auth_type]
    return context
