"""``tradebus up`` end to end, and its process supervisor on its own.

The stack test runs ``python -m services.cli up`` as a real process with
NATS_URL / DATABASE_URL unset, so it starts its own nats-server (with
deploy/nats/nats-server.conf: permissions on) and PostgreSQL on ports the
test chose, and the whole order path as processes: synthetic marketdata,
strategy-runner, risk-gate, broker-gateway, paper broker, recorder. The
strategies file is the test's own (a 2/3 moving-average crossover on
one-second bars), so that the first fill comes within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import re
import signal
import stat
import sys
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import asyncpg
import pytest

from libs.config import masked_url
from libs.local.servers import NatsServer, free_port, port_is_free
from libs.testing.wait import eventually
from services.risk_gate.config import load_limits
from services.stack.supervisor import Backoff, Printer, ServiceSpec, Supervisor
from services.stack.wiring import CONFIG_DIR

CHAIN = [
    "SignalGenerated",
    "OrderIntentCreated",
    "RiskDecisionMade",
    "SubmitOrder",
    "OrderAccepted",
    "FillReceived",
]
#: Who must have published each link of a real chain (the source's service part).
CHAIN_SOURCES = {
    "SignalGenerated": "strategy-runner",
    "OrderIntentCreated": "strategy-runner",
    "RiskDecisionMade": "risk-gate",
    "SubmitOrder": "risk-gate",
    "OrderAccepted": "broker-gateway",
    "FillReceived": "broker-gateway",
}
SERVICES = {
    "recorder",
    "paper-broker",
    "broker-gateway",
    "risk-gate",
    "strategy-runner",
    "marketdata",
}
#: sma-aapl as in deploy/config/risk.yaml, with periods that cross every few
#: bars, on the 1-second bars of the demo feed.
FAST_STRATEGIES = """\
strategies:
  - name: sma-aapl
    kind: sma_crossover
    symbols: [AAPL]
    account: paper
    restart: always
    bar_interval: 1s
    params: {fast_period: 2, slow_period: 3, quantity: 10}
"""


# ------------------------------------------------------------------ helpers


def clean_env() -> dict[str, str]:
    """Our environment without NATS_URL, DATABASE_URL or any TRADEBUS_* setting."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("NATS_URL", "DATABASE_URL") and not k.startswith("TRADEBUS_")
    }


def checkout_path() -> dict[str, str]:
    """PYTHONPATH with this checkout first: run from another directory, ``python
    -m services.cli`` would otherwise import whichever tradebus is installed
    (an editable install of another worktree), not the code under test."""
    root = str(CONFIG_DIR.parents[1])
    return {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: [state, ppid, ...]."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    try:
        return stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children[int(stat_fields(int(entry.name))[1])].append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback URL we built
        return json.loads(r.read())


@dataclass
class Up:
    """One ``tradebus up`` run: its process, ports and output."""

    proc: asyncio.subprocess.Process
    home: Path
    log: Path
    database_url: str
    nats_url: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self) -> str:
        return self.output()[-4000:]

    def state(self) -> dict[str, Any] | None:
        path = self.home / "stack.json"
        return json.loads(path.read_text()) if path.exists() else None

    def check_running(self) -> None:
        if self.proc.returncode is not None:
            raise RuntimeError(f"tradebus up exited with {self.proc.returncode}:\n{self.tail()}")


async def start_up(
    tmp_path: Path,
    home: Path,
    run: str,
    *extra: str,
    env: dict[str, str] | None = None,
    python_args: tuple[str, ...] = ("-m", "services.cli"),
) -> Up:
    """``tradebus up`` as a process; ``python_args`` run it (by default, as the
    ``tradebus`` command does)."""
    nats_port, monitor_port, pg_port = free_port(), free_port(), free_port()
    log = tmp_path / f"up-{run}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *python_args, "up",
            "--home", str(home),
            "--nats-port", str(nats_port),
            "--nats-monitor-port", str(monitor_port),
            "--postgres-port", str(pg_port),
            "--metrics-port", "0",
            "--paper-port", "0",
            "--stop-timeout", "5",
            *extra,
            env={**clean_env(), "PYTHONUNBUFFERED": "1", **checkout_path(), **(env or {})},
            cwd=tmp_path,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    return Up(
        proc=proc,
        home=home,
        log=log,
        database_url=f"postgresql://postgres@127.0.0.1:{pg_port}/tradebus",
        nats_url=f"nats://127.0.0.1:{nats_port}",
    )


async def fetch(up: Up, sql: str, *args: object) -> list[asyncpg.Record] | None:
    """Rows, or None while the store is not there yet (starting, migrating)."""
    up.check_running()
    try:
        conn = await asyncpg.connect(up.database_url, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    try:
        return list(await conn.fetch(sql, *args))
    except asyncpg.PostgresError:
        return None
    finally:
        await conn.close()


def nats_passwords(up: Up) -> dict[str, str]:
    """The generated passwords, as ``up`` keeps them in its home."""
    passwords = json.loads((up.home / "credentials.json").read_text())["nats"]
    assert isinstance(passwords, dict)
    return passwords


async def cli(up: Up, *args: str, nats_user: str | None = None) -> tuple[int, str]:
    env = {**clean_env(), "DATABASE_URL": up.database_url, "NATS_URL": up.nats_url}
    if nats_user is not None:
        env["TRADEBUS_NATS_USER"] = nats_user
        env["TRADEBUS_NATS_PASSWORD"] = nats_passwords(up)[nats_user]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def sourced(env_file: Path, *args: str) -> tuple[int, str, str]:
    """A tradebus command run by a shell that first sources ``env_file``, in an
    environment without any NATS, database or TRADEBUS_* setting of ours."""
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", '. "$1" && shift && exec "$@"', "sourced", str(env_file),
        sys.executable, "-m", "services.cli", *args,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def stop(up: Up) -> tuple[int, set[int]]:
    """SIGINT, as Ctrl-C; returns the exit code and every process up had started."""
    tree = descendants(up.proc.pid)
    up.proc.send_signal(signal.SIGINT)
    code = await asyncio.wait_for(up.proc.wait(), timeout=120)
    return code, tree


async def kill_leftovers(up: Up) -> None:
    if up.proc.returncode is None:
        up.proc.kill()  # its keeper sees stdin close and stops the servers
        await up.proc.wait()


# -------------------------------------------------------------------- stack


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_up_runs_the_order_path_and_stops_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    strategies = tmp_path / "strategies.yaml"
    strategies.write_text(FAST_STRATEGIES)
    up = await start_up(tmp_path, home, "first", "--strategies", str(strategies))
    try:
        fill_rows = await eventually(
            lambda: fetch(
                up,
                "SELECT id FROM events WHERE type = 'FillReceived' "
                "AND source LIKE 'broker-gateway/%' ORDER BY seq LIMIT 1",
            ),
            timeout=240,
            interval=0.5,
            message=lambda: f"a FillReceived from the gateway in the store\n{up.tail()}",
        )
        fill_id = str(fill_rows[0]["id"])
        await eventually(lambda: "tradebus is up" in up.output(), timeout=120, message="banner")

        # The fill walks back to the strategy's signal, every link from the
        # service that owns it: the real path, not a stand-in.
        code, out = await cli(up, "audit", "--json", fill_id)
        assert code == 0, out
        chain = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert [e["type"] for e in chain] == CHAIN
        assert [e["source"].split("/")[0] for e in chain] == [CHAIN_SOURCES[t] for t in CHAIN]
        assert chain[0]["causation_id"] is None
        for parent, child in itertools.pairwise(chain[:5]):  # signal ... ack: one line
            assert child["causation_id"] == parent["id"]
        # The fill is the order's (the command's or its ack's) child.
        assert chain[5]["causation_id"] in {chain[3]["id"], chain[4]["id"]}
        assert {e["correlation_id"] for e in chain} == {chain[0]["id"]}
        assert chain[2]["payload"]["decision"] == "accepted"
        code, out = await cli(up, "audit", fill_id)
        assert code == 0, out
        assert fill_id in out

        # Every service answers /health; the servers are up's own children.
        state = up.state()
        assert state is not None
        assert set(state["services"]) == SERVICES
        for url in state["services"].values():
            health = await asyncio.to_thread(get_json, url)
            assert health["ok"] is True
        servers = state["servers"]
        assert set(servers) == {"nats", "postgres"}

        # Permissions are on: the passwords are the home's, private, never printed.
        passwords = nats_passwords(up)
        assert private(home / "credentials.json")
        assert private(home / "env")
        assert passwords["operator"] in (home / "env").read_text()
        # Sourced as the banner says, the env file is all `risk status` needs:
        # the stack's URLs and the limits its risk-gate runs with (no --config).
        code, out, errors = await sourced(home / "env", "risk", "status", "--json")
        assert code == 0, errors
        status = json.loads(out)
        limits = load_limits(CONFIG_DIR / "risk.yaml")
        assert set(status["strategies"]) == set(limits.strategies)
        assert set(status["accounts"]) == set(limits.accounts)
        output = up.output()
        for password in passwords.values():
            assert password not in output
        code, out = await cli(up, "kill-switch", "on", "--reason", "test", nats_user="risk-gate")
        assert code == 1, out  # only the operator may publish control.>

        # The kill switch, as the operator: from its sequence on, no order
        # command but those decided before it (in flight), and intents denied.
        code, out = await cli(
            up,
            "kill-switch",
            "on",
            "--reason",
            "test",
            "--operator",
            "tester",
            nats_user="operator",
        )
        assert code == 0, out
        engaged = await eventually(
            lambda: fetch(up, "SELECT seq FROM events WHERE type = 'KillSwitchEngaged'"),
            timeout=60,
            message="KillSwitchEngaged in the store",
        )
        ks_seq = engaged[0]["seq"]
        await eventually(
            lambda: fetch(
                up,
                "SELECT 1 FROM events WHERE type = 'RiskDecisionMade' AND seq > $1 "
                "AND payload->>'reason' = 'kill_switch'",
                ks_seq,
            ),
            timeout=90,
            interval=0.5,
            message="an intent denied for the kill switch",
        )
        after = await fetch(
            up,
            "SELECT o.seq, d.seq AS decided_at, d.payload->>'decision' AS decision "
            "FROM events o LEFT JOIN events d ON d.id = o.causation_id "
            "WHERE o.type = 'SubmitOrder' AND o.seq > $1",
            ks_seq,
        )
        assert after is not None
        late = [dict(r) for r in after if r["decided_at"] is None or r["decided_at"] > ks_seq]
        assert not late, late
        accepted_after = await fetch(
            up,
            "SELECT seq FROM events WHERE type = 'RiskDecisionMade' AND seq > $1 "
            "AND payload->>'decision' = 'accepted'",
            ks_seq,
        )
        assert accepted_after == []

        code, tree = await stop(up)
        output = up.output()
        assert code == 0, up.tail()
        assert set(servers.values()) <= tree
        await eventually(
            lambda: not [p for p in tree if alive(p)], timeout=30, message="children gone"
        )
        assert up.state() is None
        for expected in (
            "tradebus is up",
            up.nats_url,
            up.database_url,
            "/metrics",
            "/health",
            "events --limit 20",
            "audit <fill id>",
            "tradebus positions",
            "risk status",
            "kill-switch on --reason",
            f"psql '{up.database_url}'",
        ):
            assert expected in output, f"{expected!r} not in output:\n{output[-4000:]}"
        for name in SERVICES:
            assert any(
                line.startswith(f"{name} ") and " | " in line for line in output.splitlines()
            ), name
            assert f"{name} stopped" in output
        assert "exited unexpectedly" not in output
        assert output.index("marketdata stopped") < output.index("strategy-runner stopped")
        assert output.index("risk-gate stopped") < output.index("recorder stopped")
        assert output.index("recorder stopped") < output.index("postgres stopped")
    finally:
        await kill_leftovers(up)

    # Again on the same home with only two services: same credentials, and
    # the timeline continues.
    first_run_over = time.time_ns()
    again = await start_up(tmp_path, home, "second", "--only", "recorder,marketdata")
    try:
        await eventually(
            lambda: fetch(again, "SELECT 1 FROM events WHERE ts_init > $1 LIMIT 1", first_run_over),
            timeout=120,
            interval=0.5,
            message="events of the second run",
        )
        assert nats_passwords(again) == passwords
        rows = await fetch(
            again,
            "SELECT count(*) AS n, max(seq) AS last, "
            "count(*) FILTER (WHERE id::text = $1) AS first_fill FROM events",
            fill_id,
        )
        assert rows is not None
        assert rows[0]["first_fill"] == 1
        assert rows[0]["n"] == rows[0]["last"]  # one gapless timeline across both runs
        state = again.state()
        assert state is not None
        assert set(state["services"]) == {"recorder", "marketdata"}
        code, _ = await stop(again)
        assert code == 0, again.tail()
    finally:
        await kill_leftovers(again)


async def test_up_stops_when_a_service_refuses_its_settings(tmp_path: Path) -> None:
    """A bad TRADEBUS_* value makes the risk-gate exit 2; ``up`` stops the whole
    stack and exits 1 instead of restarting it for ever (the rest trading on
    without a gate)."""
    up = await start_up(
        tmp_path,
        tmp_path / "home",
        "refused",
        "--only",
        "recorder,risk-gate",
        env={"TRADEBUS_FETCH_BATCH": "0"},
    )
    try:
        code = await asyncio.wait_for(up.proc.wait(), timeout=120)
    finally:
        await kill_leftovers(up)
    text = up.output()
    assert code == 1, text[-4000:]
    assert "TRADEBUS_FETCH_BATCH" in text
    assert "risk-gate exited with exit code 2: it refused its configuration" in text
    assert "restarting in" not in text
    # The recorder is stopped with the rest: cleanly, or, when the gate's
    # refusal came while the recorder was still importing (before it handles
    # SIGTERM), by the signal itself. Which one is a race of start-up times.
    assert re.search(r"recorder stopped \((exit code 0|killed by SIGTERM)\)", text), text
    assert "stopping the servers" in text
    assert "!!! stopped because risk-gate exited with exit code 2" in text
    assert not (up.home / "stack.json").exists()


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


async def test_up_on_a_nats_of_the_environment_gives_the_paper_keys(tmp_path: Path) -> None:
    """With ``NATS_URL`` set (the machine's own nats-server), ``up`` still
    hands the paper broker and the gateway the paper account's keys, as it
    does with its own server. It used to hand them none: the paper broker
    exited 2 (TRADEBUS_PAPER_KEY_ID is not set) and the stack stopped."""
    with NatsServer(tmp_path / "nats") as nats:
        up = await start_up(
            tmp_path,
            tmp_path / "home",
            "nats-url",
            "--only",
            "paper-broker,broker-gateway",
            env={"NATS_URL": nats.url},
        )

        def trading() -> bool:
            up.check_running()  # a stack that stopped fails the test at once
            text = up.output()
            return "tradebus is up" in text and "broker paper connected" in text

        try:
            await eventually(
                trading,
                timeout=180,
                interval=0.5,
                message=up.tail,
            )
            code, _ = await stop(up)
        finally:
            await kill_leftovers(up)
    text = up.output()
    assert code == 0, text[-4000:]
    assert "refused its configuration" not in text


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
    with _home_lock(tmp_path, notes.append):
        assert servers.proc.poll() is not None, "the old keeper still runs its servers"
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
