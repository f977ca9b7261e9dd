"""The two chains ``bench/order_path.py`` measures, each hop its own OS
process: the real services (``RealChain``) and the no-logic relays of
``bench/relay.py`` (``FloorChain``); their configuration, start-up,
readiness and stop.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import Children  # bench/harness.py

from libs import trace
from libs.local.servers import free_port
from libs.testing.procs import ServiceProcess

HERE = Path(__file__).resolve().parent
RELAY = HERE / "relay.py"
ACCOUNT = "paper"
STRATEGY = "bench"
KEYS = {"BENCH_PAPER_KEY_ID": "bench-key", "BENCH_PAPER_SECRET_KEY": "bench-secret"}

#: Named timeouts (seconds).
READY_TIMEOUT = 90.0

RISK_YAML = f"""
max_intent_age_s: 30
accounts:
  {ACCOUNT}:
    daily_loss_limit: "1000000000"
    rate_limit: {{max_orders: 1000000, per_seconds: 1}}
    flatten_on_disconnect: false
strategies:
  {STRATEGY}:
    account: {ACCOUNT}
    max_gross_notional: "1000000000000"
    max_position: 100000000
    max_order_quantity: 1000
    max_order_notional: "100000000"
    rate_limit: {{max_orders: 1000000, per_seconds: 1}}
"""

STRATEGIES_YAML = f"""
strategies:
  - name: {STRATEGY}
    kind: libs.strategy.testing:EchoStrategy
    symbols: [AAPL]
    account: {ACCOUNT}
    inbox_size: 100000
    overflow: block
    params: {{quantity: 1}}
"""


def paper_yaml(work: Path) -> str:
    return f"""
accounts:
  {ACCOUNT}:
    key_id_env: BENCH_PAPER_KEY_ID
    secret_key_env: BENCH_PAPER_SECRET_KEY
fill_model:
  max_fill_quantity: "1000"
max_order_quantity: "100000"
journal: {work / "journal.jsonl"}
journal_fsync: false
"""


def brokers_yaml(port: int) -> str:
    return f"""
accounts:
  {ACCOUNT}:
    adapter: paper
    url: ws://127.0.0.1:{port}/stream
    credentials:
      key_id_env: BENCH_PAPER_KEY_ID
      secret_key_env: BENCH_PAPER_SECRET_KEY
"""


class Chain:
    """One chain's processes: started, checked for readiness, stopped."""

    name = ""

    def __init__(
        self,
        work: Path,
        nats_url: str,
        database_url: str,
        servers: dict[str, tuple[int, bool]],
        label: str = "",
        *,
        trace_dir: Path | None = None,
    ) -> None:
        self.work = work / f"{self.name}{label}"
        self.work.mkdir(parents=True, exist_ok=True)
        #: Where the services write their hop marks (``--trace``), if anywhere.
        self.trace_dir = trace_dir
        self.nats_url = nats_url
        self.database_url = database_url
        self.children = Children()
        self.services: list[ServiceProcess] = []
        #: Every process of the chain by name, for CPU per order: name -> (pid, tree).
        self.processes: dict[str, tuple[int, bool]] = dict(servers)

    def service(self, args: list[str], name: str, **env: str) -> ServiceProcess:
        if self.trace_dir is not None:
            env[trace.ENV] = str(self.trace_dir)
        svc = ServiceProcess(
            args,
            env={"NATS_URL": self.nats_url, "DATABASE_URL": self.database_url, **KEYS, **env},
            log_path=self.work / f"{name}.log",
            name=f"bench-{name}",
        ).start()
        assert svc.proc is not None
        self.processes[name] = (svc.proc.pid, False)
        self.services.append(self.children.add_service(svc))
        return svc

    async def start(self) -> None:
        raise NotImplementedError

    def check_alive(self) -> None:
        for svc in self.services:
            if not svc.alive:
                raise RuntimeError(f"{svc.log_path.name} exited:\n{svc.log_text()[-3000:]}")

    def stop(self) -> None:
        self.children.stop_all()


async def wait_until(what: str, check: Callable[[], Any], chain: Chain) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not check():
        chain.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{chain.name}: {what} not ready in {READY_TIMEOUT}s")
        await asyncio.sleep(0.1)  # polling readiness, not synchronisation


class RealChain(Chain):
    name = "real"

    async def start(self) -> None:
        (self.work / "risk.yaml").write_text(RISK_YAML)
        (self.work / "strategies.yaml").write_text(STRATEGIES_YAML)
        (self.work / "paper.yaml").write_text(paper_yaml(self.work))
        port = free_port()
        (self.work / "brokers.yaml").write_text(brokers_yaml(port))
        recorder = self.service(["recorder", "run"], "recorder")
        paper = self.service(
            ["paper-broker", "run", "--config", str(self.work / "paper.yaml"), "--port", str(port)],
            "paper-broker",
        )
        gateway = self.service(
            ["broker-gateway", "run", "--config", str(self.work / "brokers.yaml")], "gateway"
        )
        gate = self.service(["risk-gate", "run", "--config", str(self.work / "risk.yaml")], "gate")
        runner = self.service(
            ["strategy-runner", "run", "--config", str(self.work / "strategies.yaml")], "runner"
        )
        for svc in (recorder, paper, gate, runner):
            await wait_until(svc.log_path.name, svc.healthy, self)

        def connected() -> bool:
            health = gateway.health()
            return bool(health and health["accounts"][ACCOUNT]["connected"])

        await wait_until("gateway connection", connected, self)


class FloorChain(Chain):
    name = "floor"

    async def relay(self, *args: str) -> None:
        log = (self.work / f"relay-{args[0]}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(RELAY), *args, "--nats", self.nats_url,
            stdout=asyncio.subprocess.PIPE, stderr=log,
        )  # fmt: skip
        log.close()
        self.children.add(proc)
        self.processes[f"relay-{args[0]}"] = (proc.pid, False)
        assert proc.stdout is not None
        async with asyncio.timeout(READY_TIMEOUT):
            line = await proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"relay {args[0]} did not start (see {self.work})")

    async def start(self) -> None:
        recorder = self.service(["recorder", "run"], "recorder")
        port = free_port()
        await self.relay("echo", "--port", str(port))
        await self.relay("gateway", "--ws", f"ws://127.0.0.1:{port}")
        await self.relay("risk")
        await self.relay("strategy")
        await wait_until("recorder", recorder.healthy, self)
