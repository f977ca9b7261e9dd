"""``tradebus up`` stopped: interrupted while it checks the configuration or
starts its servers, a SIGTERM as its loop closes, a Ctrl-C with its output
gone, and its servers' keeper after a kill -9 of up or of the keeper."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from libs.local.servers import free_port, port_is_free
from libs.testing.wait import eventually
from tests.integration.stack_up_runs import (
    FAST_STRATEGIES,
    alive,
    checkout_path,
    clean_env,
    descendants,
    kill_leftovers,
    start_up,
    stat_fields,
    stop,
)

#: A strategy module that takes its time to import (a heavy dependency), until
#: interrupted, and guards it as optional imports are guarded.
SLOW_STRATEGY_MODULE = """\
import signal

print("slow strategy module: importing", flush=True)
try:
    while True:
        signal.pause()
except Exception:
    pass
"""


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_up_interrupted_while_checking_the_configuration(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """Ctrl-C (or SIGTERM) while ``up`` still checks the config files, here
    while it imports a strategy's module: one line and the shell's code for
    the signal; nothing was started. It used to exit 130 without a word on
    SIGINT, and die of SIGTERM."""
    (tmp_path / "slowstrategy.py").write_text(SLOW_STRATEGY_MODULE)
    strategies = tmp_path / "strategies.yaml"
    strategies.write_text(FAST_STRATEGIES.replace("sma_crossover", "slowstrategy:Strategy"))
    up = await start_up(tmp_path, tmp_path / "home", sig.name, "--strategies", str(strategies))
    try:
        await eventually(
            lambda: "slow strategy module: importing" in up.output(),
            timeout=60,
            message=up.tail,
        )
        up.proc.send_signal(sig)
        exit_code = await asyncio.wait_for(up.proc.wait(), timeout=60)
    finally:
        await kill_leftovers(up)
    text = up.output()
    assert exit_code == code, text
    assert text.splitlines()[-1] == (
        f"up              | {sig.name} while checking the configuration; nothing was started"
    ), text
    assert "Traceback" not in text
    assert "starting" not in text
    assert not (up.home / "stack.json").exists()


async def test_up_interrupted_while_starting_the_servers(tmp_path: Path) -> None:
    """Ctrl-C while ``up`` starts its servers: what started is stopped, and
    ``up`` exits 130 as it does while checking the configuration (it used to
    exit 0, as after a clean run)."""
    up = await start_up(tmp_path, tmp_path / "home", "SIGINT")
    try:
        await eventually(
            lambda: "starting nats-server" in up.output(), timeout=120, message=up.tail
        )
        up.proc.send_signal(signal.SIGINT)
        exit_code = await asyncio.wait_for(up.proc.wait(), timeout=120)
    finally:
        await kill_leftovers(up)
    text = up.output()
    assert exit_code == 130, text
    assert "SIGINT while starting; stopping" in text, text
    assert text.splitlines()[-1].endswith("| stopped"), text
    assert "Traceback" not in text
    assert not (up.home / "stack.json").exists()


#: ``tradebus up`` sending itself SIGTERM as its supervision's event loop
#: closes: the moment closing the loop gives SIGTERM its default action back
#: (from the loop's handler), before up's own stop of the servers begins.
SIGTERM_AS_THE_LOOP_CLOSES = """\
import _signal, os, signal, sys

def loops_handler(handler):
    return getattr(handler, "__name__", None) == "_sighandler_noop"

before = signal.getsignal(signal.SIGTERM)

def profile(frame, event, arg):
    global before
    if event == "c_return" and arg is _signal.signal:  # what signal.signal calls
        now = signal.getsignal(signal.SIGTERM)
        if now is signal.SIG_DFL and loops_handler(before):
            sys.setprofile(None)
            print("test: SIGTERM as the loop closes", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
        before = now

sys.argv[0] = "tradebus"
from services.cli import main
sys.setprofile(profile)
main()
"""


async def test_up_stops_its_servers_on_a_sigterm_as_its_loop_closes(tmp_path: Path) -> None:
    """Closing the supervision's event loop puts SIGTERM back to its default
    action, and up installed its "still stopping the servers..." handler
    only later: a SIGTERM in between killed up outright, its own stop of the
    servers skipped (the keeper stopped them once up's end closed its stdin,
    with nobody waiting). Now the signal waits for that handler."""
    up = await start_up(
        tmp_path,
        tmp_path / "home",
        "loop-closes",
        "--only",
        "recorder",
        python_args=("-c", SIGTERM_AS_THE_LOOP_CLOSES),
    )
    try:
        state = await eventually(up.state, timeout=120, message=up.tail)
        code, _ = await stop(up)
    finally:
        await kill_leftovers(up)
    text = up.output()
    assert "test: SIGTERM as the loop closes" in text, text[-4000:]
    assert code == 0, text[-4000:]  # killed by SIGTERM (-15) before
    lines = [
        line.split("| ", 1)[-1]
        for line in text.splitlines()
        if line.startswith(("up ", "test:"))  # not the servers' own lines
    ]
    assert lines[-4:] == [
        "test: SIGTERM as the loop closes",
        "still stopping the servers...",
        "stopping the servers",
        "stopped",
    ], text[-4000:]
    for pid in state["servers"].values():
        assert not alive(pid), f"a server (pid {pid}) outlived up"


class InterruptedWhenServersRun(io.StringIO):
    """up's output, where a Ctrl-C arrives as up writes that its servers
    run: after the keeper reported, before the servers' start returned."""

    def write(self, text: str) -> int:
        from services.stack.up import Interrupted

        written = super().write(text)
        if "nats-server running (" in text:
            raise Interrupted(signal.SIGINT)
        return written


def test_up_stops_servers_whose_start_a_ctrl_c_cut_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C after the keeper reported its servers running, but before the
    call starting them returned to up: up knew of no servers, and stopped
    none; the keeper stopped them only once up had exited (its stdin closed)."""
    from services.stack.up import UpOptions, run_up

    monkeypatch.delenv("NATS_URL", raising=False)
    # Never reached: only nats-server is ours, and the Ctrl-C comes first.
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/tradebus")
    out = InterruptedWhenServersRun()
    nats_port = free_port()
    options = UpOptions(home=tmp_path / "home", nats_port=nats_port, only=("recorder",))
    code = run_up(options, out)
    text = out.getvalue()
    assert code == 130, text
    assert "up       | SIGINT while starting; stopping\nup       | stopping the servers\n" in text
    assert text.endswith("up       | stopped\n"), text
    assert port_is_free(nats_port)  # stopped, not left to the keeper after up exits
    assert not (tmp_path / "home" / "stack.json").exists()


async def test_up_stops_at_ctrl_c_when_its_output_is_gone(tmp_path: Path) -> None:
    """``tradebus up | tee up.log``: the Ctrl-C that stops the stack kills tee
    too, so ``up``'s output is a pipe nobody reads. ``up`` still stops every
    service and both servers, and exits 0. It used to stop nothing: the line
    it writes on Ctrl-C raised BrokenPipeError out of the signal's handler (a
    second Ctrl-C too), its services blocked on their full output pipes, and
    once ``up`` was killed the keeper, failing to say that PostgreSQL had
    stopped, left nats-server running."""
    loop = asyncio.get_running_loop()
    read_end, write_end = os.pipe()
    output = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(output), os.fdopen(read_end, "rb")
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "up",
            "--home", str(tmp_path / "home"),
            "--nats-port", str(free_port()),
            "--postgres-port", str(free_port()),
            "--metrics-port", "0",
            "--paper-port", "0",
            "--stop-timeout", "5",
            "--only", "recorder",
            env={**clean_env(), "PYTHONUNBUFFERED": "1", **checkout_path()},
            cwd=tmp_path,
            stdout=write_end,
            stderr=write_end,
        )  # fmt: skip
    finally:
        os.close(write_end)
    seen = b""
    tree: set[int] = set()
    try:
        async with asyncio.timeout(180):
            while b"tradebus is up" not in seen:
                line = await output.readline()
                assert line, seen.decode(errors="replace")[-4000:]
                seen += line
        tree = descendants(proc.pid)
        transport.close()  # tee is gone
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), timeout=60)
        assert code == 0
        await eventually(
            lambda: not [p for p in tree if alive(p)],
            timeout=30,
            message=lambda: f"processes of up still running: {[p for p in tree if alive(p)]}",
        )
    finally:
        transport.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in tree:  # what a failed run left behind
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_up_waits_for_the_servers_an_up_killed_outright_left_stopping(tmp_path: Path) -> None:
    """After ``kill -9`` of up, its keeper stops the servers on its own (end of
    its stdin), which takes a moment: an up started meanwhile on the same home
    took the home's lock at once (up's own died with it) and started servers
    beside the old ones, on the same data directories."""
    from services.stack.up import LocalServers, _home_lock

    servers = LocalServers.start(
        tmp_path,
        nats_port=free_port(),
        nats_monitor_port=free_port(),
        postgres_port=None,
        prefix="servers | ",
    )
    assert servers.proc.stdin is not None
    servers.proc.stdin.close()  # what up's death does: the keeper starts stopping
    notes: list[str] = []
    pids = servers.pids()
    assert "nats" in pids
    with _home_lock(tmp_path, notes.append):
        # What the lock must wait for: the old servers gone. (Not the keeper
        # itself: it lets go of the lock as its main returns, a moment before
        # its process exits, and a loaded host saw it still there.)
        still = {name: pid for name, pid in pids.items() if alive(pid)}
        assert not still, f"the old keeper still runs its servers: {still}"
    assert notes == [f"waiting for the servers of an earlier tradebus up to stop (home {tmp_path})"]
    assert servers.proc.wait() == 0
    assert servers.proc.stdout is not None
    servers.proc.stdout.close()


async def test_up_stops_the_stack_and_its_servers_when_its_keeper_dies(tmp_path: Path) -> None:
    """The keeper killed outright (an OOM kill, a stray kill -9): up did not
    notice. The stack ran on with servers nothing restarted, and at its stop
    up found the keeper gone and left nats-server and PostgreSQL running,
    holding the home's data and ports after it had exited."""
    up = await start_up(tmp_path, tmp_path / "home", "keeper", "--only", "recorder")
    try:
        state = await eventually(up.state, timeout=120, message=up.tail)
        servers = state["servers"]
        keeper = int(stat_fields(servers["nats"])[1])
        os.kill(keeper, signal.SIGKILL)
        code = await asyncio.wait_for(up.proc.wait(), timeout=120)
    finally:
        await kill_leftovers(up)
    text = up.output()
    assert code == 1, text[-4000:]
    assert "stopped because the server keeper exited unexpectedly (killed by SIGKILL)" in text
    assert re.search(r"recorder stopped \((exit code 0|killed by SIGTERM)\)", text), text
    for pid in servers.values():
        assert not alive(pid), f"a server (pid {pid}) outlived the stack"
