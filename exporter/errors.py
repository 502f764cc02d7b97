"""The exporter's error tree: what can go wrong, named for what it means.

    ExporterError                 base of everything raised on purpose
    ├── ConfigError               a bad setting (exporter.settings); exit status 2
    │   └── IdentityError         the ledger counts another API or account; exit status 2
    ├── WebConfigError            a web config file we cannot read or honour
    ├── StateError                the SQLite ledger is unreadable, corrupt or from elsewhere
    └── ApiError                  a Neo API call failed
        ├── ApiTransportError     connection refused, reset, DNS: no HTTP answer at all
        │   ├── ApiTimeout        no whole answer within the request timeout
        │   └── ApiInterrupted    the exporter is stopping: the request was abandoned
        ├── ApiStatusError        an HTTP error status; carries status, code and error_id
        │   ├── CredentialsRejected   401: the key or token is wrong or revoked
        │   ├── RoleForbidden         403: the account's role may not read usage
        │   ├── NotFound              404
        │   └── RateLimited           429 after the retry budget was spent
        └── ApiPayloadError       an answer that is not the JSON the API documents
            └── ApiPayloadTooLarge    an answer past its endpoint's size bound

Every ApiError has a short ``reason`` (used as the ``reason`` label of
``neo_exporter_errors_total``) and never carries a credential in its message, and says
whether it is ``lasting``: the one rule for "permanent" against "worth asking again".
A lasting error is the API's own answer that the thing is not there or not for this key
(a 4xx other than 401, 408 and 429): asking again, in this poll or the next, cannot
help. Everything else (no answer, 5xx, a broken payload, rejected credentials that an
operator may fix, a rate limit) may mend. An optional endpoint is dropped only when its
answer says it is ``not_offered`` (400, 403, 404, 405), a narrower rule: a 409 or 422
from the task list says nothing about whether it is offered.
"""

from __future__ import annotations


class ExporterError(Exception):
    """Base of every error the exporter raises on purpose."""

    reason = "internal"


class ConfigError(ExporterError):
    """A setting is missing, unknown or invalid; the message says which and how to fix it."""

    reason = "config"


# The flag an IdentityError's message offers: start a new ledger on purpose.
NEW_LEDGER_FLAG = "--new-ledger"


class IdentityError(ConfigError):
    """The ledger counts another API or account than the one the settings point at."""

    reason = "identity"


class WebConfigError(ExporterError):
    """The web config file is unreadable or says something we cannot do."""

    reason = "web_config"


class StateError(ExporterError):
    """The ledger file cannot be used as it is."""

    reason = "state"


class ApiError(ExporterError):
    """A Neo API call failed."""

    reason = "api"

    def __init__(self, message: str, *, endpoint: str = "") -> None:
        super().__init__(message)
        self.endpoint = endpoint

    @property
    def lasting(self) -> bool:
        """Whether asking again cannot help (see the module's docstring)."""
        return False


class ApiTransportError(ApiError):
    """No HTTP answer: the connection failed."""

    reason = "transport"


class ApiTimeout(ApiTransportError):
    """No whole answer within the request timeout (connecting, headers and body)."""

    reason = "timeout"


class ApiInterrupted(ApiTransportError):
    """The exporter was told to stop while the request was in flight or waiting to retry."""

    reason = "interrupted"


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

    @property
    def lasting(self) -> bool:
        return 400 <= self.status < 500 and self.status not in (401, 408, 429)

    @property
    def not_offered(self) -> bool:
        """Whether the answer says the endpoint itself is not offered to this key
        (400, 403, 404, 405): an optional endpoint (the task list, the credit balance)
        is not asked again."""
        return self.status in (400, 403, 404, 405)


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


class ApiPayloadTooLarge(ApiPayloadError):
    """The answer grew past the size bound of its endpoint; not asked again in this poll."""

    reason = "payload_too_large"
