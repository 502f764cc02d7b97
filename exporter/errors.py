"""The exporter's error tree: what can go wrong, named for what it means.

    ExporterError                 base of everything raised on purpose
    ├── ConfigError               a bad setting (exporter.settings); exit status 2
    ├── StateError                the SQLite ledger is unreadable, corrupt or from elsewhere
    └── ApiError                  a Neo API call failed
        ├── ApiTransportError     connection refused, reset, DNS: no HTTP answer at all
        │   └── ApiTimeout        no answer within the request timeout
        ├── ApiStatusError        an HTTP error status; carries status, code and error_id
        │   ├── CredentialsRejected   401: the key or token is wrong or revoked
        │   ├── RoleForbidden         403: the account's role may not read usage
        │   ├── NotFound              404
        │   └── RateLimited           429 after the retry budget was spent
        └── ApiPayloadError       an answer that is not the JSON the API documents

Every ApiError has a short ``reason`` (used as the ``reason`` label of
``neo_exporter_errors_total``) and never carries a credential in its message.
"""

from __future__ import annotations


class ExporterError(Exception):
    """Base of every error the exporter raises on purpose."""

    reason = "internal"


class StateError(ExporterError):
    """The ledger file cannot be used as it is."""

    reason = "state"


class ApiError(ExporterError):
    """A Neo API call failed."""

    reason = "api"

    def __init__(self, message: str, *, endpoint: str = "") -> None:
        super().__init__(message)
        self.endpoint = endpoint


class ApiTransportError(ApiError):
    """No HTTP answer: the connection failed."""

    reason = "transport"


class ApiTimeout(ApiTransportError):
    """No answer within the request timeout."""

    reason = "timeout"


class ApiStatusError(ApiError):
    """The API answered with an HTTP error status."""

    reason = "http_status"

    def __init__(
        self,
        message: str,
        *,
        endpoint: str = "",
        status: int,
        code: str | None = None,
        error_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.retry_after = retry_after
        self.status = status
        self.code = code
        self.error_id = error_id


class CredentialsRejected(ApiStatusError):
    """401: the API key or token was rejected."""

    reason = "credentials_rejected"


class RoleForbidden(ApiStatusError):
    """403: the account's role is not allowed to read usage data."""

    reason = "forbidden"


class NotFound(ApiStatusError):
    """404: no such task (or not visible to this account)."""

    reason = "not_found"


class RateLimited(ApiStatusError):
    """429, still refused after the retry budget."""

    reason = "rate_limited"


class ApiPayloadError(ApiError):
    """The answer was not the JSON the API documents."""

    reason = "bad_payload"
