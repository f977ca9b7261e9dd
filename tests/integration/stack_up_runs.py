"""``tradebus up`` as a real process, for the test_stack_up* tests: started with
NATS_URL / DATABASE_URL unset, so that it starts its own nats-server and
PostgreSQL on ports the test chose; its store read, its CLI run, its
processes found and stopped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from libs.local.servers import free_port
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
