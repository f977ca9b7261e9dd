"""``tradebus up``: the whole stack on this machine, no Docker.

0. Check what the services' ``TRADEBUS_*`` settings must agree on
   (:func:`services.stack.configs.settings_problems`; refused with exit 2,
   as a service refuses its own settings), then load and validate every
   config file a service will be given (:mod:`services.stack.configs`);
   refuse to start, naming the file and the key, if one is invalid
   (:mod:`services.stack.preflight`).
   SIGINT/SIGTERM/SIGHUP meanwhile: one line, exit 128 + the signal (130 for Ctrl-C).
1. Unless ``NATS_URL`` / ``DATABASE_URL`` are set, start nats-server and
   PostgreSQL from the wheels, with their data under ``--home`` (default
   ``./.tradebus``, reused across runs) on ports of their own (14222 and
   15432 when free: 4222 and 5432 are often the machine's own servers).
   nats-server runs ``deploy/nats/nats-server.conf``: NATS permissions on,
   one user per service, random passwords kept in ``<home>/credentials.json``
   (mode 0600) and handed to the server through its environment.
2. Migrate the event store and declare the stream (as the NATS admin user);
   steps 1 and 2 are :mod:`services.stack.servers`.
   SIGINT/SIGTERM/SIGHUP during steps 1 and 2: what started is stopped, and ``up``
   exits 128 + the signal, as in step 0.
3. Run each service of the order path as its own OS process with its own
   NATS user (:mod:`services.stack.wiring`) under
   :class:`~services.stack.supervisor.Supervisor`, print where to look, and
   run until SIGINT/SIGTERM/SIGHUP (the terminal closed): services stop first, then the servers. A
   service exiting with code 2 (it refused its configuration) stops the
   whole stack the same way, and ``up`` exits 1 (:mod:`services.stack.running`);
   so does the keeper's death, or an error in what runs beside the
   supervisor (the /health wait, the banner), its traceback printed.

This module runs the steps in order, owns SIGINT/SIGTERM/SIGHUP until the
supervisor's loop takes them, and stops what started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

from services.stack import configs, wiring
from services.stack import credentials as creds
from services.stack.ports import (
    PREFERRED_METRICS_PORT,
    PREFERRED_NATS_PORT,
    PREFERRED_POSTGRES_PORT,
    Ports,
)
from services.stack.preflight import (
    LABEL,
    SERVERS_LABEL,
    Checked,
    UpError,
    UpOptions,
    checked_configs,
)
from services.stack.running import (
    HEALTH_POLL_INTERVAL,
    HEALTH_TIMEOUT,
    KEEPER_WATCH_INTERVAL,
    service_specs,
    stack_info,
    stack_state,
    supervise,
)
from services.stack.servers import (
    DATABASE_NAME,
    KEEPER_POLL_INTERVAL,
    SERVERS_STOP_TIMEOUT,
    STREAM_SETUP_TIMEOUT,
    LocalServers,
    ensure_stream,
    home_lock,
    migrate,
    start_servers,
)
from services.stack.supervisor import CONFIG_EXIT_CODE, Printer

__all__ = [
    "DATABASE_NAME",
    "HEALTH_POLL_INTERVAL",
    "HEALTH_TIMEOUT",
    "KEEPER_POLL_INTERVAL",
    "KEEPER_WATCH_INTERVAL",
    "LABEL",
    "PREFERRED_METRICS_PORT",
    "PREFERRED_NATS_PORT",
    "PREFERRED_POSTGRES_PORT",
    "SERVERS_LABEL",
    "SERVERS_STOP_TIMEOUT",
    "STREAM_SETUP_TIMEOUT",
    "Interrupted",
    "LocalServers",
    "Ports",
    "UpError",
    "UpOptions",
    "run_up",
]

#: Their names before the split, which tests import.
_home_lock = home_lock
_stack_info = stack_info


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived before the supervisor's loop handles them.

    Not an :class:`Exception`, as KeyboardInterrupt is not: checking the
    configuration imports the strategies' modules, and one that guards an
    optional import with ``except Exception`` must not swallow a Ctrl-C.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's code for a command a signal ended: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


#: SIGHUP (the terminal closed) stops up as SIGTERM does: killed by it, up
#: left its services to a SIGTERM as their parent died while the keeper,
#: its stdin closed, stopped PostgreSQL under them.
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals(handler: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    old = {s: signal.signal(s, handler) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def run_up(options: UpOptions, out: IO[str] | None = None) -> int:
    """Run the stack until stopped; returns the exit code (0 after a clean stop)."""
    home = options.home.resolve()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, no permission: the operator's to fix
        why = f"--home {home}: cannot use it as the stack's home ({e.strerror or e})"
        _refuse(Printer(out or sys.stdout, [LABEL]), UpError(why))
        return 1
    try:
        names = wiring.parse_only(",".join(options.only) if options.only else None)
    except wiring.WiringError as e:
        _refuse(Printer(out or sys.stdout, [LABEL]), e)
        return 1
    printer = Printer(out or sys.stdout, [LABEL, SERVERS_LABEL, *names])
    try:
        # Two options asking for one port: refused before anything else, as
        # nothing could tell the two servers apart until one fails to bind.
        ports = Ports(options, names, lambda text: printer.line(LABEL, text))
    except UpError as e:
        _refuse(printer, e)
        return 1
    try:
        # The settings and config files, which may take a while (the
        # strategies' modules are imported): nothing runs yet, so a SIGINT or
        # SIGTERM only ends up, in one line and with the shell's code.
        with _signals(_interrupt):
            # Settings two services must agree on, before anything else: refused
            # as a service refuses its own settings (exit 2), and nothing starts.
            problems = configs.settings_problems(names)
            if problems:
                _refuse(printer, UpError("\n".join(problems)))
                return CONFIG_EXIT_CODE
            checked = checked_configs(options, names, printer)
    except Interrupted as e:
        printer.line(LABEL, f"{e} while checking the configuration; nothing was started")
        return e.exit_code
    except (UpError, wiring.WiringError) as e:
        _refuse(printer, e)
        return 1
    try:
        with home_lock(home, lambda text: printer.line(LABEL, text)):
            return _run_locked(options, ports, home, names, printer, checked)
    except (UpError, wiring.WiringError) as e:
        _refuse(printer, e)
        return 1


def _refuse(printer: Printer, error: Exception) -> None:
    """Why ``up`` stops: the first line as an alert, the rest (one problem a
    line, when there are several) under it."""
    first, *rest = str(error).splitlines() or [""]
    printer.alert(LABEL, first)
    for line in rest:
        printer.line(LABEL, line)


def _run_locked(
    options: UpOptions,
    ports: Ports,
    home: Path,
    names: list[str],
    printer: Printer,
    checked: Checked,
) -> int:
    def note(text: str) -> None:
        printer.line(LABEL, text)

    servers: LocalServers | None = None

    def record(started: LocalServers) -> None:
        # As soon as the keeper runs: a Ctrl-C after it reported, before
        # start_servers returned, left its servers to no one until up exited.
        nonlocal servers
        servers = started

    failure: str | None = None
    interrupted: Interrupted | None = None
    #: The signal mask as it was, given back once up's last handler is in.
    unheld = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    state_file = home / "stack.json"
    try:
        try:
            # Until the supervisor's loop takes over SIGINT/SIGTERM, either one
            # raises Interrupted here, and we stop whatever has started so far.
            with _signals(_interrupt):
                try:
                    # The home's paper keys whatever the NATS server; its NATS
                    # passwords only for ours.
                    ports.choose_ahead([n for n in wiring.SERVICES if n in names])
                    stored = creds.load_or_create(home, wiring.NATS_USERS)
                    credentials = None if os.environ.get("NATS_URL") else stored
                    servers, nats_url, database_url = start_servers(
                        ports, home, printer, note, credentials, record
                    )
                    note("migrating the event store")
                    migrate(database_url)
                    note("declaring the stream (as the NATS admin user)")
                    ensure_stream(nats_url, credentials)
                    inputs = wiring.Inputs(
                        home=home,
                        nats_url=nats_url,
                        database_url=database_url,
                        credentials=credentials,
                        paper_keys=stored.paper_env(),
                        strategies=checked.strategies,
                        risk=checked.risk,
                        paper_port=ports.paper(),
                        md_rate=options.md_rate,
                        loaded_strategies=checked.loaded_strategies,
                    )
                    specs, endpoints = service_specs(names, inputs, ports)
                    info = stack_info(
                        home, nats_url, database_url, endpoints, servers, credentials, inputs
                    )
                    state_file.write_text(stack_state(info, servers))
                    runner = asyncio.Runner()
                    try:
                        failure = runner.run(
                            supervise(
                                specs, endpoints, printer, info, options.stop_timeout, servers
                            )
                        )
                    finally:
                        # Closing the loop gives SIGINT and SIGTERM their
                        # defaults back (SIGTERM's: exit at once): held first.
                        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
                        runner.close()
                finally:
                    # Leaving this block gives them back the handlers from
                    # before up's, SIGTERM's default too, when the start-up
                    # failed or was interrupted without reaching the loop: a
                    # SIGTERM then killed up, its stop of the servers skipped.
                    # Held from here until the handler below is in.
                    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        except Interrupted as e:
            interrupted = e
            note(f"{e} while starting; stopping")
    finally:
        with _signals(lambda signum, frame: note("still stopping the servers...")):
            signal.pthread_sigmask(signal.SIG_SETMASK, unheld)  # one held is handled here
            if servers is not None:
                note("stopping the servers")
                servers.stop()
            state_file.unlink(missing_ok=True)
        note("stopped")
    if failure is not None:
        printer.alert(LABEL, f"stopped because {failure}")
        return 1
    if interrupted is not None:
        return interrupted.exit_code  # as while the configuration was checked
    return 0
