"""The command line's parser: the commands, and for each the flags of the settings it uses."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from exporter import __version__
from exporter.errors import NEW_LEDGER_FLAG
from exporter.settings import CREDENTIALS, SIMULATOR, Settings, add_settings_arguments

# What the backfill reads: the API, the live ledger's baseline, the request settings.
BACKFILL_SETTINGS = {
    "api_url", "api_key_file", "api_token_file", "state_path", "request_timeout",
    "max_concurrent_requests", "max_retries", "retry_backoff_max", "log_level", "log_format",
}  # fmt: skip
# The demo is a local toy: it listens on loopback unless told otherwise.
DEMO_LISTEN_ADDRESS = "127.0.0.1:9877"


def build_parser() -> argparse.ArgumentParser:
    """The commands, their flags and their help."""
    parser = argparse.ArgumentParser(
        prog="neo-exporter",
        description="Prometheus exporter for ProjectDiscovery Neo task usage.",
    )
    parser.add_argument("--version", action="version", version=f"neo-exporter {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    daemon = set(Settings.model_fields) - SIMULATOR
    demo_text = (
        "run the simulated Neo API and the exporter together, on loopback; its ledger is in "
        "a temporary directory removed on exit, unless --state-path is given"
    )
    for name, text, names, defaults in (
        ("run", "poll the Neo API and serve /metrics (the daemon)", daemon, {}),
        ("check-config", "validate the settings and print them, secrets masked", daemon, {}),
        # The demo talks to its own simulator with its own key: no API settings.
        ("demo", demo_text, set(Settings.model_fields) - {"api_url"} - CREDENTIALS, {
            "listen_address": DEMO_LISTEN_ADDRESS, "poll_interval": "2s",
            "state_path": "a temporary directory, removed on exit",
        }),
    ):  # fmt: skip
        command = commands.add_parser(name, help=text, description=text)
        add_settings_arguments(command, names, defaults)
        if name == "run":
            command.add_argument(
                NEW_LEDGER_FLAG,
                action="store_true",
                help="if the ledger at STATE_PATH counts another API or account, set it aside "
                "(renamed to STATE_PATH.<UTC time>, kept) and start a new one from zero; a "
                "ledger of the same API and account is kept",
            )
    text = "write past usage as timestamped OpenMetrics for promtool tsdb create-blocks-from"
    back = commands.add_parser("backfill", help=text, description=text)
    add_settings_arguments(back, BACKFILL_SETTINGS)
    back.add_argument(
        "--from", dest="start", required=True, type=moment, help="start (ISO date or time, UTC)"
    )
    back.add_argument(
        "--to",
        dest="end",
        type=moment,
        help="end, exclusive (default: the baseline of the live exporter's ledger at "
        "STATE_PATH; without that ledger --to is required)",
    )
    back.add_argument("--step", default="5m", help="sample resolution (default %(default)s)")
    back.add_argument("--output", "-o", type=Path, help="file to write (default: standard output)")
    sim = commands.add_parser(
        "simulate",
        help="serve the simulated Neo API alone",
        description="serve the simulated Neo API alone",
    )
    sim.add_argument(
        "--listen-address", default="127.0.0.1:8080", help="host:port (default %(default)s)"
    )
    sim.add_argument("--seed", type=int, default=1, help="world seed (default %(default)s)")
    sim.add_argument("--speed", type=float, default=60.0, help="simulated seconds per second")
    sim.add_argument("--tasks-per-day", type=float, default=2000.0, help="task arrival rate")
    sim.add_argument("--live-rows", action="store_true", help="serve usage rows of running streams")
    sim.add_argument(
        "--api-key-file",
        type=Path,
        help="file holding the API key to accept (default: the demo key)",
    )
    sim.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    return parser


def moment(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date; expected 2026-11-01 or 2026-11-01T12:00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
