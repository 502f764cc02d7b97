"""Settings: one validated object from flags, environment, a YAML config file and defaults."""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import itertools
import math
import os
import re
from collections.abc import Collection, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from exporter.durations import DURATION_FORM, DurationError, format_duration, parse_duration
from exporter.errors import ConfigError

ENV_PREFIX = "NEO_EXPORTER_"
CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG_FILE"
SECRETS = frozenset({"api_key", "api_token"})
DURATIONS = frozenset(
    {"poll_interval", "lookback", "request_timeout", "retry_backoff_max", "full_list_interval"}
    | {"http_request_timeout", "reconcile_interval", "sweep_lookback"}
)
BUCKETS = frozenset({"tool_duration_buckets", "run_credits_buckets", "run_duration_buckets"})
PATHS = frozenset({"api_key_file", "api_token_file", "state_path", "web_config_file"})
CREDENTIALS = frozenset({"api_key", "api_token", "api_key_file", "api_token_file"})
SIMULATOR = frozenset({"sim_speed", "sim_tasks_per_day"})
_TASK_ID = re.compile(r"[A-Za-z0-9_.:-]{1,256}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
_DAY = 86400.0

# Set while load_settings validates values it has already merged from every source.
_MERGED: ContextVar[bool] = ContextVar("neo_exporter_settings_merged", default=False)


CommaList = Annotated[list[str], NoDecode]
Buckets = Annotated[list[float], NoDecode]


class Settings(BaseSettings):
    """Everything the exporter can be told; see ``neo-exporter run --help``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", frozen=True
    )

    api_url: str = Field("https://neo.api.projectdiscovery.io", description="Neo API base URL")
    api_key: SecretStr | None = Field(None, description="Neo API key (X-API-Key)")
    api_token: SecretStr | None = Field(None, description="Neo bearer token")
    api_key_file: Path | None = Field(
        None, description=f"file holding the Neo API key (or set {ENV_PREFIX}API_KEY)"
    )
    api_token_file: Path | None = Field(
        None, description=f"file holding the Neo bearer token (or set {ENV_PREFIX}API_TOKEN)"
    )
    listen_address: str = Field(":9877", description="address /metrics is served on")
    poll_interval: float = Field(60.0, ge=1, description="time between polls of the API")
    lookback: float = Field(
        _DAY, ge=1, le=90 * _DAY, description="how far back tasks are fetched and served"
    )
    full_list_interval: float = Field(
        3600.0,  # exporter.poller.FULL_LIST_INTERVAL (not imported: settings load first)
        ge=0,
        le=90 * _DAY,
        description="how often the whole lookback window is listed; polls in between list "
        "runs started in the last 2h (0: the whole window on every poll)",
    )
    reconcile_interval: float = Field(
        300.0,
        ge=30,
        le=_DAY,
        description="how often the account balance and the usage summary are read, and "
        "the counters reconciled with the summary's totals",
    )
    sweep_lookback: float = Field(
        30 * _DAY,
        ge=0,
        le=400 * _DAY,
        description="how far back a sweep lists when the counters and the usage "
        "summary's totals disagree for long (0: never sweep)",
    )
    request_timeout: float = Field(30.0, gt=0, le=600, description="timeout of one API request")
    task_ids: CommaList = Field([], description="task IDs always polled, comma-separated")
    state_path: Path = Field(Path("neo-exporter.db"), description="SQLite ledger file")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["auto", "json", "console"] = Field("auto", description="log format")
    max_concurrent_requests: int = Field(4, ge=1, le=64, description="parallel API requests")
    max_retries: int = Field(3, ge=0, le=10, description="retries of a failed API request")
    retry_backoff_max: float = Field(30.0, gt=0, le=300, description="longest wait between retries")
    web_config_file: Path | None = Field(
        None, description="exporter-toolkit web config (TLS, auth)"
    )
    http_max_connections: int = Field(
        64, ge=1, le=10000, description="HTTP connections (and threads) served at once"
    )
    http_request_timeout: float = Field(
        10.0,
        gt=0,
        le=300,
        description="time a client has to send a request head (or finish a TLS handshake)",
    )
    max_label_values: int = Field(100, ge=1, le=10000, description="distinct values per label")
    tool_duration_buckets: Buckets = Field(
        [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600],
        description="tool call duration histogram buckets, seconds",
    )
    run_credits_buckets: Buckets = Field(
        [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100],
        description="task run credits histogram buckets",
    )
    run_duration_buckets: Buckets = Field(
        [10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400],
        description="task run execution time histogram buckets, seconds",
    )
    export_emails: bool = Field(False, description="label series with user emails")
    team_view: bool = Field(False, description="read usage of the whole team")
    sim_speed: float = Field(60.0, gt=0, le=10000, description="demo: simulated seconds per second")
    sim_tasks_per_day: float = Field(2000.0, gt=0, le=1e6, description="demo: task arrival rate")

    _sources: dict[str, str] = PrivateAttr(default_factory=dict)
    # Credential variables set to the empty string: unset, but worth naming when no
    # credential is configured (a Secret with a missing key mounts as an empty value).
    _empty_credentials: set[str] = PrivateAttr(default_factory=set)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings reads the environment itself (from the mapping it is given).
        return (init_settings,) if _MERGED.get() else (init_settings, env_settings)

    @field_validator("api_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value.strip())
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError("is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("is not an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("contains a user or password")
        if parts.query or parts.fragment:
            raise ValueError("has a query or fragment")
        # The base URL, to which the client adds /api/v1/...: a URL copied with the
        # version path would make every request 404.
        return value.strip().rstrip("/").removesuffix("/api/v1").rstrip("/")

    @field_validator("api_key", "api_token", mode="before")
    @classmethod
    def _check_secret(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty")
        if isinstance(value, str):
            check_secret_text(value.strip())
        return value.strip() if isinstance(value, str) else value

    @field_validator("listen_address")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator(*DURATIONS, mode="before")
    @classmethod
    def _parse_duration(cls, value: Any) -> Any:
        try:
            return parse_duration(value)
        except DurationError as exc:
            raise ValueError(exc.reason) from None

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        text = value.strip().lower() if isinstance(value, str) else value
        return "warning" if text == "warn" else text  # as Go exporters and logging spell it

    @field_validator("task_ids", *BUCKETS, mode="before")
    @classmethod
    def _split_list(cls, value: Any, info: ValidationInfo) -> Any:
        """A comma-separated string (environment, flag) as a list of its non-empty items."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        if info.field_name == "task_ids" and isinstance(value, list):  # YAML reads 123 as int
            return [str(v) if type(v) is int else v for v in value]
        return value

    @field_validator("task_ids")
    @classmethod
    def _check_task_ids(cls, value: list[str]) -> list[str]:
        ids = list(dict.fromkeys(item.strip() for item in value if item.strip()))
        for item in ids:
            if not _TASK_ID.fullmatch(item):
                raise ValueError(f'has an invalid task ID "{item[:80]}"')
        return ids

    @field_validator(*BUCKETS)
    @classmethod
    def _check_buckets(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("is empty")
        if not all(math.isfinite(b) and b > 0 for b in value):
            raise ValueError("has a bucket that is not a finite number > 0")
        if any(high <= low for low, high in itertools.pairwise(value)):
            raise ValueError("is not strictly increasing")
        return value

    @model_validator(mode="after")
    def _lookback_covers_a_poll(self) -> Settings:
        if self.lookback < self.poll_interval:
            raise ValueError(
                f"{describe('lookback')}: {format_duration(self.lookback)} is shorter than "
                f"poll_interval {format_duration(self.poll_interval)}; expected lookback >= "
                "poll_interval"
            )
        return self

    def source(self, name: str) -> str:
        """Where the value of setting *name* came from: a flag, a variable, a file or default."""
        return self._sources.get(name, "default")

    def require_credential(self) -> tuple[Literal["api_key", "token"], str]:
        """The one configured credential as ``("api_key" | "token", secret)``."""
        given = [name for name in ("api_key", "api_token", "api_key_file", "api_token_file")
                 if getattr(self, name) is not None]  # fmt: skip
        if len(given) != 1:
            options = (
                f"{ENV_PREFIX}API_KEY, {ENV_PREFIX}API_TOKEN, --api-key-file or --api-token-file"
            )
            if not given:
                empty = [ENV_PREFIX + name.upper() for name in sorted(self._empty_credentials)]
                note = f" ({', '.join(empty)} is set but empty)" if empty else ""
                raise ConfigError(f"no Neo API credential configured{note}; set one of {options}")
            raise ConfigError(
                f"more than one Neo API credential configured ({', '.join(given)}); "
                f"set exactly one of {options}"
            )
        name = given[0]
        kind: Literal["api_key", "token"] = "api_key" if name.startswith("api_key") else "token"
        value = getattr(self, name)
        if isinstance(value, SecretStr):
            return kind, value.get_secret_value()
        path = Path(value)
        # A key pasted where its file's path belongs must not be echoed back.
        shown = str(path) if len(path.parts) > 1 or path.exists() else "<hidden>"
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            hint = (
                "; expected the path of a file holding the secret, not the secret itself"
                if shown == "<hidden>"
                else ""
            )
            raise ConfigError(f"{describe(name)}: cannot read {shown}: {why}{hint}") from None
        if not secret:
            raise ConfigError(f"{describe(name)}: {shown} is empty; expected the secret in it")
        try:
            check_secret_text(secret)
        except ValueError as exc:
            raise ConfigError(f"{describe(name)}: the secret in {shown} {exc}") from None
        return kind, secret


def check_secret_text(secret: str) -> None:
    """ValueError unless *secret* can go in an HTTP header: printable ASCII. Says where,
    never what: a key pasted with a typographic quote or a non-breaking space."""
    for position, char in enumerate(secret, 1):
        if not (char.isascii() and char.isprintable()):
            raise ValueError(
                f"has a character that is not printable ASCII at position {position} (of "
                f"{len(secret)}); keys and tokens are ASCII: was it pasted with a quote "
                "mark, a non-breaking space or a line break?"
            )


def split_host_port(address: str) -> tuple[str, int]:
    """``":9877"`` → ``("", 9877)``, ``"[::1]:9877"`` → ``("::1", 9877)``; ValueError if bad."""
    host, colon, port = address.strip().rpartition(":")
    if not colon:
        raise ValueError("has no port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("has an invalid IPv6 address") from None
    elif ":" in host:
        raise ValueError("has an IPv6 address without [brackets]")
    elif host and not _HOSTNAME.fullmatch(host):
        raise ValueError("has an invalid host")
    if not _PORT.fullmatch(port) or not 0 <= int(port) <= 65535:
        raise ValueError("has an invalid port")
    return host, int(port)


def listen_host_port(settings: Settings) -> tuple[str, int]:
    """Host and port to bind; an empty host means every interface."""
    return split_host_port(settings.listen_address)


# Addresses that mean "every interface": bound to, never browsed to.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}


def browser_url(url: str) -> str:
    """*url* with a wildcard host (``0.0.0.0``, ``[::]``) replaced by loopback."""
    scheme, _, rest = url.partition("://")
    host, colon, port = rest.rpartition(":")
    return f"{scheme}://{_WILDCARDS.get(host, host)}{colon}{port}"


def flag(name: str) -> str | None:
    return None if name in SECRETS else "--" + name.replace("_", "-")


def describe(name: str) -> str:
    """``poll_interval (--poll-interval / NEO_EXPORTER_POLL_INTERVAL)``."""
    env = ENV_PREFIX + name.upper()
    option = flag(name)
    return f"{name} ({option} / {env})" if option else f"{name} ({env})"


def expected(name: str) -> str:
    """The accepted form of setting *name*, bounds included."""
    field = Settings.model_fields[name]
    bounds = []
    for bound in field.metadata:
        for kind, words in (("ge", "at least"), ("gt", "more than"), ("le", "at most")):
            if isinstance(limit := getattr(bound, kind, None), int | float):
                shown = format_duration(limit) if name in DURATIONS else f"{limit:.15g}"
                bounds.append(f"{words} {shown}")
    if name in DURATIONS:
        form = DURATION_FORM
    elif name in BUCKETS:
        form = "comma-separated numbers > 0 in strictly increasing order, like 0.5,1,5"
    elif name.endswith(("_file", "_path")):
        form = "a file path"
    else:
        form = _FORMS.get(name) or _TYPE_FORMS.get(field.annotation, "a value")
    return f"{form} ({', '.join(bounds)})" if bounds else form


_FORMS = {
    "api_url": "an http:// or https:// URL like https://neo.api.projectdiscovery.io",
    "api_key": "the API key as a non-empty string",
    "api_token": "the bearer token as a non-empty string",
    "listen_address": "host:port, [ipv6]:port or :port, with port 0-65535 (0 picks a free port)",
    "task_ids": "comma-separated task IDs of letters, digits and _ . : - (max 256 characters)",
    "log_level": "one of debug, info, warning, error",
    "log_format": "one of auto, json, console",
}
_TYPE_FORMS: dict[Any, str] = {int: "a whole number", float: "a number", bool: "true or false"}
# Pydantic error types, by prefix, as the "what is wrong" part of a message.
_REASONS = (
    ("int", "is not a whole number"),
    ("float", "is not a number"),
    ("finite", "is not a finite number"),
    ("bool", "is not true or false"),
    ("literal", "is not one of the choices"),
    ("greater", "is too small"),
    ("less", "is too large"),
)


def _show(name: str, value: Any) -> str:
    # A URL with a user, password or query string may carry a credential.
    if name in SECRETS or (name == "api_url" and re.search(r"[@?]", str(value))):
        return "<hidden>"
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _config_error(exc: ValidationError, sources: Mapping[str, str]) -> ConfigError:
    """One line per problem: the setting, its flag and variable, what is wrong, what is expected."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        if not loc:  # a cross-field check, whose message is complete
            lines.append(error["msg"].removeprefix("Value error, "))
            continue
        name = str(loc[0])
        if error["type"] == "value_error":
            reason = error["msg"].removeprefix("Value error, ")
        else:
            reason = next(
                (why for prefix, why in _REASONS if error["type"].startswith(prefix)),
                "is invalid: " + error["msg"][:1].lower() + error["msg"][1:],
            )
        where = f" (set by {sources[name]})" if name in sources else ""
        item = f" item {loc[1]}" if len(loc) > 1 and isinstance(loc[1], int) else ""
        lines.append(
            f"{describe(name)}{item}: {_show(name, error['input'])} {reason}; "
            f"expected {expected(name)}{where}"
        )
    return ConfigError("\n".join(lines))


def add_settings_arguments(
    parser: argparse.ArgumentParser,
    names: Collection[str] | None = None,
    defaults: Mapping[str, str] | None = None,
) -> None:
    """``--config-file`` and one flag per setting in *names* (default: all), their help
    showing *defaults* where the command's own differ; unset flags leave the attribute
    absent."""
    parser.add_argument(
        "--config-file",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"YAML file of settings, keys named like the fields below (env {CONFIG_FILE_ENV})",
    )
    for name, field in Settings.model_fields.items():
        option = flag(name)
        if option is None:  # secrets on a command line leak through ps and shell history
            continue
        if names is not None and name not in names:
            continue
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default is None else _render_value(name, default)
        shown = (defaults or {}).get(name, shown)
        text = f"{field.description} (env {ENV_PREFIX}{name.upper()}; default {shown})"
        text = text.replace("%", "%%")
        if field.annotation is bool:
            action: Any = argparse.BooleanOptionalAction
            parser.add_argument(option, action=action, default=argparse.SUPPRESS, help=text)
        else:
            metavar = _metavar(name, field.annotation)
            parser.add_argument(option, default=argparse.SUPPRESS, metavar=metavar, help=text)


def _metavar(name: str, annotation: Any) -> str:
    if name in DURATIONS:
        return "DURATION"
    if name in BUCKETS or name == "task_ids":
        return "LIST"
    if name.endswith(("_file", "_path")):
        return "PATH"
    if get_origin(annotation) is Literal:
        return "{" + ",".join(get_args(annotation)) + "}"
    return {int: "N", float: "NUMBER"}.get(annotation, name.rsplit("_", 1)[-1].upper())


def load_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, then environment, then the config file, then defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    config_file = getattr(args, "config_file", None) or env.get(CONFIG_FILE_ENV) or None
    if config_file is not None:
        for name, value in _read_config_file(Path(config_file)).items():
            values[name] = _beside(Path(config_file), value) if name in PATHS else value
            sources[name] = f"config file {config_file}"
    empty: set[str] = set()
    for variable, value in sorted(env.items()):
        if not variable.startswith(ENV_PREFIX) or variable == CONFIG_FILE_ENV:
            continue
        if value == "":
            empty.add(variable.removeprefix(ENV_PREFIX).lower())
            continue
        name = variable.removeprefix(ENV_PREFIX).lower()
        if name not in Settings.model_fields:
            raise ConfigError(
                f"unknown environment variable {variable}"
                f"{_suggest(name, ENV_PREFIX) or '; see --help for the variable of each setting'}"
            )
        values[name], sources[name] = value, variable
    for name in Settings.model_fields:
        if flag(name) and getattr(args, name, None) is not None:
            values[name], sources[name] = getattr(args, name), str(flag(name))
    token = _MERGED.set(True)
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        raise _config_error(exc, sources) from None
    finally:
        _MERGED.reset(token)
    settings._sources.update(sources)
    settings._empty_credentials.update(empty & CREDENTIALS)
    return settings


def _beside(config_file: Path, value: Any) -> Any:
    """A relative path in the config file, as relative to the file's own directory (as the
    web config's paths are to theirs), not to wherever the exporter was started."""
    if isinstance(value, str) and value and not Path(value).is_absolute():
        return str(config_file.parent / value)
    return value


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"config file {path}: cannot read it: {why}") from None
    except yaml.YAMLError as exc:
        # Only the problem and position: the YAML snippet could hold a secret.
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(f"config file {path}: not valid YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: expected a mapping of setting names to values "
            f"(like `poll_interval: 30s`), not a {type(data).__name__}"
        )
    for key in data:
        if str(key) not in Settings.model_fields:
            raise ConfigError(f'config file {path}: unknown setting "{key}"{_suggest(str(key))}')
    return {str(key): value for key, value in data.items()}


def _suggest(name: str, env_prefix: str = "") -> str:
    """``; did you mean poll_interval?``, or with *env_prefix* the variable's own name."""
    close = difflib.get_close_matches(name.replace("-", "_").lower(), Settings.model_fields, 1)
    if not close:
        return ""
    return f"; did you mean {env_prefix + close[0].upper() if env_prefix else close[0]}?"


def _render_value(name: str, value: Any) -> str:
    if value is None:
        return "<unset>"
    if name in SECRETS:
        return "********"
    if name in DURATIONS:
        return format_duration(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(_render_value(name, item) for item in value) if value else "<none>"
    return f"{value:.15g}" if isinstance(value, float) else str(value)


def render_effective(settings: Settings) -> str:
    """``name = value  (source)`` per setting, secrets masked and durations formatted."""
    width = max(map(len, Settings.model_fields))
    return "\n".join(
        f"{name:<{width}} = {_render_value(name, getattr(settings, name))}  "
        f"({settings.source(name)})"
        for name in Settings.model_fields
    )
