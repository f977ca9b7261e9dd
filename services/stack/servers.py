"""The servers under ``tradebus up`` (steps 1 and 2 of :mod:`services.stack.up`).

nats-server and PostgreSQL run under the server keeper
(:mod:`services.stack.keeper`, its own process and session), on ports
:class:`~services.stack.ports.Ports` picks, with their data under the home,
which one up at a time may use (:func:`home_lock`). Then the event store is
migrated and the stream declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from libs.config import masked_url
from services.stack import credentials as creds
from services.stack import keeper, wiring
from services.stack.ports import Ports
from services.stack.preflight import SERVERS_LABEL, UpError
from services.stack.supervisor import Printer

DATABASE_NAME = "tradebus"

#: Named timeouts (seconds).
SERVERS_STOP_TIMEOUT = 60.0
#: How often a lock held by an earlier up's keeper is tried again.
KEEPER_POLL_INTERVAL = 0.1
STREAM_SETUP_TIMEOUT = 30.0


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
        on_start: Callable[[LocalServers], None] | None = None,
    ) -> LocalServers:
        """Start the keeper and wait for its report. ``on_start`` is given the
        servers as soon as the keeper runs: an exception (a Ctrl-C) from then
        until this returns must find them known to whoever stops them."""
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
        # SIGINT and SIGTERM are held from before the keeper's process exists
        # until on_start has it: up's handler raises, and one between Popen
        # returning (or its fork, inside it) and on_start left the keeper to
        # no one. One that came meanwhile is raised as they are let through.
        # The keeper inherits the mask and lets them through itself (keeper.main).
        held = signal.pthread_sigmask(signal.SIG_BLOCK, keeper.HELD_SIGNALS)
        try:
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
            if on_start is not None:
                on_start(servers)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
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
        if self.proc.stdout is not None:
            self.proc.stdout.close()  # its report, read at the start
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


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{name}").geturl()


# ------------------------------------------------------------------ the home


@contextlib.contextmanager
def home_lock(home: Path, note: Callable[[str], None]) -> Iterator[None]:
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


# ------------------------------------------------------------------ start-up


def start_servers(
    ports: Ports,
    home: Path,
    printer: Printer,
    note: Callable[[str], None],
    credentials: creds.Credentials | None,
    on_start: Callable[[LocalServers], None],
) -> tuple[LocalServers | None, str, str]:
    """The servers up starts (None if NATS_URL and DATABASE_URL are both
    set), the NATS URL and the database's. ``on_start`` is given the servers
    as soon as their keeper runs (see :meth:`LocalServers.start`)."""
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
        nats_port = ports.nats()
        monitor_port = ports.nats_monitor()
    if not database_url:
        postgres_port = ports.postgres()
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
        on_start=on_start,
    )
    note(f"{what} running ({time.monotonic() - started:.1f}s)")
    if not nats_url:
        nats_url = servers.report["nats"]["url"]
    if not database_url:
        database_url = _with_database(servers.report["postgres"]["url"], DATABASE_NAME)
    assert nats_url
    assert database_url
    return servers, nats_url, database_url


def migrate(database_url: str) -> None:
    from libs.store.errors import StoreError
    from libs.store.migrate import upgrade

    try:
        upgrade(database_url)
    except (StoreError, OSError) as e:
        raise UpError(f"cannot migrate the event store: {e}") from e


def ensure_stream(nats_url: str, credentials: creds.Credentials | None) -> None:
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
