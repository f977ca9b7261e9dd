"""A small process supervisor: each service its own OS process, output prefixed.

Like honcho or foreman: every line a service writes (stdout and stderr) is
printed as ``name | line``. Unlike them, a service that exits on its own is
reported loudly and restarted with exponential backoff (reset once it has
run for a while), except with exit code 2, the services' "my configuration
is invalid" (``settings_or_exit`` and every ``run`` command): no restart can
fix that, so the whole stack stops, saying why. Stopping is orderly: services are stopped one by one
in reverse start order (producers before the recorder), each with SIGTERM
and, after ``stop_timeout``, SIGKILL.

Only the operator's stop requests (:meth:`Supervisor.request_stop`: Ctrl-C,
SIGTERM) count towards killing: the first never kills (it starts the orderly
stop, or, when the supervisor is already stopping on its own after a fatal
exit, says so), the second kills every service at once. A stop the
supervisor began itself is not the operator's first request: a Ctrl-C
during it must not cut the services' clean shutdown short.

Services run in their own sessions so that a terminal's Ctrl-C reaches only
the supervisor, which then decides the order; on Linux each also gets
SIGTERM if the supervisor dies without stopping it (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

#: Longest output line kept whole; longer ones are printed in pieces.
LINE_LIMIT = 1024 * 1024

_COLORS = ("36", "33", "32", "35", "34", "96", "93", "92")

#: The exit code of a service that refused its configuration (a bad
#: ``TRADEBUS_*`` variable or config file; ``libs/cli.py``, the services'
#: ``run`` commands) or its command line (click's usage error).
CONFIG_EXIT_CODE = 2


@dataclass(frozen=True)
class ServiceSpec:
    """One service: its name (the output prefix), command line and environment
    (the same at every start: what must differ per start, such as the
    synthetic feed's id salt, the service draws itself)."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]


@dataclass(frozen=True)
class Backoff:
    """Restart delays: ``initial * factor**attempt``, capped, with +-20 % jitter."""

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    #: A service that ran at least this long starts again from ``initial``.
    stable_after: float = 30.0

    def delay(self, attempt: int, jitter: Callable[[], float] = random.random) -> float:
        base = min(self.cap, self.initial * self.factor**attempt)
        return base * (0.8 + 0.4 * jitter())


class Printer:
    """Writes ``name | text`` lines, coloured by name on a terminal."""

    def __init__(self, stream: IO[str], names: Sequence[str], *, color: bool | None = None) -> None:
        self.stream = stream
        self.width = max((len(n) for n in names), default=0)
        if color is None:
            color = stream.isatty() and "NO_COLOR" not in os.environ
        self.color = color
        self._colors = {n: _COLORS[i % len(_COLORS)] for i, n in enumerate(names)}
        #: The stream failed (a broken pipe): nothing more is written to it.
        self.gone = False

    def prefix(self, name: str) -> str:
        label = f"{name:<{self.width}} | "
        if self.color:
            return f"\x1b[{self._colors.get(name, '0')}m{label}\x1b[0m"
        return label

    def _write(self, text: str) -> None:
        """Write ``text``, unless whoever read the output is gone.

        ``tradebus up | tee up.log``: the Ctrl-C that stops the stack kills tee
        too. A write that raised then would end the supervisor's handling of
        that Ctrl-C (nothing stopped) and its reading of the services' output
        (each then blocks on a full pipe): the output is dropped instead.
        """
        if self.gone:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError:
            self.gone = True
            _to_devnull(self.stream)

    def line(self, name: str, text: str) -> None:
        self._write(f"{self.prefix(name)}{text}\n")

    def alert(self, name: str, text: str) -> None:
        """Something went wrong: bold red on a terminal, ``!!!`` always."""
        body = f"!!! {text}"
        if self.color:
            body = f"\x1b[1;31m{body}\x1b[0m"
        self.line(name, body)

    def raw(self, text: str) -> None:
        self._write(text if text.endswith("\n") else text + "\n")


def _to_devnull(stream: IO[str]) -> None:
    """Point ``stream``'s file descriptor at /dev/null, so that what is still
    buffered, flushed at exit, does not fail again (Python would exit 120)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def describe_exit(code: int) -> str:
    """``exit code 3`` or, for a negative return code, ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when we die, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the child
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)

    return preexec


@dataclass
class _Running:
    spec: ServiceSpec
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0


class Supervisor:
    """Runs services until :meth:`request_stop`, restarting any that die."""

    def __init__(
        self,
        specs: Sequence[ServiceSpec],
        printer: Printer,
        *,
        stop_timeout: float = 10.0,
        backoff: Backoff | None = None,
        label: str = "up",
    ) -> None:
        self._services = [_Running(s) for s in specs]
        self.printer = printer
        self.stop_timeout = stop_timeout
        self.backoff = backoff or Backoff()
        self.label = label
        #: Why the supervisor stopped on its own (a fatal exit), or None.
        self.failure: str | None = None
        self._stop_requested = asyncio.Event()
        #: Stop requests from the operator so far; the second one kills.
        self._operator_stops = 0
        self._stopping = False
        #: Each service's keeping task, once run() made them.
        self._tasks: list[asyncio.Task[None]] = []
        self._preexec = _parent_death_signal()
        #: Called with (name, pid) each time a service process starts.
        self.on_start: Callable[[str, int], None] | None = None

    @property
    def restarts(self) -> dict[str, int]:
        return {s.spec.name: s.restarts for s in self._services}

    def pids(self) -> dict[str, int]:
        """Pids of the service processes running now."""
        return {
            s.spec.name: s.proc.pid
            for s in self._services
            if s.proc is not None and s.proc.returncode is None
        }

    def request_stop(self) -> None:
        """The operator asks to stop (Ctrl-C, SIGTERM). First call: orderly
        stop, or, if one is already under way (a service exited fatally), the
        operator is told so. Second call: kill every service now."""
        self._operator_stops += 1
        if self._operator_stops == 1:
            already = "already " if self._stop_requested.is_set() else ""
            self.printer.line(
                self.label,
                f"{already}stopping the services, one at a time (Ctrl-C again to kill them all)",
            )
            self._stop_requested.set()
            return
        self.printer.alert(self.label, "killing every service")
        for s in self._services:
            if s.proc is not None and s.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    s.proc.kill()

    async def run(self) -> None:
        """Start every service, keep them running, and return once all are stopped."""
        tasks = [asyncio.create_task(self._keep(s), name=s.spec.name) for s in self._services]
        self._tasks = tasks
        await self._stop_requested.wait()
        self._stopping = True
        for s, task in reversed(list(zip(self._services, tasks, strict=True))):
            s.stop.set()
            (result,) = await asyncio.gather(task, return_exceptions=True)
            if isinstance(result, BaseException):
                self.printer.alert(self.label, f"supervising {s.spec.name} failed: {result!r}")

    async def stop_all(self) -> None:
        """Stop every service still running, in reverse start order: what
        stops them when :meth:`run` itself failed. Each keeping task stops
        its service; one that cannot (it failed too) leaves it to us."""
        self._stopping = True
        for s, task in reversed(list(zip(self._services, self._tasks, strict=True))):
            s.stop.set()
            await asyncio.gather(task, return_exceptions=True)
            proc = s.proc
            if proc is not None and proc.returncode is None:
                await self._terminate(s, proc, asyncio.ensure_future(proc.wait()))

    async def _spawn(self, s: _Running) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *s.spec.argv,
            env=dict(s.spec.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self._preexec,
            limit=LINE_LIMIT,
        )

    async def _keep(self, s: _Running) -> None:
        attempt = 0
        name = s.spec.name
        while not s.stop.is_set():
            try:
                proc = await self._spawn(s)
            except OSError as e:
                self.printer.alert(name, f"cannot start {name}: {e}")
                if await self._pause(s, attempt):
                    return
                attempt += 1
                continue
            s.proc = proc
            if self.on_start is not None:
                self.on_start(name, proc.pid)
            started = time.monotonic()
            assert proc.stdout is not None
            pump = asyncio.create_task(self._pump(name, proc.stdout))
            exited = asyncio.ensure_future(proc.wait())
            stop = asyncio.ensure_future(s.stop.wait())
            await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not exited.done():
                await self._terminate(s, proc, exited)
                await pump
                return
            code = exited.result()
            await pump
            if s.stop.is_set() or self._stopping:
                return
            if code == CONFIG_EXIT_CODE:  # it refused its configuration: everything stops
                self._fail(name, code)
                return
            ran = time.monotonic() - started
            if ran >= self.backoff.stable_after:
                attempt = 0
            delay = self.backoff.delay(attempt)
            s.restarts += 1
            self.printer.alert(
                name,
                f"{name} exited unexpectedly ({describe_exit(code)}) after {ran:.1f}s; "
                f"restarting in {delay:.1f}s (restart #{s.restarts})",
            )
            if await self._pause(s, attempt, delay):
                return
            attempt += 1

    def _fail(self, name: str, code: int) -> None:
        """A service refused its configuration: restarting would only loop, and
        the rest must not run on without it (a stack without its risk-gate)."""
        why = (
            f"{name} exited with {describe_exit(code)}: it refused its configuration "
            "(see its output above)"
        )
        self.printer.alert(
            name, f"{why}; not restarting it. Stopping the stack: fix it and start again"
        )
        self.stop_because(why)

    def stop_because(self, why: str) -> None:
        """Stop every service on our own, for ``why`` (kept as :attr:`failure`)."""
        if self.failure is None:
            self.failure = why
        self._stop_requested.set()

    async def _pause(self, s: _Running, attempt: int, delay: float | None = None) -> bool:
        """Wait before a restart; True if asked to stop meanwhile."""
        try:
            async with asyncio.timeout(delay if delay is not None else self.backoff.delay(attempt)):
                await s.stop.wait()
        except TimeoutError:
            return self._stopping
        return True

    async def _terminate(
        self, s: _Running, proc: asyncio.subprocess.Process, exited: asyncio.Future[int]
    ) -> None:
        name = s.spec.name
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            # Shielded: the timeout must not cancel ``exited``, awaited below
            # once the process is killed.
            async with asyncio.timeout(self.stop_timeout):
                code = await asyncio.shield(exited)
        except TimeoutError:
            self.printer.alert(name, f"{name} did not stop within {self.stop_timeout:g}s; killing")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code = await exited
        self.printer.line(self.label, f"{name} stopped ({describe_exit(code)})")

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                chunk = await stream.readline()
            except ValueError:  # a line beyond LINE_LIMIT: print what there is
                chunk = await stream.read(LINE_LIMIT)
            if not chunk:
                return
            self.printer.line(name, chunk.decode(errors="replace").rstrip("\r\n"))
