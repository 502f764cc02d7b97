"""Command line: run, check-config, simulate and demo."""

from __future__ import annotations

import argparse
import os
import shutil
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

from exporter.commandline import DEMO_LISTEN_ADDRESS, build_parser
from exporter.durations import parse_duration
from exporter.errors import ConfigError, ExporterError, WebConfigError
from exporter.logs import configure_logging, register_secret
from exporter.settings import (
    CREDENTIALS,
    Settings,
    browser_url,
    describe,
    listen_host_port,
    load_settings,
    render_effective,
)
from exporter.webconfig import load_web_config

if TYPE_CHECKING:
    from exporter.app import Exporter
    from exporter.simulator import ScaledClock

# The daemon, the simulator and the backfill are imported by their commands only: `run`
# starts faster without the other two, and --version and --help without any.

log = structlog.get_logger(__name__)

EXIT_USAGE = 2
EXIT_STATE = 3


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


def wait_for(stop: threading.Event) -> None:
    """Block the main thread until ``stop`` is set, waking every second: a signal that
    another thread received is handled (and sets ``stop``) only when the main thread
    runs Python code, which a wait without a timeout never lets it do."""
    while not stop.wait(timeout=1.0):
        pass


def _install_signal_handlers(stop: threading.Event) -> None:
    """The first SIGTERM or SIGINT stops the daemon in order; a second one, at once."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("signal_repeated_exiting", signal=name)
            os._exit(128 + signum)  # the ledger is a SQLite file: whole at any moment
        log.info("signal_received", signal=name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


@dataclass
class _Demo:
    """The simulated API a demo runs against, and the clock both sides share."""

    settings: Settings
    url: str
    clock: ScaledClock
    scratch: Path | None  # the temporary directory of its ledger, removed on exit


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


def demo_ignores(settings: Settings) -> list[str]:
    """The settings given (by a variable or the config file: the demo has no flags for
    them) that the demo does not use, since it runs its own simulated API."""
    return [name for name in ("api_url", *sorted(CREDENTIALS)) if name in settings.model_fields_set]


def _start_demo(settings: Settings, stop: threading.Event) -> _Demo:
    """Start the simulator on loopback and point the settings at it."""
    for name in demo_ignores(settings):
        log.warning("demo_setting_ignored", setting=name, source=settings.source(name))
    from exporter.simulator import ScaledClock, SimulatedApi, World

    clock = ScaledClock(datetime.now(UTC), settings.sim_speed)
    world = World(seed=1, clock=clock, tasks_per_day=settings.sim_tasks_per_day)
    api = SimulatedApi(world)
    api.start()

    def stop_with_demo() -> None:
        stop.wait()
        api.stop()

    threading.Thread(target=stop_with_demo, daemon=True).start()
    demo = demo_settings(settings, api.url)
    scratch = None if "state_path" in settings.model_fields_set else demo.state_path.parent
    return _Demo(demo, api.url, clock, scratch)


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
    stop = threading.Event()
    started: list[_Demo] = []  # the demo's simulator, once started (to clean up after)
    try:
        return _start(args, stop, started if demo else None)
    finally:
        for simulated in started:
            if simulated.scratch is not None:
                shutil.rmtree(simulated.scratch, ignore_errors=True)


def _start(args: argparse.Namespace, stop: threading.Event, demo: list[_Demo] | None) -> int:
    """Start the daemon (and with *demo*, the simulator first) and serve until stopped."""
    try:
        settings = load_settings(args)
        configure_logging(settings.log_level, settings.log_format)
        _install_signal_handlers(stop)
        simulated = None
        clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731
        credential: tuple[Literal["api_key", "token"], str]
        if demo is not None:
            simulated = _start_demo(settings, stop)
            demo.append(simulated)
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
    except (ConfigError, WebConfigError) as exc:
        print(f"neo-exporter: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ExporterError as exc:
        print(f"neo-exporter: {exc}", file=sys.stderr)
        return EXIT_STATE
    except OSError as exc:
        print(f"neo-exporter: {_start_error(exc, settings)}", file=sys.stderr)
        return EXIT_STATE
    return _serve(exporter, simulated, stop)


def _serve(exporter: Exporter, simulated: _Demo | None, stop: threading.Event) -> int:
    """Serve until stopped; the exit status."""
    exporter.start()
    if simulated is not None:
        settings = simulated.settings
        print(
            f"Simulated Neo API: {simulated.url}  (clock x{settings.sim_speed:g})\n"
            f"Exporter:          {browser_url(exporter.url)}/metrics\n"
            "Press Ctrl-C to stop.",
            file=sys.stderr,
            flush=True,
        )
    wait_for(stop)
    exporter.stop()
    if exporter.fatal is not None:
        print(f"neo-exporter: {exporter.fatal}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exporter.fatal, ConfigError) else EXIT_STATE
    return 0


def _check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args)
        settings.require_credential()
        if settings.web_config_file:
            load_web_config(settings.web_config_file)
    except (ConfigError, WebConfigError) as exc:
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
        on_listening=lambda url: _print_simulator(url, args.api_key_file),
    )
    return 0


def _print_simulator(url: str, key_file: Path | None) -> None:
    """Where the simulator listens and the key it accepts: the demo key, which is no
    secret, or the file named (whose key is)."""
    from exporter.simulator import DEMO_API_KEY

    if key_file is None:
        how = f"NEO_EXPORTER_API_KEY={DEMO_API_KEY} neo-exporter run --api-url {url}"
    else:
        how = f"neo-exporter run --api-key-file {key_file} --api-url {url}"
    print(
        f"Simulated Neo API: {url}\nPoint the exporter at it:\n  {how}", file=sys.stderr, flush=True
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
