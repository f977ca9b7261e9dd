"""``tradebus up`` signalled at the two moments of its start-up where, before
the supervisor's event loop runs, a SIGINT or SIGTERM could leave its servers
to no one: as the server keeper's process comes into being, and as up leaves
its start-up's handler after the start-up failed. Each run is a real ``up``
process that sends itself the signal at that very point (a hook in its own
interpreter, as test_stack_up_stopping's loop-closing test does), with only
nats-server its own and a database URL nothing listens on."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from urllib.parse import urlsplit

from libs.local.servers import free_port, port_is_free
from tests.integration.stack_up_runs import alive, kill_leftovers, start_up

#: Nothing listens there: migrating fails at once (if up gets that far).
UNREACHABLE_DATABASE = "postgresql://postgres@127.0.0.1:1/tradebus"

#: ``tradebus up`` sending itself SIGINT the moment the keeper's process
#: exists, as ``subprocess.Popen`` returns it: before up has been told of it.
SIGINT_AS_THE_KEEPER_STARTS = """\
import os, signal, subprocess, sys

class Popen(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        super().__init__(args, *rest, **kwargs)
        if "services.stack.keeper" in args:
            print(f"test: SIGINT as keeper {self.pid} starts", flush=True)
            os.kill(os.getpid(), signal.SIGINT)

subprocess.Popen = Popen
sys.argv[0] = "tradebus"
from services.cli import main
main()
"""

#: ``tradebus up`` sending itself SIGTERM the moment leaving its start-up's
#: handler (``_interrupt``) gives SIGTERM its default action back, the
#: second time: the first is when the configuration has been checked, with
#: nothing started; the second, here, after its start-up failed.
SIGTERM_AS_UP_LEAVES_ITS_START = """\
import _signal, os, signal, sys

before = signal.getsignal(signal.SIGTERM)
left = 0

def profile(frame, event, arg):
    global before, left
    if event == "c_return" and arg is _signal.signal:  # what signal.signal calls
        now = signal.getsignal(signal.SIGTERM)
        if now is signal.SIG_DFL and getattr(before, "__name__", None) == "_interrupt":
            left += 1
            if left == 2:
                sys.setprofile(None)
                print("test: SIGTERM as up leaves its start-up", flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
        before = now

sys.argv[0] = "tradebus"
from services.cli import main
sys.setprofile(profile)
main()
"""


def nats_port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def ups_lines(text: str) -> list[str]:
    """What up and the test said, without the prefix (not the servers' lines)."""
    return [
        line.split("| ", 1)[-1] for line in text.splitlines() if line.startswith(("up ", "test:"))
    ]


async def test_up_stops_the_keeper_a_ctrl_c_came_with(tmp_path: Path) -> None:
    """A Ctrl-C between the keeper's process starting and up being told of
    it (its on_start) left up knowing no servers: it stopped none and exited,
    the keeper still starting them (it stopped them only once it saw up's
    end close its stdin, with nobody waiting). Now SIGINT and SIGTERM are
    held across that moment, and the one that came is taken once the keeper
    is known: up stops it and its servers before it exits."""
    up = await start_up(
        tmp_path,
        tmp_path / "home",
        "keeper-starts",
        "--only",
        "recorder",
        env={"DATABASE_URL": UNREACHABLE_DATABASE},
        python_args=("-c", SIGINT_AS_THE_KEEPER_STARTS),
    )
    try:
        code = await asyncio.wait_for(up.proc.wait(), timeout=120)
        text = up.output()
        match = re.search(r"test: SIGINT as keeper (\d+) starts", text)
        assert match is not None, text[-4000:]
        keeper = int(match.group(1))
        assert not alive(keeper), f"the keeper outlived up:\n{text[-4000:]}"
    finally:
        await kill_leftovers(up)
    assert code == 130, text[-4000:]
    assert ups_lines(text)[-4:] == [
        match.group(0),
        "SIGINT while starting; stopping",
        "stopping the servers",
        "stopped",
    ], text[-4000:]
    assert "Traceback" not in text
    assert port_is_free(nats_port(up.nats_url))


async def test_up_stops_its_servers_on_a_sigterm_as_it_leaves_a_failed_start(
    tmp_path: Path,
) -> None:
    """After a start-up that never reached the supervisor's loop (here the
    event store cannot be migrated), leaving the start-up's SIGINT/SIGTERM
    handler gave SIGTERM its default action back before up's "still
    stopping the servers..." handler was in: a SIGTERM in between killed up
    outright, its stop of the servers skipped. Now the signal is held from
    before that handler is left until the next one is in."""
    up = await start_up(
        tmp_path,
        tmp_path / "home",
        "start-fails",
        "--only",
        "recorder",
        env={"DATABASE_URL": UNREACHABLE_DATABASE},
        python_args=("-c", SIGTERM_AS_UP_LEAVES_ITS_START),
    )
    try:
        code = await asyncio.wait_for(up.proc.wait(), timeout=120)
    finally:
        await kill_leftovers(up)
    text = up.output()
    assert "test: SIGTERM as up leaves its start-up" in text, text[-4000:]
    assert code == 1, text[-4000:]  # killed by SIGTERM (-15) before
    lines = ups_lines(text)
    start = lines.index("test: SIGTERM as up leaves its start-up")
    assert lines[start - 1] == "migrating the event store", text[-4000:]
    assert lines[start + 1 : start + 4] == [
        "still stopping the servers...",
        "stopping the servers",
        "stopped",
    ], text[-4000:]
    assert lines[-1].startswith("!!! cannot migrate the event store"), text[-4000:]
    assert port_is_free(nats_port(up.nats_url))  # stopped by up, not by the keeper after it


def blocked_signals(pid: int) -> set[signal.Signals]:
    """The signals ``pid`` has blocked (its SigBlk in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^SigBlk:\s*([0-9a-f]+)$", status, re.MULTILINE)
    assert found is not None, status
    mask = int(found[1], 16)
    return {s for s in signal.Signals if mask >> (s - 1) & 1}


def test_the_keeper_and_its_servers_take_sigint_and_sigterm(tmp_path: Path) -> None:
    """up holds SIGINT and SIGTERM while it starts the keeper, whose process
    inherits the mask: the keeper lets them through before it starts a
    server, else neither it nor its servers would stop on them (up stops a
    keeper that died without stopping its servers with SIGINT to its group)."""
    from services.stack.servers import LocalServers

    held = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    servers = LocalServers.start(
        tmp_path, nats_port=free_port(), nats_monitor_port=free_port(), postgres_port=None,
        prefix="servers | ",
    )  # fmt: skip
    try:
        assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == held  # ours given back
        for name, pid in {"keeper": servers.proc.pid, **servers.pids()}.items():
            assert not blocked_signals(pid) & {signal.SIGINT, signal.SIGTERM}, name
    finally:
        assert servers.stop() == 0
