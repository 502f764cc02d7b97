"""Exporter-toolkit web config: optional TLS, bcrypt basic auth and response headers.

Read as exporter-toolkit documents it (docs/web-configuration.md): every key it knows
is honoured or refused at start with a message naming it, and unknown keys are refused,
so a misspelled ``client_ca_flie`` cannot quietly serve without client certificates.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from exporter.errors import WebConfigError
from exporter.webtls import ServerTls, tls_context

TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config", "rate_limit"}
# Headers exporter-toolkit lets a config add, with the values it accepts (None: any).
HEADERS: dict[str, frozenset[str] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": frozenset({"deny", "sameorigin"}),
    "X-Content-Type-Options": frozenset({"nosniff"}),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}
# A bcrypt hash as htpasswd and Go write it: version, two-digit cost, 53 characters of
# salt and digest in bcrypt's alphabet.
_BCRYPT = re.compile(r"(\$2[aby]\$)(\d\d)(\$[./A-Za-z0-9]{53})")
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further; bcrypt 5 refuses longer passwords
HASH_HELP = "(htpasswd -nBC 10 \"\" | tr -d ':\\n')"


@dataclass
class WebConfig:
    """What the web config file asks for: TLS, basic-auth users, extra response headers."""

    tls: ServerTls | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: dict[str, str] = field(default_factory=dict)
    # Stands in for unknown users, at the cost of the configured hashes: a wrong name
    # costs what a wrong password does.
    _dummy: bytes = b""
    _cache: dict[bytes, bool] = field(default_factory=dict, repr=False)
    _cache_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def authorized(self, header: str | None) -> bool:
        """True when no users are configured, or the Authorization header matches one.

        The scheme is read without regard to case (RFC 9110); the verdict for a user
        name and password is remembered (bcrypt is slow on purpose), keyed by a keyed
        digest of both, for known and unknown names alike."""
        if not self.users:
            return True
        scheme, _, credentials = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            raw = base64.b64decode(credentials.strip(), validate=True)
            name, _, password = raw.partition(b":")
            user = name.decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        if len(password) > MAX_PASSWORD_BYTES:
            return False  # no bcrypt hash can match it, for any user
        key = hmac.digest(self._cache_key, raw, "sha256")
        verdict = self._cache.get(key)
        if verdict is None:
            hashed = self.users.get(user)
            matches = bcrypt.checkpw(password, hashed or self._dummy)
            verdict = matches and hashed is not None
            if len(self._cache) >= 1000:
                self._cache.clear()
            self._cache[key] = verdict
        return verdict


def load_web_config(path: Path) -> WebConfig:
    """Parse ``path``; relative file names are read relative to its folder, like the toolkit."""
    where = f"web config {path}"
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise WebConfigError(f"{where}: cannot read ({exc.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        # Only the position: the text around it may be a password hash.
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise WebConfigError(f"{where}: not valid YAML{at}") from None
    if not isinstance(document, dict):
        raise WebConfigError(f"{where}: expected a mapping at the top")
    unknown = set(document) - TOP_KEYS
    if unknown:
        raise WebConfigError(f"{where}: unknown keys {sorted(map(str, unknown))}")
    if document.get("rate_limit") not in (None, {}):
        raise WebConfigError(f"{where}: rate_limit is not supported; rate-limit in a proxy")
    config = WebConfig(users=_users(document.get("basic_auth_users"), where))
    if config.users:
        cost = max(int(h[4:6]) for h in config.users.values())  # checked by _users
        config._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))
    config.headers = _http_server(document.get("http_server_config"), where)
    if "tls_server_config" in document:
        config.tls = tls_context(path.parent, document["tls_server_config"], where)
    return config


def _users(users: Any, where: str) -> dict[str, bytes]:
    if users is None:
        return {}
    if not isinstance(users, dict):
        raise WebConfigError(f"{where}: basic_auth_users must map user names to hashes")
    found: dict[str, bytes] = {}
    for user, hashed in users.items():
        parts = _BCRYPT.fullmatch(hashed) if isinstance(hashed, str) else None
        if parts is None:
            raise WebConfigError(
                f"{where}: the password of user {user!r} must be a bcrypt hash {HASH_HELP}"
            )
        version, cost, rest = parts.groups()
        if not 4 <= int(cost) <= 31:
            raise WebConfigError(
                f"{where}: the hash of user {user!r} has cost {cost}; bcrypt allows 4 to 31"
            )
        try:  # the hash as bcrypt reads it, at the lowest cost: a bad one fails now
            bcrypt.checkpw(b"", f"{version}04{rest}".encode())
        except ValueError:
            raise WebConfigError(
                f"{where}: the password of user {user!r} is not a valid bcrypt hash {HASH_HELP}"
            ) from None
        found[str(user)] = hashed.encode()
    return found


def _http_server(section: Any, where: str) -> dict[str, str]:
    """The response headers of ``http_server_config``. HTTP/2 is not served: refused."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise WebConfigError(f"{where}: http_server_config must be a mapping")
    unknown = set(section) - {"http2", "headers"}
    if unknown:
        raise WebConfigError(f"{where}: unknown keys in http_server_config: {sorted(unknown)}")
    if section.get("http2") not in (None, False):
        raise WebConfigError(
            f"{where}: http_server_config.http2: this exporter serves HTTP/1.1 only; "
            "set http2: false or leave it out"
        )
    headers = section.get("headers") or {}
    if not isinstance(headers, dict):
        raise WebConfigError(f"{where}: http_server_config.headers must be a mapping")
    found: dict[str, str] = {}
    for name, value in headers.items():
        if name not in HEADERS:
            raise WebConfigError(
                f"{where}: http_server_config.headers.{name} is not one of {', '.join(HEADERS)}"
            )
        allowed = HEADERS[name]
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise WebConfigError(f"{where}: http_server_config.headers.{name} must be one line")
        if allowed is not None and value and value.lower() not in allowed:
            raise WebConfigError(
                f"{where}: http_server_config.headers.{name} must be one of {sorted(allowed)}"
            )
        if value:
            found[name] = value
    return found
