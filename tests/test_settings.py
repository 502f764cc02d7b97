"""Settings: sources, precedence, validation messages, credentials and masking."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from exporter.errors import ConfigError, ExporterError
from exporter.settings import (
    Settings,
    add_settings_arguments,
    listen_host_port,
    load_settings,
    render_effective,
)

ROOT = Path(__file__).resolve().parent.parent
SECRET = "neo-key-7f3a9c2e1b"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return parser.parse_args(list(argv))


def load(*argv: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(parse(*argv), env or {})


def config_error(*argv: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(*argv, env=env)
    return str(caught.value)


# -- sources ----------------------------------------------------------------------------


def test_defaults_when_nothing_is_set() -> None:
    settings = load()
    assert settings.api_url == "https://neo.api.projectdiscovery.io"
    assert settings.listen_address == ":9877"
    assert settings.poll_interval == 60.0
    assert settings.lookback == 86400.0
    assert settings.task_ids == []
    assert settings.state_path == Path("neo-exporter.db")
    assert settings.run_duration_buckets[-1] == 14400
    assert settings.model_fields_set == set()


ENV_CASES: list[tuple[str, str, Any]] = [
    ("api_url", "http://neo.local:8080/api/", "http://neo.local:8080/api"),
    ("api_key_file", "/run/secrets/key", Path("/run/secrets/key")),
    ("api_token_file", "/run/secrets/token", Path("/run/secrets/token")),
    ("listen_address", "[::1]:9100", "[::1]:9100"),
    ("poll_interval", "90s", 90.0),
    ("lookback", "2d", 172800.0),
    ("request_timeout", "1m", 60.0),
    ("task_ids", "a,b , c", ["a", "b", "c"]),
    ("state_path", "/var/lib/neo/state.db", Path("/var/lib/neo/state.db")),
    ("log_level", "DEBUG", "debug"),
    ("log_format", "Json", "json"),
    ("max_concurrent_requests", "16", 16),
    ("max_retries", "0", 0),
    ("retry_backoff_max", "2m", 120.0),
    ("web_config_file", "web.yml", Path("web.yml")),
    ("max_label_values", "500", 500),
    ("tool_duration_buckets", "1, 10,100", [1.0, 10.0, 100.0]),
    ("run_credits_buckets", "0.5,1", [0.5, 1.0]),
    ("run_duration_buckets", "60,600", [60.0, 600.0]),
    ("export_emails", "true", True),
    ("team_view", "1", True),
    ("sim_speed", "600", 600.0),
    ("sim_tasks_per_day", "50.5", 50.5),
]


@pytest.mark.parametrize(("name", "raw", "value"), ENV_CASES)
def test_each_setting_from_the_environment(name: str, raw: str, value: Any) -> None:
    settings = load(env={f"NEO_EXPORTER_{name.upper()}": raw})
    assert getattr(settings, name) == value
    assert settings.model_fields_set == {name}


@pytest.mark.parametrize(("name", "raw", "value"), ENV_CASES)
def test_each_setting_from_a_flag(name: str, raw: str, value: Any) -> None:
    flag = "--" + name.replace("_", "-")
    argv = [flag] if value is True else [flag, raw]
    settings = load(*argv)
    assert getattr(settings, name) == value
    assert settings.source(name) == flag


def test_boolean_flag_can_switch_off_what_the_environment_switched_on() -> None:
    settings = load("--no-export-emails", env={"NEO_EXPORTER_EXPORT_EMAILS": "true"})
    assert settings.export_emails is False


def test_secrets_from_the_environment() -> None:
    settings = load(env={"NEO_EXPORTER_API_KEY": SECRET, "NEO_EXPORTER_API_TOKEN": "tok-1234"})
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == SECRET
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == "tok-1234"


def test_empty_environment_variables_are_unset() -> None:
    assert load(env={"NEO_EXPORTER_POLL_INTERVAL": ""}).poll_interval == 60.0


def test_no_flags_for_the_secrets_themselves() -> None:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    options = {option for action in parser._actions for option in action.option_strings}
    assert "--api-key" not in options
    assert "--api-token" not in options
    assert {"--api-key-file", "--api-token-file", "--config-file"} <= options


def test_flag_help_names_the_environment_variable() -> None:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "NEO_EXPORTER_POLL_INTERVAL" in text
    assert "NEO_EXPORTER_CONFIG_FILE" in text
    assert "NEO_EXPORTER_API_KEY" in text


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "neo-exporter.yml"
    path.write_text(text)
    return path


def test_config_file_sets_values_of_every_kind(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "poll_interval: 30s\nlookback: 3600\ntask_ids: [a, b, a]\nexport_emails: yes\n"
        "run_credits_buckets: [1, 2, 4]\nlog_level: WARNING\nmax_retries: 5\n"
        "tool_duration_buckets: 1,2\n",
    )
    settings = load("--config-file", str(path))
    assert settings.poll_interval == 30.0
    assert settings.lookback == 3600.0
    assert settings.task_ids == ["a", "b"]
    assert settings.export_emails is True
    assert settings.run_credits_buckets == [1.0, 2.0, 4.0]
    assert settings.tool_duration_buckets == [1.0, 2.0]
    assert settings.log_level == "warning"
    assert settings.max_retries == 5
    assert settings.source("poll_interval") == f"config file {path}"


def test_relative_paths_in_a_config_file_are_relative_to_its_directory(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = write_config(
        folder, "state_path: data/state.db\napi_key_file: key\nweb_config_file: /abs/web.yml\n"
    )
    settings = load("--config-file", str(path), "--api-token-file", "token")
    assert settings.state_path == folder / "data" / "state.db"
    assert settings.api_key_file == folder / "key"
    assert settings.web_config_file == Path("/abs/web.yml")
    assert settings.api_token_file == Path("token")  # a flag: relative to the working dir


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path, "max_label_values: 7\n")
    settings = load(env={"NEO_EXPORTER_CONFIG_FILE": str(path)})
    assert settings.max_label_values == 7


def test_config_file_flag_beats_the_environment(tmp_path: Path) -> None:
    flagged = write_config(tmp_path, "max_label_values: 7\n")
    other = tmp_path / "other.yml"
    other.write_text("max_label_values: 9\n")
    settings = load("--config-file", str(flagged), env={"NEO_EXPORTER_CONFIG_FILE": str(other)})
    assert settings.max_label_values == 7


def test_an_empty_config_file_means_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")
    assert load("--config-file", str(path)).poll_interval == 60.0


def test_precedence_flag_over_environment_over_file_over_default(tmp_path: Path) -> None:
    path = write_config(tmp_path, "poll_interval: 10s\nmax_retries: 1\nmax_label_values: 5\n")
    env = {"NEO_EXPORTER_POLL_INTERVAL": "20s", "NEO_EXPORTER_MAX_RETRIES": "2"}
    settings = load("--config-file", str(path), "--poll-interval", "30s", env=env)
    assert settings.poll_interval == 30.0
    assert settings.max_retries == 2
    assert settings.max_label_values == 5
    assert settings.request_timeout == 30.0
    assert settings.source("poll_interval") == "--poll-interval"
    assert settings.source("max_retries") == "NEO_EXPORTER_MAX_RETRIES"
    assert settings.source("request_timeout") == "default"


def test_load_settings_reads_only_the_environment_it_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEO_EXPORTER_POLL_INTERVAL", "5m")
    assert load(env={}).poll_interval == 60.0
    assert load_settings(parse()).poll_interval == 300.0


def test_settings_alone_reads_comma_separated_lists_from_os_environ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEO_EXPORTER_TASK_IDS", "a,b")
    monkeypatch.setenv("NEO_EXPORTER_RUN_CREDITS_BUCKETS", "1,2")
    settings = Settings()
    assert settings.task_ids == ["a", "b"]
    assert settings.run_credits_buckets == [1.0, 2.0]


def test_task_ids_are_stripped_and_deduplicated_in_order() -> None:
    settings = load(env={"NEO_EXPORTER_TASK_IDS": " z1, a:2 ,z1,,b.3-x_y, a:2"})
    assert settings.task_ids == ["z1", "a:2", "b.3-x_y"]


def test_numeric_task_ids_in_a_config_file_are_strings(tmp_path: Path) -> None:
    path = write_config(tmp_path, "task_ids: [123, abc, ' x ']\n")
    assert load("--config-file", str(path)).task_ids == ["123", "abc", "x"]


def test_model_copy_updates_a_frozen_settings_object() -> None:
    settings = load()
    copy = settings.model_copy(update={"poll_interval": 2.0, "state_path": Path("/tmp/x.db")})
    assert (copy.poll_interval, copy.state_path) == (2.0, Path("/tmp/x.db"))
    assert settings.poll_interval == 60.0
    with pytest.raises(ValidationError):
        settings.poll_interval = 5.0  # type: ignore[misc]


# -- bad values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "wrong", "expected"),
    [
        ("api_url", "ftp://neo", "is not an http:// or https:// URL", "https://"),
        ("api_url", "neo.example.com", "is not an http:// or https:// URL", "https://"),
        ("api_url", "https://neo/?a=1", "has a query", "https://"),
        ("listen_address", "9877", "has no port", "host:port"),
        ("listen_address", ":65536", "has an invalid port", "port 0-65535"),
        ("listen_address", "::1:80", "without [brackets]", "[ipv6]:port"),
        ("listen_address", "[nothost]:80", "invalid IPv6", "[ipv6]:port"),
        ("listen_address", "bad host:80", "invalid host", "host:port"),
        ("poll_interval", "abc", '"abc" is not a duration', "seconds like 60, or 90s, 5m, 1h"),
        ("poll_interval", "0.5", "is too small", "at least 1s"),
        ("poll_interval", "-5s", "is negative", "seconds like 60"),
        ("lookback", "91d", "is too large", "at most 90d"),
        ("request_timeout", "0", "is too small", "more than 0s"),
        ("request_timeout", "11m", "is too large", "at most 10m"),
        ("retry_backoff_max", "6m", "is too large", "at most 5m"),
        ("task_ids", "ok,not ok", 'invalid task ID "not ok"', "letters, digits and _ . : -"),
        ("task_ids", "x" * 257, "invalid task ID", "max 256 characters"),
        ("log_level", "loud", "is not one of the choices", "debug, info, warning, error"),
        ("log_format", "xml", "is not one of the choices", "auto, json, console"),
        (
            "max_concurrent_requests",
            "65",
            "is too large",
            "a whole number (at least 1, at most 64)",
        ),
        ("max_concurrent_requests", "two", "is not a whole number", "a whole number"),
        ("max_retries", "11", "is too large", "at most 10"),
        ("max_label_values", "0", "is too small", "at least 1"),
        ("tool_duration_buckets", "1,1", "is not strictly increasing", "strictly increasing"),
        ("run_credits_buckets", "0,1", "not a finite number > 0", "numbers > 0"),
        ("run_credits_buckets", "1,inf", "not a finite number > 0", "numbers > 0"),
        ("run_duration_buckets", "10,x", "is not a number", "strictly increasing"),
        ("run_duration_buckets", ",", "is empty", "strictly increasing"),
        ("export_emails", "maybe", "is not true or false", "true or false"),
        ("sim_speed", "0", "is too small", "more than 0"),
        ("sim_tasks_per_day", "2e6", "is too large", "at most 1000000"),
    ],
)
def test_bad_value_names_setting_flag_variable_and_expected_form(
    name: str, raw: str, wrong: str, expected: str
) -> None:
    variable = f"NEO_EXPORTER_{name.upper()}"
    message = config_error(env={variable: raw})
    flag = "--" + name.replace("_", "-")
    assert message.startswith(f"{name} ({flag} / {variable})")
    assert wrong in message
    assert expected in message.split("; expected ", 1)[1]
    assert "\n" not in message


def test_every_bad_value_is_reported_one_per_line() -> None:
    message = config_error(
        "--max-retries",
        "x",
        env={"NEO_EXPORTER_POLL_INTERVAL": "abc", "NEO_EXPORTER_SIM_SPEED": "0"},
    )
    lines = message.splitlines()
    assert len(lines) == 3
    assert [line.split(" ", 1)[0] for line in lines] == [
        "poll_interval",
        "max_retries",
        "sim_speed",
    ]
    assert "(set by --max-retries)" in lines[1]


def test_lookback_shorter_than_poll_interval_is_an_error() -> None:
    message = config_error("--poll-interval", "10m", "--lookback", "5m")
    assert "lookback (--lookback / NEO_EXPORTER_LOOKBACK)" in message
    assert "5m is shorter than poll_interval 10m" in message


def test_config_error_is_an_exporter_error() -> None:
    assert issubclass(ConfigError, ExporterError)


def test_unknown_environment_variable_is_named_with_a_suggestion() -> None:
    message = config_error(env={"NEO_EXPORTER_POLL_INTERVALL": "5m"})
    assert "NEO_EXPORTER_POLL_INTERVALL" in message
    assert message.endswith("; did you mean NEO_EXPORTER_POLL_INTERVAL?")


def test_other_environment_variables_are_ignored() -> None:
    assert load(env={"HOME": "/root", "NEO_OTHER": "1"}).poll_interval == 60.0


def test_config_file_unknown_key_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, "poll-interval: 5m\n")
    message = config_error("--config-file", str(path))
    assert str(path) in message
    assert 'unknown setting "poll-interval"' in message
    assert "did you mean poll_interval" in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_config_file_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write_config(tmp_path, text)
    message = config_error("--config-file", str(path))
    assert f"config file {path}: expected a mapping" in message


def test_unreadable_config_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yml"
    message = config_error("--config-file", str(missing))
    assert f"config file {missing}: cannot read it" in message


def test_bad_value_in_config_file_says_where_it_was_set(tmp_path: Path) -> None:
    path = write_config(tmp_path, "poll_interval: soon\n")
    message = config_error("--config-file", str(path))
    assert '"soon" is not a duration' in message
    assert f"(set by config file {path})" in message


# -- secrets ----------------------------------------------------------------------------


def test_invalid_yaml_error_does_not_quote_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, f'api_key: "{SECRET}\npoll_interval: [\n')
    message = config_error("--config-file", str(path))
    assert "not valid YAML" in message
    assert SECRET not in message


def test_bad_secret_value_is_hidden(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"api_key: [{SECRET}]\napi_token: '   '\n")
    message = config_error("--config-file", str(path))
    assert "api_key (NEO_EXPORTER_API_KEY): <hidden>" in message
    assert "api_token (NEO_EXPORTER_API_TOKEN): <hidden> is empty" in message
    assert SECRET not in message


def test_api_url_with_credentials_is_rejected_and_hidden() -> None:
    message = config_error(env={"NEO_EXPORTER_API_URL": f"https://me:{SECRET}@neo.example"})
    assert "api_url (--api-url / NEO_EXPORTER_API_URL): <hidden> contains a user or password" in (
        message
    )
    assert SECRET not in message


def test_secret_is_absent_from_errors_about_other_settings() -> None:
    message = config_error(env={"NEO_EXPORTER_API_KEY": SECRET, "NEO_EXPORTER_LOG_LEVEL": "x"})
    assert "log_level" in message
    assert SECRET not in message


def test_render_effective_masks_secrets_and_formats_durations() -> None:
    settings = load(
        "--poll-interval",
        "90",
        env={"NEO_EXPORTER_API_KEY": SECRET, "NEO_EXPORTER_TASK_IDS": "t1,t2"},
    )
    text = render_effective(settings)
    lines = {line.split("=", 1)[0].strip(): line.split("=", 1)[1] for line in text.splitlines()}
    assert SECRET not in text
    assert lines["api_key"].strip() == "********  (NEO_EXPORTER_API_KEY)"
    assert lines["api_token"].strip() == "<unset>  (default)"
    assert lines["poll_interval"].strip() == "1m30s  (--poll-interval)"
    assert lines["lookback"].strip() == "1d  (default)"
    assert lines["task_ids"].strip() == "t1,t2  (NEO_EXPORTER_TASK_IDS)"
    assert set(lines) == set(Settings.model_fields)


# -- credentials ------------------------------------------------------------------------


def test_credential_from_api_key() -> None:
    settings = load(env={"NEO_EXPORTER_API_KEY": f" {SECRET} "})
    assert settings.require_credential() == ("api_key", SECRET)


def test_credential_from_api_token() -> None:
    assert load(env={"NEO_EXPORTER_API_TOKEN": "tok-5678"}).require_credential() == (
        "token",
        "tok-5678",
    )


def test_credential_from_key_file_is_stripped(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"{SECRET}\n")
    settings = load("--api-key-file", str(key_file))
    assert settings.require_credential() == ("api_key", SECRET)


def test_credential_from_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-abcd\n")
    settings = load(env={"NEO_EXPORTER_API_TOKEN_FILE": str(token_file)})
    assert settings.require_credential() == ("token", "tok-abcd")


def test_missing_credential_file_is_named(tmp_path: Path) -> None:
    settings = load("--api-key-file", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"api_key_file .*cannot read .*nope"):
        settings.require_credential()


def test_empty_credential_file_is_named(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(" \n")
    settings = load("--api-key-file", str(key_file))
    with pytest.raises(ConfigError, match=rf"{key_file} is empty"):
        settings.require_credential()


def test_no_credential_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no Neo API credential configured"):
        load().require_credential()


def test_two_credentials_are_an_error_without_their_values(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("file-secret-1234")
    settings = load("--api-key-file", str(key_file), env={"NEO_EXPORTER_API_TOKEN": SECRET})
    with pytest.raises(ConfigError) as caught:
        settings.require_credential()
    message = str(caught.value)
    assert "more than one" in message
    assert "api_token, api_key_file" in message
    assert SECRET not in message
    assert "file-secret-1234" not in message


# -- listen address ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "host_port"),
    [
        (":9877", ("", 9877)),
        ("[::1]:9877", ("::1", 9877)),
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::]:1", ("::", 1)),
    ],
)
def test_listen_host_port(address: str, host_port: tuple[str, int]) -> None:
    settings = load("--listen-address", address)
    assert listen_host_port(settings) == host_port


# -- the check-config command -----------------------------------------------------------


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEO_EXPORTER_")}
    return subprocess.run(
        [sys.executable, "-m", "exporter", "check-config"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_prints_masked_settings() -> None:
    result = check_config({"NEO_EXPORTER_API_KEY": SECRET, "NEO_EXPORTER_POLL_INTERVAL": "5m"})
    assert result.returncode == 0, result.stderr
    assert "poll_interval" in result.stdout
    assert "= 5m  (NEO_EXPORTER_POLL_INTERVAL)" in result.stdout
    assert "********" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_check_config_rejects_a_bad_value_without_a_traceback() -> None:
    result = check_config({"NEO_EXPORTER_API_KEY": SECRET, "NEO_EXPORTER_POLL_INTERVAL": "abc"})
    assert result.returncode == 2
    assert "poll_interval (--poll-interval / NEO_EXPORTER_POLL_INTERVAL)" in result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr


# -- first contact: what an operator types by mistake -----------------------------------


def credential_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(env=env).require_credential()
    return str(caught.value)


def test_an_empty_key_variable_is_named_when_no_credential_is_set() -> None:
    message = credential_error({"NEO_EXPORTER_API_KEY": ""})
    assert message.startswith(
        "no Neo API credential configured (NEO_EXPORTER_API_KEY is set but empty); set one of"
    )


def test_warn_is_accepted_as_warning() -> None:
    assert load(env={"NEO_EXPORTER_LOG_LEVEL": "WARN"}).log_level == "warning"


@pytest.mark.parametrize(
    "given", ["https://neo.example/api/v1", "https://neo.example/api/v1/", "https://neo.example/"]
)
def test_an_api_url_with_the_version_path_is_the_base_url(given: str) -> None:
    assert load("--api-url", given).api_url == "https://neo.example"


def test_a_non_ascii_key_is_a_clear_error_that_does_not_show_it() -> None:
    key = "neo_sk_abc\u00a0def"  # a non-breaking space, pasted from a web page
    message = config_error(env={"NEO_EXPORTER_API_KEY": key})
    assert "not printable ASCII at position 11 (of 14)" in message
    assert "abc" not in message


def test_a_non_ascii_key_in_a_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("\u201cneo_sk_abc\u201d\n")  # typographic quotes
    message = credential_error({"NEO_EXPORTER_API_KEY_FILE": str(tmp_path / "key")})
    assert f"the secret in {tmp_path / 'key'} has a character that is not printable" in message
    assert "neo_sk" not in message


def test_a_key_pasted_into_the_key_file_variable_is_not_echoed() -> None:
    message = credential_error({"NEO_EXPORTER_API_KEY_FILE": SECRET})
    assert SECRET not in message
    assert "cannot read <hidden>: No such file or directory; expected the path of a file" in message
