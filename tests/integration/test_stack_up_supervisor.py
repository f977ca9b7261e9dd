"""``tradebus up``'s process supervisor on its own: restarts, stops in reverse
order, Ctrl-C and a stubborn service, failures of supervising, backoff."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
from pathlib import Path
from typing import Any, Literal

import pytest

from libs.config import masked_url
from libs.local.servers import free_port, port_is_free
from libs.testing.wait import eventually
from services.stack.supervisor import Backoff, Printer, ServiceSpec, Supervisor
from tests.integration.stack_up_runs import alive

# --------------------------------------------------------------- supervisor


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


STEADY = (
    "import signal, sys\n"
    "def bye(*_):\n"
    "    print('bye', flush=True)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, bye)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    signal.pause()\n"
)
STUBBORN = (
    "import signal\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    signal.pause()\n"
)

#: A service whose clean shutdown takes a while (a flush, a checkpoint): on
#: SIGTERM it starts, and it finishes when the test says so (SIGUSR1).
FLUSHER = (
    "import signal, sys\n"
    "def flush(*_):\n"
    "    print('flushing', flush=True)\n"
    "def done(*_):\n"
    "    print('flushed', flush=True)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGUSR1, done)\n"
    "signal.signal(signal.SIGTERM, flush)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    signal.pause()\n"
)
#: A service that refuses its configuration (exit 2) when the test says so (SIGUSR1).
REFUSER_ON_CUE = (
    "import signal, sys\n"
    "def refuse(*_):\n"
    "    print('error: risk.yaml: max_gros_notional', flush=True)\n"
    "    sys.exit(2)\n"
    "signal.signal(signal.SIGUSR1, refuse)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    signal.pause()\n"
)
ALREADY_STOPPING = (
    "up      | already stopping the services, one at a time (Ctrl-C again to kill them all)"
)


async def stopping_on_its_own(out: io.StringIO) -> tuple[Supervisor, asyncio.Task[None], int]:
    """A supervisor stopping the stack because a service refused its
    configuration, its other service (a flusher) in the middle of its clean
    shutdown; returns the supervisor, its run and the flusher's pid."""
    specs = [
        ServiceSpec("flusher", python(FLUSHER), dict(os.environ)),
        ServiceSpec("refuser", python(REFUSER_ON_CUE), dict(os.environ)),
    ]
    printer = Printer(out, ["up", "flusher", "refuser"], color=False)
    sup = Supervisor(specs, printer, stop_timeout=60)
    running = asyncio.create_task(sup.run())
    await eventually(
        lambda: "flusher | ready" in out.getvalue() and "refuser | ready" in out.getvalue(),
        timeout=20,
        message=out.getvalue,
    )
    pids = sup.pids()
    os.kill(pids["refuser"], signal.SIGUSR1)
    await eventually(
        lambda: "flusher | flushing" in out.getvalue(), timeout=20, message=out.getvalue
    )
    return sup, running, pids["flusher"]


async def test_supervisor_a_ctrl_c_during_its_own_stop_kills_nothing() -> None:
    """A service refused its configuration, so the supervisor stops the others;
    the operator's Ctrl-C meanwhile is their first: it says that the stop is
    under way and how to kill, and lets the services finish their clean
    shutdown (it used to kill them all at once)."""
    out = io.StringIO()
    sup, running, flusher = await stopping_on_its_own(out)
    try:
        sup.request_stop()  # what the loop's SIGINT handler calls (tradebus up)
        with contextlib.suppress(ProcessLookupError):
            os.kill(flusher, signal.SIGUSR1)  # its flush is done
        await asyncio.wait_for(running, timeout=30)
    finally:
        await stop_supervisor(sup, running)
    text = out.getvalue()
    assert ALREADY_STOPPING in text
    assert "flusher | flushed" in text, text
    assert "up      | flusher stopped (exit code 0)" in text
    assert "killing" not in text
    assert sup.failure is not None
    assert sup.failure.startswith("refuser exited with exit code 2")


async def test_supervisor_kills_at_the_operators_second_ctrl_c() -> None:
    """The operator insists: their second Ctrl-C kills, whoever began the stop."""
    out = io.StringIO()
    sup, running, flusher = await stopping_on_its_own(out)
    try:
        sup.request_stop()
        sup.request_stop()
        await asyncio.wait_for(running, timeout=30)
    finally:
        await stop_supervisor(sup, running)
    text = out.getvalue()
    assert text.count("killing every service") == 1, text
    assert text.index(ALREADY_STOPPING) < text.index("up      | !!! killing every service")
    assert "up      | flusher stopped (killed by SIGKILL)" in text
    assert "flusher | flushed" not in text
    assert not alive(flusher)


async def stop_supervisor(sup: Supervisor, running: asyncio.Task[None]) -> None:
    """After a failed test: kill whatever still runs."""
    while not running.done():
        sup.request_stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(running), timeout=10)


async def test_supervisor_restarts_what_dies_and_stops_in_reverse_order() -> None:
    out = io.StringIO()
    specs = [
        ServiceSpec("steady", python(STEADY), dict(os.environ)),
        ServiceSpec("crashy", python("import sys; print('boom'); sys.exit(3)"), dict(os.environ)),
    ]
    printer = Printer(out, ["up", "steady", "crashy"], color=False)
    sup = Supervisor(specs, printer, backoff=Backoff(initial=0.01, cap=0.05), stop_timeout=10)
    running = asyncio.create_task(sup.run())
    try:
        await eventually(lambda: sup.restarts["crashy"] >= 3, timeout=20, message=out.getvalue())
        await eventually(lambda: "steady | ready" in out.getvalue(), timeout=20)
        assert sup.restarts["steady"] == 0
    finally:
        sup.request_stop()
        await asyncio.wait_for(running, timeout=30)
    text = out.getvalue()
    assert "crashy | boom" in text
    assert "crashy | !!! crashy exited unexpectedly (exit code 3)" in text
    assert "steady | bye" in text
    assert "up     | steady stopped (exit code 0)" in text
    assert not sup.pids()


async def test_supervisor_stops_everything_when_a_service_refuses_its_config(
    tmp_path: Path,
) -> None:
    """Exit code 2 is a service's "my configuration is invalid": restarting it
    would loop for ever while the rest ran on without it (a stack trading
    with no risk-gate). The supervisor stops on its own, saying why."""
    out = io.StringIO()
    # The refuser exits once steady has its SIGTERM handler in (a file steady
    # writes after it), so "steady stopped (exit code 0)" does not depend on
    # which of the two processes a loaded host runs first.
    ready = tmp_path / "steady.ready"
    steady = STEADY.replace(
        "print('ready', flush=True)\n",
        f"print('ready', flush=True)\nopen({str(ready)!r}, 'w').close()\n",
    )
    refuser = (
        "import os, sys, time\n"
        "deadline = time.monotonic() + 20\n"
        f"while not os.path.exists({str(ready)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print('error: risk.yaml: max_gros_notional')\n"
        "sys.exit(2)\n"
    )
    specs = [
        ServiceSpec("steady", python(steady), dict(os.environ)),
        ServiceSpec("refuser", python(refuser), dict(os.environ)),
    ]
    printer = Printer(out, ["up", "steady", "refuser"], color=False)
    sup = Supervisor(specs, printer, backoff=Backoff(initial=0.01, cap=0.05), stop_timeout=10)
    # No request_stop: run() must return by itself.
    await asyncio.wait_for(sup.run(), timeout=30)
    text = out.getvalue()
    assert sup.restarts == {"steady": 0, "refuser": 0}, text
    assert sup.failure == (
        "refuser exited with exit code 2: it refused its configuration (see its output above)"
    )
    assert "refuser | error: risk.yaml: max_gros_notional" in text
    assert "refuser | !!! refuser exited with exit code 2" in text
    assert "Stopping the stack: fix it and start again" in text
    assert "restarting in" not in text
    assert "up      | steady stopped (exit code 0)" in text
    assert not sup.pids()


async def test_supervisor_kills_a_service_that_ignores_sigterm() -> None:
    out = io.StringIO()
    printer = Printer(out, ["up", "stubborn"], color=False)
    sup = Supervisor(
        [ServiceSpec("stubborn", python(STUBBORN), dict(os.environ))], printer, stop_timeout=0.5
    )
    running = asyncio.create_task(sup.run())
    try:
        await eventually(lambda: "stubborn | ready" in out.getvalue(), timeout=20)
        pid = sup.pids()["stubborn"]
    finally:
        sup.request_stop()
        await asyncio.wait_for(running, timeout=30)
    text = out.getvalue()
    assert "did not stop within 0.5s; killing" in text
    assert "stubborn stopped (killed by SIGKILL)" in text
    assert not alive(pid)


#: A service that answers /health on the port it is given, until SIGTERM.
HEALTHY = (
    "import http.server, signal, sys\n"
    "class Health(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200)\n"
    "        self.end_headers()\n"
    "    def log_message(self, *_):\n"
    "        pass\n"
    "def bye(*_):\n"
    "    print('bye', flush=True)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, bye)\n"
    "server = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), Health)\n"
    "print('ready', flush=True)\n"
    "server.serve_forever()\n"
)


async def test_supervise_stops_the_services_when_supervising_them_fails(tmp_path: Path) -> None:
    """An error none foresaw beside the supervisor (here: printing the banner,
    once the services answer /health, of a database URL urlsplit refuses):
    it left ``supervise`` at once, the services still running; under ``up``
    they only got SIGTERM from the kernel once up exited, after it had
    stopped the servers under them. Now they are stopped first, in order,
    and the failure is what up says it stopped for."""
    from services.stack.banner import Endpoint, StackInfo
    from services.stack.running import supervise

    out = io.StringIO()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    endpoints = [Endpoint("healthy", f"{base}/metrics", f"{base}/health")]
    specs = [ServiceSpec("healthy", [*python(HEALTHY), str(port)], dict(os.environ))]
    info = StackInfo(
        home=tmp_path,
        nats_url="nats://127.0.0.1:1",
        database_url="postgresql://postgres:secret@[::1/tradebus",  # no closing bracket
        endpoints=endpoints,
    )
    printer = Printer(out, ["up", "healthy"], color=False)
    failure = await asyncio.wait_for(
        supervise(specs, endpoints, printer, info, stop_timeout=10), timeout=60
    )
    text = out.getvalue()
    why = "supervising the services failed unexpectedly (ValueError: Invalid IPv6 URL)"
    assert failure == why
    assert "healthy | ready" in text  # it ran, and answered /health
    assert f"up      | !!! {why}; stopping the services\n" in text
    assert "up      | Traceback (most recent call last):" in text
    assert "healthy | bye" in text
    assert text.index(why) < text.index("up      | healthy stopped (exit code 0)")
    assert port_is_free(port)


class FailsOnceReady(asyncio.Event):
    """A supervisor's stop request whose wait fails once its service is
    ready: Supervisor.run raising, its service running (a bug in it, say)."""

    def __init__(self, out: io.StringIO) -> None:
        super().__init__()
        self.out = out

    async def wait(self) -> Literal[True]:
        await eventually(lambda: "healthy | ready" in self.out.getvalue(), timeout=20)
        raise RuntimeError("a bug in the supervisor")


async def test_supervise_stops_the_services_when_the_supervisor_itself_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Supervisor.run raising left ``supervise`` with the services running:
    up then stopped the servers under them, and they got SIGTERM from the
    kernel only once up exited. Now they are stopped first, and the failure
    is what up says it stopped for."""
    from services.stack import running
    from services.stack.banner import Endpoint, StackInfo

    out = io.StringIO()

    class Broken(Supervisor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._stop_requested = FailsOnceReady(out)

    monkeypatch.setattr(running, "Supervisor", Broken)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    endpoints = [Endpoint("healthy", f"{base}/metrics", f"{base}/health")]
    specs = [ServiceSpec("healthy", [*python(HEALTHY), str(port)], dict(os.environ))]
    info = StackInfo(home=tmp_path, nats_url="", database_url="", endpoints=endpoints)
    printer = Printer(out, ["up", "healthy"], color=False)
    failure = await asyncio.wait_for(
        running.supervise(specs, endpoints, printer, info, stop_timeout=10), timeout=60
    )
    text = out.getvalue()
    why = "supervising the services failed unexpectedly (RuntimeError: a bug in the supervisor)"
    assert failure == why, text
    assert f"up      | !!! {why}; stopping the services\n" in text
    assert "up      | Traceback (most recent call last):" in text
    assert "healthy | bye" in text
    assert text.index(why) < text.index("up      | healthy stopped (exit code 0)")
    assert port_is_free(port)


def test_backoff_grows_to_its_cap() -> None:
    b = Backoff(initial=0.5, factor=2, cap=4)
    assert [b.delay(n, jitter=lambda: 0.5) for n in range(6)] == [0.5, 1, 2, 4, 4, 4]
    assert b.delay(0, jitter=lambda: 0.0) == pytest.approx(0.4)
    assert b.delay(0, jitter=lambda: 1.0) == pytest.approx(0.6)


def test_banner_never_shows_a_password() -> None:
    assert masked_url("postgresql://u:s3cret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert masked_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
