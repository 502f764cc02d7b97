"""The ``tls_server_config`` of a web config, read key by key as exporter-toolkit does."""

from __future__ import annotations

import ipaddress
import os
import ssl
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

# Go's names of the cipher suites its crypto/tls calls secure (tls.CipherSuites()), as
# OpenSSL names them. The TLS 1.3 suites are not configurable, in Go or here: always on.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": "",
    "TLS_AES_256_GCM_SHA384": "",
    "TLS_CHACHA20_POLY1305_SHA256": "",
}

# Go's curve names, as OpenSSL names them. Python's ssl sets one ECDH curve, not a list.
CURVES = {
    "CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1",
    "X25519": "X25519",
}  # fmt: skip

TLS_KEYS = {
    "cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type",
    "client_ca_file", "client_allowed_sans", "min_version", "max_version",
    "cipher_suites", "prefer_server_cipher_suites", "curve_preferences",
}  # fmt: skip

# subjectAltName kinds in ssl.SSLSocket.getpeercert(), all matched exactly as Go does.
_SAN_KINDS = {"DNS", "IP Address", "email", "URI"}


@dataclass(frozen=True)
class ServerTls:
    """The server's TLS context, and the SANs a client certificate must carry one of."""

    context: ssl.SSLContext
    allowed_sans: frozenset[str] = frozenset()

    def peer_allowed(self, peer: dict[str, Any] | None) -> bool:
        """Whether a verified client certificate (``getpeercert()``) may connect."""
        if not self.allowed_sans:
            return True
        names = [v for kind, v in (peer or {}).get("subjectAltName", ()) if kind in _SAN_KINDS]
        return any(_canonical(name) in self.allowed_sans for name in names)


def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))  # "0:0::1" and "::1" are one address
    except ValueError:
        return name


class _Reader:
    """Typed reads of the mapping's keys, each error naming the key and the file."""

    def __init__(self, tls: dict[str, Any], where: str) -> None:
        self.tls = tls
        self.where = where

    def fail(self, key: str, problem: str) -> WebConfigError:
        return WebConfigError(f"{self.where}: tls_server_config.{key} {problem}")

    def text(self, key: str) -> str | None:
        value = self.tls.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.fail(key, "must be a string")
        return value

    def names(self, key: str, known: dict[str, str] | None = None) -> list[str]:
        value = self.tls.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, "must be a list of strings")
        unknown = [v for v in value if known is not None and v not in known]
        if unknown:
            raise self.fail(key, f"{unknown[0]!r} is not one of {', '.join(known or ())}")
        return list(value)

    def choice(self, key: str, default: str, options: dict[str, Any]) -> str:
        value = self.text(key) or default
        if value not in options:
            raise self.fail(key, f"{value!r} is not one of {', '.join(options)}")
        return value


def tls_context(base: Path, tls: Any, where: str) -> ServerTls:
    """The server TLS of ``tls_server_config``; file names are read relative to ``base``."""
    if not isinstance(tls, dict) or not tls:
        raise WebConfigError(
            f"{where}: tls_server_config must be a mapping with cert_file and key_file "
            "(leave the key out to serve plain HTTP)"
        )
    unknown = sorted(set(tls) - TLS_KEYS)
    if unknown:
        raise WebConfigError(
            f"{where}: unknown keys in tls_server_config: {unknown}; known: {sorted(TLS_KEYS)}"
        )
    read = _Reader(tls, where)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    lowest = TLS_VERSIONS[read.choice("min_version", "TLS12", TLS_VERSIONS)]
    highest = TLS_VERSIONS[read.choice("max_version", "TLS13", TLS_VERSIONS)]
    if highest < lowest:
        raise read.fail("max_version", "is lower than min_version")
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated, not ours to refuse
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version, context.maximum_version = lowest, highest
    _load_certificate(base, read, context)
    suites = [CIPHER_SUITES[s] for s in read.names("cipher_suites", CIPHER_SUITES) if s]
    if [s for s in suites if s]:
        context.set_ciphers(":".join(s for s in suites if s))
    prefer = tls.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise read.fail("prefer_server_cipher_suites", "must be true or false")
    if prefer:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    curves = read.names("curve_preferences", CURVES)
    if len(curves) > 1:
        raise read.fail("curve_preferences", "can name one curve only here (Python's ssl)")
    if curves:
        context.set_ecdh_curve(CURVES[curves[0]])
    auth = CLIENT_AUTH[_client_auth(read)]
    ca_file, ca = read.text("client_ca_file"), read.text("client_ca")
    if ca_file and ca:
        raise read.fail("client_ca", "and client_ca_file are exclusive: give one")
    if auth != ssl.CERT_NONE and not (ca_file or ca):
        raise read.fail("client_auth_type", "needs client_ca_file (or client_ca)")
    sans = frozenset(_canonical(s) for s in read.names("client_allowed_sans"))
    if sans and auth != ssl.CERT_REQUIRED:
        raise read.fail("client_allowed_sans", "needs client_auth_type RequireAndVerifyClientCert")
    try:
        if ca_file:
            context.load_verify_locations(cafile=_resolve(base, ca_file))
        elif ca:
            context.load_verify_locations(cadata=ca)
    except (OSError, ssl.SSLError) as exc:
        raise read.fail(
            "client_ca_file" if ca_file else "client_ca", f"cannot load: {exc}"
        ) from None
    context.verify_mode = auth
    return ServerTls(context, sans)


def _client_auth(read: _Reader) -> str:
    has_ca = bool(read.text("client_ca_file") or read.text("client_ca"))
    # Given a CA and no auth type, client certificates are required and verified.
    default = "RequireAndVerifyClientCert" if has_ca else "NoClientCert"
    value = read.text("client_auth_type") or default
    if value not in CLIENT_AUTH:
        raise read.fail(
            "client_auth_type", f"{value!r} is not supported; use one of {', '.join(CLIENT_AUTH)}"
        )
    return value


def _resolve(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _load_certificate(base: Path, read: _Reader, context: ssl.SSLContext) -> None:
    cert_file, key_file = read.text("cert_file"), read.text("key_file")
    cert, key = read.text("cert"), read.text("key")
    if (cert_file and cert) or (key_file and key):
        raise read.fail("cert", "and key are exclusive with cert_file and key_file: give one pair")
    if not (cert_file or cert) or not (key_file or key):
        raise read.fail("cert_file", "and key_file are both needed to serve TLS")
    load: Callable[[Path, Path], None] = context.load_cert_chain
    try:
        if cert_file and key_file:
            load(_resolve(base, cert_file), _resolve(base, key_file))
            return
        # Inline PEM: ssl reads certificates from files only; a private folder that
        # is gone once they are loaded.
        with tempfile.TemporaryDirectory(prefix="neo-exporter-tls-") as folder:
            cert_path = _inline(folder, "cert.pem", cert) or _resolve(base, cert_file or "")
            key_path = _inline(folder, "key.pem", key) or _resolve(base, key_file or "")
            load(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        # The reason, never the key's text.
        raise read.fail("cert_file", f"/ key_file: cannot load the certificate: {exc}") from None


def _inline(folder: str, name: str, text: str | None) -> Path | None:
    """``text`` written to a file only this user may read, or None when not given."""
    if text is None:
        return None
    path = Path(folder, name)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(text)
    return path
