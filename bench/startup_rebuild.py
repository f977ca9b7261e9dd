"""What a start-up costs the broker-gateway and the strategy-runner after a long history.

Both rebuild their state from the store on start-up. Until old finished
orders were left out (the gateway's ``rebuild_settled_s``, see
``services/broker_gateway/adapters/history.py``; the runner's
``rebuild_finished_s``, see ``services/strategy_runner/adapters/store.py``)
each read, decoded and folded every order ever placed, all held in memory at
once, so every restart took longer than the one before.

This fills a fresh store (its own PostgreSQL) with ``--orders`` orders placed
over ``--days`` days by four strategies, each a whole chain: the signal, the
intent, the risk-gate's decision and ``SubmitOrder``, and the
``OrderAccepted`` and ``FillReceived`` made by the gateway's own tracker;
every ``--open-every``-th order stays open. Then, for each service, each in
a fresh process (so that its peak memory is its own):

- the rebuild as before: every order read back (the baseline);
- the rebuild as the service does it now (the default window of 7 days).

Both must give the same state (checked: the gateway's open orders and
positions, the runner's positions, P&L and working intents). Progress goes
to stderr; stdout gets a table and, last, one JSON line with the figures and
their units.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from harness import Database, copy_events, say  # bench/harness.py

from libs.contract.envelope import Event
from libs.contract.events import (
    SubmitOrder,
)
from libs.local.servers import PostgresServer
from libs.runtime import run_service
from libs.strategy.runtime import InMemoryRuntime
from libs.strategy.testing import EchoStrategy, accept, market_intent, signal
from services.broker_gateway.adapters.history import order_path_history
from services.broker_gateway.config import GatewaySettings
from services.broker_gateway.domain.model import BrokerFill, BrokerOrder, OrderUpdate
from services.broker_gateway.domain.tracker import OrderTracker
from services.strategy_runner.adapters.store import load_history, write_checkpoints
from services.strategy_runner.config import RunnerSettings

ACCOUNT = "acct"
DAY_NS = 86_400 * 10**9
BATCH = 2_000  # orders per COPY
SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY")
STRATEGIES = ("s0", "s1", "s2", "s3")
SERVICES = ("broker-gateway", "strategy-runner")


class Clock:
    def __init__(self) -> None:
        self.t = 0

    def now_ns(self) -> int:
        return self.t


def _chain(i: int, at_ns: int) -> tuple[list[Event], SubmitOrder]:
    """A signal, its intent, the gate's decision and order."""
    cause = signal(STRATEGIES[i % 4], SYMBOLS[i % len(SYMBOLS)], at_ns=at_ns)
    made = market_intent(cause, ACCOUNT, "buy" if i % 2 else "sell", 10)
    decision, cmd = accept(made)
    return [cause, made, decision, cmd], cmd


def orders(
    count: int, days: int, open_every: int, now_ns: int, tag: str = ""
) -> Iterator[list[Event]]:
    """The history, ``BATCH`` orders at a time, as the services record it
    (``tag`` keeps the broker's order and execution ids of two calls apart)."""
    clock = Clock()
    tracker = OrderTracker(ACCOUNT, clock=clock, source="bench/broker-gateway")
    step = days * DAY_NS // count
    batch: list[Event] = []
    for i in range(count):
        clock.t = now_ns - days * DAY_NS + i * step
        events, cmd = _chain(i, clock.t)
        tracker.plan_submit(cmd)
        tracker.request(cmd.payload.order_id)
        p = cmd.payload
        o = BrokerOrder(f"b{tag}{i}", str(p.order_id), p.symbol, p.side, p.quantity, Decimal(0),
                        None, "accepted")  # fmt: skip
        batch += [*events, *tracker.submitted(p.order_id, o)]
        if i % open_every:
            price = Decimal(100 + i % 7)
            done = BrokerOrder(f"b{tag}{i}", str(p.order_id), p.symbol, p.side, p.quantity,
                               p.quantity, price, "filled")  # fmt: skip
            fill = BrokerFill(f"b{tag}{i}", str(p.order_id), p.symbol, p.side, p.quantity,
                              price, p.quantity, Decimal(0), clock.t, f"x{tag}{i}")  # fmt: skip
            batch += tracker.on_update(OrderUpdate("fill", done, clock.t, fill=fill))
        if i % BATCH == BATCH - 1:
            yield batch
            batch = []
    if batch:
        yield batch


#: What a rebuild returns: its counts by name, and the state it arrived at.
Result = tuple[dict[str, int], dict[str, Any]]


def _gateway(url: str, mode: str) -> Result:
    window = GatewaySettings().rebuild_settled_s
    history = run_service(
        order_path_history(
            url,
            [ACCOUNT],
            stream_last_seq=0,
            wait_s=0,
            pending_from_seq=1 << 62,
            settled_before_ns=0 if mode == "every" else time.time_ns() - int(window * 1e9),
        )
    )
    tracker = history.trackers([ACCOUNT], clock=Clock(), source="bench")[ACCOUNT]
    counts = {
        "events_read": len(history.events),
        "orders_held": len(tracker.orders),
        "orders_left_out": history.orders_left_out,
    }
    state = {
        "unsettled": sorted(str(t.order_id) for t in tracker.unsettled()),
        "positions": {f"{k[0]}/{k[1]}": str(v) for k, v in tracker.positions.items()},
    }
    return counts, state


def _runner(url: str, mode: str) -> Result:
    window = RunnerSettings().rebuild_finished_s
    history = run_service(
        load_history(
            url,
            list(STRATEGIES),
            list(SYMBOLS),
            finished_before_ns=0 if mode == "every" else time.time_ns() - int(window * 1e9),
            use_checkpoints=mode == "checkpoint",
        )
    )
    runtime = InMemoryRuntime()
    for name in STRATEGIES:
        runtime.add(name, EchoStrategy, symbols=SYMBOLS, account=ACCOUNT)
    folded = history.restore_into(runtime)
    if mode == "checkpoint":  # as the runner does at start-up (whatever --orders is)
        run_service(write_checkpoints(url, history, runtime, folded, after_fills=1))
    hosts = runtime.hosts.values()
    counts = {
        "events_read": len(history.events),
        "chains_read": len(
            {e.correlation_id for e in history.events if e.type == "SignalGenerated"}
        ),
        "working_intents": sum(len(h.intents) for h in hosts),
        "fills_folded": sum(folded.values()),
    }
    state = {
        h.name: {
            "positions": {s: repr(p) for s, p in sorted(h.ledger.positions.items())},
            "working": sorted(str(i) for i in h.intents._open),
        }
        for h in hosts
    }
    return counts, state


def child(service: str, url: str, mode: str) -> None:
    """One rebuild, in this process: its figures as one JSON line on stdout.

    Run as the services run it (``run_service``: uvloop, their collector
    settings)."""
    started = time.perf_counter()
    counts, state = (_gateway if service == SERVICES[0] else _runner)(url, mode)
    seconds = time.perf_counter() - started
    peak_kb = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    print(
        json.dumps(
            {"seconds": seconds, "peak_rss_mb": peak_kb / 1024, "counts": counts, "state": state}
        )
    )


@dataclass(frozen=True)
class Rebuild:
    """One rebuild's figures, as its process printed them."""

    seconds: float
    peak_rss_mb: float
    counts: dict[str, int]
    state: dict[str, Any]

    @property
    def events(self) -> int:
        return self.counts["events_read"]

    def figures(self) -> dict[str, object]:
        return {
            "seconds": round(self.seconds, 3),
            **self.counts,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


def rebuild_in_child(service: str, url: str, mode: str) -> Rebuild:
    args = [sys.executable, __file__, "--child", service, url, mode]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=3600)
    return Rebuild(**json.loads(out.stdout.splitlines()[-1]))


#: What each rebuild is, for the table and the JSON.
LABELS = {
    "every": ("every order", "every_order"),
    "window": ("old ones left out", "old_finished_left_out"),
    "checkpoint": ("from checkpoints", "from_checkpoints"),
}


def run(opts: argparse.Namespace) -> dict[str, dict[str, Rebuild]]:
    work = Path(tempfile.mkdtemp(prefix="tradebus-startup-rebuild-"))
    say(f"work directory {work}")
    pg = PostgresServer(work / "pg", fsync=False)
    pg.start()
    out: dict[str, dict[str, Rebuild]] = {}
    try:
        db = Database(pg)
        asyncio.run(db.migrate_template())
        url = asyncio.run(db.fresh("startup_rebuild"))
        say(f"filling the store with {opts.orders:,} orders over {opts.days} days")
        now_ns = time.time_ns() - DAY_NS
        history = orders(opts.orders, opts.days, opts.open_every, now_ns)
        end = asyncio.run(copy_events(url, history, 1))
        for service in SERVICES:
            say(f"{service}: rebuild reading every order back (as before)")
            every = rebuild_in_child(service, url, "every")
            say(f"{service}: rebuild leaving old finished orders out")
            now = rebuild_in_child(service, url, "window")
            assert now.state == every.state, f"{service}: the same state either way"
            assert now.events < every.events, f"{service}: old orders were left out"
            out[service] = {"every": every, "window": now}
        runner = SERVICES[1]
        say(f"{runner}: a start-up writing its checkpoints")
        rebuild_in_child(runner, url, "checkpoint")
        say(f"{opts.tail_orders:,} more orders over a day")
        tail = orders(opts.tail_orders, 1, opts.open_every, time.time_ns(), tag="t")
        asyncio.run(copy_events(url, tail, end))
        say(f"{runner}: the next start-up, from its checkpoints")
        from_cp = rebuild_in_child(runner, url, "checkpoint")
        reference = rebuild_in_child(runner, url, "window")
        assert from_cp.state == reference.state, "the same books from the checkpoints"
        assert from_cp.counts["fills_folded"] < reference.counts["fills_folded"]
        out[runner]["checkpoint"] = from_cp
    finally:
        pg.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000, help="orders in the history")
    parser.add_argument("--days", type=int, default=100, help="days they span")
    parser.add_argument("--open-every", type=int, default=500, help="every n-th order stays open")
    parser.add_argument(
        "--tail-orders", type=int, default=1_000, help="orders after the runner's checkpoints"
    )
    parser.add_argument(
        "--child", nargs=3, metavar=("SERVICE", "URL", "MODE"), help=argparse.SUPPRESS
    )
    opts = parser.parse_args()
    if opts.child:
        child(*opts.child)
        return
    results = run(opts)
    print(f"{'service':<17}{'rebuild':<22}{'seconds':>9}{'events read':>13}{'peak MB':>9}")
    result: dict[str, object] = {
        "orders": opts.orders,
        "days": opts.days,
        "tail_orders": opts.tail_orders,
        "units": {"time": "s", "memory": "MB"},
    }
    for service, rebuilds in results.items():
        every = rebuilds["every"]
        figures: dict[str, object] = {}
        for mode, r in rebuilds.items():
            label, key = LABELS[mode]
            print(f"{service:<17}{label:<22}{r.seconds:>9.2f}{r.events:>13,}{r.peak_rss_mb:>9.0f}")
            figures[key] = r.figures()
            if mode != "every":
                figures[f"{key}_time_ratio_vs_every_order"] = round(r.seconds / every.seconds, 4)
                figures[f"{key}_peak_rss_ratio_vs_every_order"] = round(
                    r.peak_rss_mb / every.peak_rss_mb, 3
                )
        result[service.replace("-", "_")] = figures
    print(json.dumps(result))


if __name__ == "__main__":
    main()
