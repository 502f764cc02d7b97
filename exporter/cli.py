"""Command line: run, check-config, simulate and demo."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Literal

import structlog

from exporter import __version__
from exporter.durations import parse_duration
from exporter.errors import NEW_LEDGER_FLAG, ConfigError, ExporterError
from exporter.logs import configure_logging, register_secret
from exporter.settings import (
    Settings,
    add_settings_arguments,
    browser_url,
    describe,
    listen_host_port,
    load_settings,
    render_effective,
)

if TYPE_CHECKING:
    from exporter.simulator import ScaledClock

# The daemon, the simulator and the backfill are imported by their commands only: `run`
# starts faster without the other two, and --version and --help without any.

log = structlog.get_logger(__name__)

EXIT_USAGE = 2
EXIT_STATE = 3
# The demo is a local toy: it listens on loopback unless told otherwise.
DEMO_LISTEN_ADDRESS = "127.0.0.1:9877"


def _parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        prog="neo-exporter",
        description="Prometheus exporter for ProjectDiscovery Neo task usage.",
    )
    parser.add_argument("--version", action="version", version=f"neo-exporter {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in (
        ("run", "poll the Neo API and serve /metrics (the daemon)"),
        ("check-config", "validate the settings and print them, secrets masked"),
        ("demo", "run the simulated Neo API and the exporter together, on loopback"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        add_settings_arguments(command)
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
    add_settings_arguments(back)
    back.add_argument(
        "--from", dest="start", required=True, type=_moment, help="start (ISO date or time, UTC)"
    )
    back.add_argument(
        "--to",
        dest="end",
        type=_moment,
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


def _moment(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date; expected 2026-11-01 or 2026-11-01T12:00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _backfill(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args)
        configure_logging(settings.log_level, settings.log_format)
        credential = settings.require_credential()
        register_secret(credential[1])
        step = parse_duration(args.step)
    except ConfigError as exc:
        print(f"neo-exporter: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"neo-exporter: --step: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        from exporter.backfill import run_backfill

        summary = run_backfill(
            settings, credential, start=args.start, end=args.end, step=step, output=args.output
        )
    except ConfigError as exc:  # a usage mistake (the range, the output file)
        print(f"neo-exporter: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ExporterError as exc:
        print(f"neo-exporter: {exc}", file=sys.stderr)
        return EXIT_STATE
    except BrokenPipeError:
        # The reader went away (`| head`): it has what it wanted. Standard output goes
        # to /dev/null, so that the flush at exit does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    print(summary, file=sys.stderr)
    return 0


def _install_signal_handlers(stop: threading.Event) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


@dataclass
class _Demo:
    """The simulated API a demo runs against, and the clock both sides share."""

    settings: Settings
    url: str
    clock: ScaledClock


def demo_settings(settings: Settings, api_url: str) -> Settings:
    """*settings* pointed at the simulator at *api_url*.

    Loopback, a fast poll and a throwaway ledger, unless a flag, variable or config
    file set them.
    """
    updates: dict[str, object] = {"api_url": api_url}
    if "listen_address" not in settings.model_fields_set:
        updates["listen_address"] = DEMO_LISTEN_ADDRESS
    if "poll_interval" not in settings.model_fields_set:
        updates["poll_interval"] = 2.0
    if "state_path" not in settings.model_fields_set:
        updates["state_path"] = Path(tempfile.mkdtemp(prefix="neo-exporter-demo-")) / "state.db"
    return settings.model_copy(update=updates)


def _start_demo(settings: Settings, stop: threading.Event) -> _Demo:
    """Start the simulator on loopback and point the settings at it."""
    from exporter.simulator import ScaledClock, SimulatedApi, World

    clock = ScaledClock(datetime.now(UTC), settings.sim_speed)
    world = World(seed=1, clock=clock, tasks_per_day=settings.sim_tasks_per_day)
    api = SimulatedApi(world)
    api.start()

    def stop_with_demo() -> None:
        stop.wait()
        api.stop()

    threading.Thread(target=stop_with_demo, daemon=True).start()
    return _Demo(demo_settings(settings, api.url), api.url, clock)


def _start_error(exc: OSError, settings: Settings) -> str:
    """One line for an OSError met while opening the ledger or binding the server.

    Filesystem calls name the file they failed on; a socket bind names none.
    """
    why = exc.strerror or str(exc)
    if exc.filename is not None:
        if isinstance(exc, FileExistsError):  # only mkdir of the parent raises it here
            why = f"{exc.filename} exists and is not a directory"
        elif str(exc.filename) != str(settings.state_path):
            why = f"{why}: {exc.filename}"
        return f"{describe('state_path')}: cannot create or open {settings.state_path}: {why}"
    return f"{describe('listen_address')}: cannot listen on {settings.listen_address}: {why}"


def _run(args: argparse.Namespace, *, demo: bool) -> int:
    try:
        settings = load_settings(args)
        configure_logging(settings.log_level, settings.log_format)
        stop = threading.Event()
        _install_signal_handlers(stop)
        simulated = None
        clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731
        credential: tuple[Literal["api_key", "token"], str]
        if demo:
            simulated = _start_demo(settings, stop)
            settings, clock = simulated.settings, simulated.clock.now
            from exporter.simulator import DEMO_API_KEY

            credential = ("api_key", DEMO_API_KEY)
        else:
            credential = settings.require_credential()
        register_secret(credential[1])
        host, port = listen_host_port(settings)
        from exporter.app import Exporter

        exporter = Exporter(
            settings, credential, host=host, port=port, clock=clock,
            new_ledger=getattr(args, "new_ledger", False), on_fatal=stop.set,
        )  # fmt: skip
    except ConfigError as exc:
        print(f"neo-exporter: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ExporterError as exc:
        print(f"neo-exporter: {exc}", file=sys.stderr)
        return EXIT_STATE
    except OSError as exc:
        print(f"neo-exporter: {_start_error(exc, settings)}", file=sys.stderr)
        return EXIT_STATE
    exporter.start()
    if simulated is not None:
        print(
            f"Simulated Neo API: {simulated.url}  (clock x{settings.sim_speed:g})\n"
            f"Exporter:          {browser_url(exporter.url)}/metrics\n"
            "Press Ctrl-C to stop.",
            file=sys.stderr,
            flush=True,
        )
    stop.wait()
    exporter.stop()
    if exporter.fatal is not None:
        print(f"neo-exporter: {exporter.fatal}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exporter.fatal, ConfigError) else EXIT_STATE
    return 0


def _check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args)
        settings.require_credential()
    except ConfigError as exc:
        print(f"neo-exporter: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(render_effective(settings))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from exporter.simulator import DEMO_API_KEY, serve

    configure_logging("info", args.log_format)
    key = DEMO_API_KEY
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text().strip()
        except OSError as exc:
            print(f"neo-exporter: cannot read --api-key-file: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    stop = threading.Event()
    _install_signal_handlers(stop)
    serve(
        args.listen_address,
        seed=args.seed,
        speed=args.speed,
        tasks_per_day=args.tasks_per_day,
        api_key=key,
        token=None,
        live_rows=args.live_rows,
        stop=stop,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args, demo=False)
    if args.command == "demo":
        return _run(args, demo=True)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "backfill":
        return _backfill(args)
    parser.print_help(sys.stderr)
    return EXIT_USAGE
