"""What a risk-gate start-up costs: folding the store, from the start and from a checkpoint.

The risk-gate rebuilds its state on start-up (and after any fault) by
folding the recorded events through ``evolve``. A live feed records trades
and quotes all day, so a fold from the first event grows with every day the
store holds. With checkpoints (``services/risk_gate/adapters/checkpoint.py``)
a start-up folds only what came after the newest one.

This fills a fresh store (its own PostgreSQL) with ``--rows`` events the way
a live day looks to the gate: trades and quotes of four symbols (one trade
to two quotes; quotes the gate does not read), and every ``--order-every``
market events an intent that the gate's own ``decide`` accepts, its order and
a fill. Then it measures, on that store:

- a rebuild from the start (the baseline: what every start-up cost before
  checkpoints);
- writing a checkpoint of the result;
- after ``--tail-rows`` more events (the feed between two periodic
  checkpoints), a rebuild from the checkpoint, as a ratio against the
  baseline.

Both rebuilds must give the same state (checked). Progress goes to stderr;
stdout gets a table and, last, one JSON line with the figures and units.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import asyncpg
from harness import Database, copy_events, say  # bench/harness.py

from libs.contract.envelope import Event
from libs.contract.events import (
    FillPayload,
    FillReceived,
    OrderIntentCreated,
    OrderIntentPayload,
    QuotePayload,
    QuoteUpdated,
    SubmitOrder,
    TradePayload,
    TradePrinted,
)
from libs.local.servers import PostgresServer
from libs.store.urls import asyncpg_url
from libs.strategy.testing import At, ny_ns
from services.risk_gate.adapters import checkpoint
from services.risk_gate.adapters.store import rebuild
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.state import RiskState

SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY")
LIMITS = RiskLimits.model_validate(
    {
        "accounts": {"acct": {"daily_loss_limit": 10_000_000}},
        "strategies": {
            "s": {
                "account": "acct",
                "max_gross_notional": 10**12,
                "max_position": 10**9,
                "max_order_quantity": 1000,
                "max_order_notional": 10**9,
            }
        },
    }
)
COPY_BATCH = 20_000


class Feed:
    """Market data and order flow, in store order, with the gate's own state
    kept along (its decisions are real ``decide`` verdicts)."""

    def __init__(self, order_every: int, start_ns: int) -> None:
        self.order_every = order_every
        self.t = start_ns
        self.n = 0
        self.state = RiskState.initial(LIMITS)

    def _mark(self, e: Event) -> Event:
        self.state = evolve(self.state, e)
        return e

    def events(self, count: int) -> list[Event]:
        out: list[Event] = []
        while len(out) < count:
            self.n += 1
            self.t += 1_000_000  # a millisecond apart
            sym = SYMBOLS[self.n % len(SYMBOLS)]
            price = Decimal(10_000 + self.n % 97) / 100
            if self.n % 3 == 0:
                out.append(
                    self._mark(
                        TradePrinted.create(
                            TradePayload(
                                symbol=sym, price=price, size=Decimal(100), feed="polygon"
                            ),
                            source="bench/marketdata",
                            clock=At(self.t),
                        )
                    )
                )
            else:
                out.append(
                    QuoteUpdated.create(
                        QuotePayload(
                            symbol=sym,
                            bid_price=price,
                            bid_size=Decimal(1),
                            ask_price=price + Decimal("0.01"),
                            ask_size=Decimal(1),
                            feed="polygon",
                        ),
                        source="bench/marketdata",
                        clock=At(self.t),
                    )
                )
            if self.n % self.order_every == 0:
                out.extend(self._order(sym, price))
        return out

    def _order(self, sym: str, price: Decimal) -> list[Event]:
        intent = self._mark(
            OrderIntentCreated.create(
                OrderIntentPayload(
                    strategy="s",
                    account="acct",
                    symbol=sym,
                    side="buy" if self.n % 2 else "sell",
                    quantity=Decimal(10),
                ),
                source="bench/strategy-runner",
                clock=At(self.t),
            )
        )
        assert isinstance(intent, OrderIntentCreated)
        decision = decide(self.state, intent, self.t)
        out: list[Event] = [intent]
        for e in decision.events:
            out.append(self._mark(e))
        if isinstance(decision.order, SubmitOrder):
            p = decision.order.payload
            fill = FillReceived.create(
                FillPayload(
                    order_id=p.order_id,
                    account=p.account,
                    broker_order_id=uuid.uuid4().hex,
                    fill_id=uuid.uuid4().hex,
                    symbol=p.symbol,
                    side=p.side,
                    quantity=p.quantity,
                    price=price,
                    cumulative_quantity=p.quantity,
                    leaves_quantity=Decimal(0),
                    status="complete",
                    strategy=p.strategy,
                ),
                source="bench/broker-gateway",
                clock=At(self.t),
                cause=decision.order,
            )
            out.append(self._mark(fill))
        return out


async def fill_store(url: str, feed: Feed, rows: int, first_seq: int) -> int:
    """Append ``rows`` events of ``feed`` (COPY, in batches); the next seq."""
    done = 0

    def batches() -> Iterator[list[Event]]:
        nonlocal done
        while done < rows:
            batch = feed.events(min(COPY_BATCH, rows - done))
            done += len(batch)
            yield batch

    return await copy_events(url, batches(), first_seq)


def _progress(folded: int, seq: int, last: int) -> None:
    say(f"  folded {folded:,} events, at sequence {seq:,} of {last:,}")


async def run(opts: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="tradebus-risk-rebuild-"))
    say(f"work directory {work}")
    pg = PostgresServer(work / "pg", fsync=False)
    pg.start()
    try:
        db = Database(pg)
        await db.migrate_template()
        url = await db.fresh("risk_rebuild")
        feed = Feed(opts.order_every, ny_ns(dt.date(2026, 12, 4), 9, 30))
        say(f"filling the store with {opts.rows:,} events")
        next_seq = await fill_store(url, feed, opts.rows, 1)

        say("rebuild from the start (no checkpoint yet)")
        started = time.perf_counter()
        full = await rebuild(url, RiskState.initial(LIMITS), progress=_progress)
        full_s = time.perf_counter() - started
        assert full.from_checkpoint is None

        say("writing a checkpoint of it")
        conn = await asyncpg.connect(asyncpg_url(url))
        try:
            started = time.perf_counter()
            wrote = await checkpoint.write(
                conn, checkpoint.Checkpoint(full.last_seq, full.events, full.state)
            )
            write_s = time.perf_counter() - started
            assert wrote
            blob = int(await conn.fetchval("SELECT max(length(state)) FROM risk_checkpoints"))
        finally:
            await conn.close()

        say(f"{opts.tail_rows:,} more events, then a rebuild from the checkpoint")
        await fill_store(url, feed, opts.tail_rows, next_seq)
        started = time.perf_counter()
        tail = await rebuild(url, RiskState.initial(LIMITS))
        tail_s = time.perf_counter() - started
        assert tail.from_checkpoint == full.last_seq
        # What folding every event in memory gives.
        assert tail.state == feed.state, "the rebuild from the checkpoint is the whole fold"
    finally:
        pg.stop()
    return {
        "rows": opts.rows,
        "tail_rows": opts.tail_rows,
        "events_folded_full": full.folded,
        "events_folded_from_checkpoint": tail.folded,
        "full_rebuild_s": round(full_s, 3),
        "full_rebuild_us_per_row": round(full_s / opts.rows * 1e6, 2),
        "checkpoint_write_s": round(write_s, 3),
        "checkpoint_bytes": blob,
        "rebuild_from_checkpoint_s": round(tail_s, 3),
        "ratio_vs_full": round(tail_s / full_s, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="events in the store")
    parser.add_argument("--tail-rows", type=int, default=20_000, help="events after the checkpoint")
    parser.add_argument("--order-every", type=int, default=500, help="market events per order")
    opts = parser.parse_args()
    figures = asyncio.run(run(opts))
    f = figures
    print(f"store of {f['rows']:,} events ({f['events_folded_full']:,} the gate reads)")
    print(f"  rebuild from the start         {f['full_rebuild_s']:8.2f} s")
    print(f"  checkpoint written in          {f['checkpoint_write_s']:8.2f} s")
    print(f"  checkpoint size                {f['checkpoint_bytes']:8,} bytes")
    print(f"  {f['tail_rows']:,} events later, rebuild from the checkpoint")
    print(f"                                 {f['rebuild_from_checkpoint_s']:8.2f} s")
    print(f"  ratio against from the start   {f['ratio_vs_full']:8.4f}")
    print(json.dumps({"units": {"time": "s", "size": "bytes"}, **figures}))


if __name__ == "__main__":
    main()
