"""What a broker-gateway start-up costs with a long history behind it.

The gateway rebuilds its order trackers from the store on start-up. Until
settled orders were left out (``rebuild_settled_s``, see
``services/broker_gateway/adapters/history.py``) it read, decoded and folded
every order the account ever placed, all held in memory at once, so every
restart took longer than the one before.

This fills a fresh store (its own PostgreSQL) with ``--orders`` orders placed
over ``--days`` days, each a ``SubmitOrder``, an ``OrderAccepted`` and a
``FillReceived`` made by the gateway's own tracker, with every
``--open-every``-th order left open; the last day's orders are recent. Then,
each in a fresh process (so that its peak memory is its own):

- the rebuild as before: every order read back (the baseline);
- the rebuild as the gateway does it now (the default window of 7 days).

Both must give the same open orders and positions (checked). Progress goes
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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from harness import Database, copy_events, say  # bench/harness.py

from libs.contract.envelope import Event
from libs.contract.events import SubmitOrder, SubmitOrderPayload
from libs.local.servers import PostgresServer
from libs.strategy.testing import At
from services.broker_gateway.adapters.history import order_path_history
from services.broker_gateway.config import GatewaySettings
from services.broker_gateway.domain.model import BrokerFill, BrokerOrder, OrderUpdate
from services.broker_gateway.domain.tracker import OrderTracker

ACCOUNT = "acct"
DAY_NS = 86_400 * 10**9
BATCH = 3_000  # orders per COPY
SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY")


class Clock:
    def __init__(self) -> None:
        self.t = 0

    def now_ns(self) -> int:
        return self.t


def orders(count: int, days: int, open_every: int, now_ns: int) -> Iterator[list[Event]]:
    """The history, ``BATCH`` orders at a time, as the tracker records it."""
    clock = Clock()
    tracker = OrderTracker(ACCOUNT, clock=clock, source="bench/broker-gateway")
    step = days * DAY_NS // count
    batch: list[Event] = []
    for i in range(count):
        clock.t = now_ns - days * DAY_NS + i * step
        cmd = SubmitOrder.create(
            SubmitOrderPayload(
                order_id=uuid.uuid4(),
                strategy=f"s{i % 4}",
                account=ACCOUNT,
                symbol=SYMBOLS[i % len(SYMBOLS)],
                side="buy" if i % 2 else "sell",
                quantity=Decimal(10),
            ),
            source="bench/risk-gate",
            clock=At(clock.t),
        )
        tracker.plan_submit(cmd)
        tracker.request(cmd.payload.order_id)
        p = cmd.payload
        o = BrokerOrder(f"b{i}", str(p.order_id), p.symbol, p.side, p.quantity, Decimal(0),
                        None, "accepted")  # fmt: skip
        batch += [cmd, *tracker.submitted(p.order_id, o)]
        if i % open_every:
            done = BrokerOrder(f"b{i}", str(p.order_id), p.symbol, p.side, p.quantity,
                               p.quantity, Decimal(100), "filled")  # fmt: skip
            fill = BrokerFill(f"b{i}", str(p.order_id), p.symbol, p.side, p.quantity,
                              Decimal(100), p.quantity, Decimal(0), clock.t, f"x{i}")  # fmt: skip
            batch += tracker.on_update(OrderUpdate("fill", done, clock.t, fill=fill))
        if len(batch) >= 3 * BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def child(url: str, keep_all: bool) -> None:
    """One rebuild, in this process: its figures as one JSON line on stdout."""
    window = GatewaySettings().rebuild_settled_s
    started = time.perf_counter()
    history = asyncio.run(
        order_path_history(
            url,
            [ACCOUNT],
            stream_last_seq=0,
            wait_s=0,
            pending_from_seq=1 << 62,
            settled_before_ns=0 if keep_all else time.time_ns() - int(window * 1e9),
        )
    )
    read_s = time.perf_counter() - started
    tracker = history.trackers([ACCOUNT], clock=Clock(), source="bench")[ACCOUNT]
    seconds = time.perf_counter() - started
    peak_kb = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    print(
        json.dumps(
            {
                "seconds": seconds,
                "read_and_decode_s": read_s,
                "events": len(history.events),
                "orders_held": len(tracker.orders),
                "orders_left_out": history.orders_left_out,
                "peak_rss_mb": peak_kb / 1024,
                "unsettled": sorted(str(t.order_id) for t in tracker.unsettled()),
                "positions": {f"{k[0]}/{k[1]}": str(v) for k, v in tracker.positions.items()},
            }
        )
    )


@dataclass(frozen=True)
class Rebuild:
    """One rebuild's figures, as its process printed them."""

    seconds: float
    read_and_decode_s: float
    events: int
    orders_held: int
    orders_left_out: int
    peak_rss_mb: float
    unsettled: list[str]
    positions: dict[str, str]

    def figures(self) -> dict[str, object]:
        return {
            "seconds": round(self.seconds, 3),
            "read_and_decode_s": round(self.read_and_decode_s, 3),
            "events": self.events,
            "orders_held": self.orders_held,
            "orders_left_out": self.orders_left_out,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


def rebuild_in_child(url: str, keep_all: bool) -> Rebuild:
    args = [sys.executable, __file__, "--child", url] + (["--keep-all"] if keep_all else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=3600)
    return Rebuild(**json.loads(out.stdout.splitlines()[-1]))


async def fill(opts: argparse.Namespace, db: Database) -> str:
    url = await db.fresh("gateway_rebuild")
    say(f"filling the store with {opts.orders:,} orders over {opts.days} days")
    await copy_events(url, orders(opts.orders, opts.days, opts.open_every, time.time_ns()), 1)
    return url


def run(opts: argparse.Namespace) -> tuple[Rebuild, Rebuild]:
    work = Path(tempfile.mkdtemp(prefix="tradebus-gateway-rebuild-"))
    say(f"work directory {work}")
    pg = PostgresServer(work / "pg", fsync=False)
    pg.start()
    try:
        db = Database(pg)
        asyncio.run(db.migrate_template())
        url = asyncio.run(fill(opts, db))
        say("rebuild reading every order back (as before)")
        every = rebuild_in_child(url, keep_all=True)
        say("rebuild leaving old settled orders out (as now)")
        now = rebuild_in_child(url, keep_all=False)
    finally:
        pg.stop()
    assert now.unsettled == every.unsettled, "the same open orders"
    assert now.positions == every.positions, "the same positions"
    assert every.orders_left_out == 0, "the baseline reads every order"
    assert now.orders_left_out > 0, "old settled orders were left out"
    return every, now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000, help="orders in the history")
    parser.add_argument("--days", type=int, default=100, help="days they span")
    parser.add_argument("--open-every", type=int, default=500, help="every n-th order stays open")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--keep-all", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        child(opts.child, opts.keep_all)
        return
    every, now = run(opts)
    print(f"{'rebuild':<28}{'seconds':>10}{'events':>10}{'orders held':>13}{'peak MB':>10}")
    for label, r in (("every order read back", every), ("old settled orders left out", now)):
        print(
            f"{label:<28}{r.seconds:>10.2f}{r.events:>10,}"
            f"{r.orders_held:>13,}{r.peak_rss_mb:>10.0f}"
        )
    result = {
        "orders": opts.orders,
        "days": opts.days,
        "open_orders": len(now.unsettled),
        "units": {"time": "s", "memory": "MB"},
        "every_order": every.figures(),
        "settled_left_out": now.figures(),
        "time_ratio_vs_every_order": round(now.seconds / every.seconds, 4),
        "peak_rss_ratio_vs_every_order": round(now.peak_rss_mb / every.peak_rss_mb, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
