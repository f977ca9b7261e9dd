"""``tradebus up`` end to end, and its process supervisor on its own.

The stack test runs ``python -m services.cli up`` as a real process with
NATS_URL / DATABASE_URL unset, so it starts its own nats-server and
PostgreSQL on ports the test chose, and checks what an operator would see.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import signal
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from libs.local.servers import free_port
from libs.testing.wait import eventually
from services.stack.banner import mask_password
from services.stack.supervisor import Backoff, Printer, ServiceSpec, Supervisor

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc"
)

CHAIN = [
    "SignalGenerated",
    "OrderIntentCreated",
    "RiskDecisionMade",
    "SubmitOrder",
    "OrderAccepted",
    "FillReceived",
]


# ------------------------------------------------------------------ helpers


def clean_env() -> dict[str, str]:
    """Our environment without NATS_URL, DATABASE_URL or any TRADEBUS_* setting."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("NATS_URL", "DATABASE_URL") and not k.startswith("TRADEBUS_")
    }


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


async def start_up(tmp_path: Path, home: Path, run: str) -> Up:
    nats_port, monitor_port, pg_port = free_port(), free_port(), free_port()
    log = tmp_path / f"up-{run}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "up",
            "--home", str(home),
            "--nats-port", str(nats_port),
            "--nats-monitor-port", str(monitor_port),
            "--postgres-port", str(pg_port),
            "--metrics-port", "0",
            "--demo-rate", "50/s",
            env={**clean_env(), "PYTHONUNBUFFERED": "1"},
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


async def cli(up: Up, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args,
        env={**clean_env(), "DATABASE_URL": up.database_url, "NATS_URL": up.nats_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


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


async def test_up_runs_the_stack_and_stops_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    up = await start_up(tmp_path, home, "first")
    try:
        fill_rows = await eventually(
            lambda: fetch(up, "SELECT id FROM events WHERE type = 'FillReceived' ORDER BY seq"),
            timeout=180,
            interval=0.25,
            message="a FillReceived in the store",
        )
        fill_id = str(fill_rows[0]["id"])
        await eventually(lambda: "tradebus is up" in up.output(), timeout=60, message="banner")

        # The read commands, against the stack's own database.
        code, out = await cli(up, "events", "--json", "--limit", "5")
        assert code == 0, out
        listed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert [e["seq"] for e in listed] == [1, 2, 3, 4, 5]
        assert listed[0]["type"] == "TradePrinted"
        assert listed[0]["payload"]["feed"] == "demo"
        assert listed[0]["source"] == "demo/marketdata"

        code, out = await cli(up, "audit", fill_id)
        assert code == 0, out
        positions = [out.index(t) for t in CHAIN]
        assert positions == sorted(positions), out
        assert fill_id in out

        code, out = await cli(up, "audit", "--json", fill_id)
        assert code == 0, out
        chain = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert [e["type"] for e in chain] == CHAIN
        assert chain[0]["causation_id"] is None
        for parent, child in itertools.pairwise(chain):
            assert child["causation_id"] == parent["id"]
            assert child["correlation_id"] == chain[0]["id"]

        # Every service answers /health; the servers are up's own children.
        state = up.state()
        assert state is not None
        assert set(state["services"]) == {"recorder", "demo"}
        for name, url in state["services"].items():
            health = await asyncio.to_thread(get_json, url)
            assert health["ok"] is True
            assert health["service"] == name
        servers = state["servers"]
        assert set(servers) == {"nats", "postgres"}

        code, tree = await stop(up)
        output = up.output()
        assert code == 0, up.tail()
        assert set(servers.values()) <= tree
        await eventually(
            lambda: not [p for p in tree if alive(p)], timeout=10, message="children gone"
        )
        assert up.state() is None
        for expected in (
            "tradebus is up",
            up.nats_url,
            up.database_url,
            "/metrics",
            "/health",
            "events --limit 20",
            "audit <id>",
            f"psql '{up.database_url}'",
        ):
            assert expected in output, f"{expected!r} not in output:\n{output[-4000:]}"
        assert "recorder | " in output
        assert "demo     | " in output
        assert "exited unexpectedly" not in output
        assert output.index("demo stopped") < output.index("recorder stopped")
        assert output.index("recorder stopped") < output.index("postgres stopped")
        assert (home / "env").read_text().count("export") == 2
    finally:
        await kill_leftovers(up)

    # A second run reuses the data directories: the timeline continues.
    first_run_over = time.time_ns()
    again = await start_up(tmp_path, home, "second")
    try:
        await eventually(
            lambda: fetch(again, "SELECT 1 FROM events WHERE ts_init > $1 LIMIT 1", first_run_over),
            timeout=120,
            interval=0.25,
            message="events of the second run",
        )
        rows = await fetch(
            again,
            "SELECT count(*) AS n, max(seq) AS last, "
            "count(*) FILTER (WHERE id = $1) AS first_fill FROM events",
            uuid.UUID(fill_id),
        )
        assert rows is not None
        assert rows[0]["first_fill"] == 1
        assert rows[0]["n"] == rows[0]["last"]  # one gapless timeline across both runs
        code, _ = await stop(again)
        assert code == 0, again.tail()
    finally:
        await kill_leftovers(again)


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


def test_backoff_grows_to_its_cap() -> None:
    b = Backoff(initial=0.5, factor=2, cap=4)
    assert [b.delay(n, jitter=lambda: 0.5) for n in range(6)] == [0.5, 1, 2, 4, 4, 4]
    assert b.delay(0, jitter=lambda: 0.0) == pytest.approx(0.4)
    assert b.delay(0, jitter=lambda: 1.0) == pytest.approx(0.6)


def test_banner_never_shows_a_password() -> None:
    assert mask_password("postgresql://u:s3cret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert mask_password("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
