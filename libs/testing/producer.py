"""A load producer: publishes N valid events as fast as JetStream acks them.

Run as a process (``python -m libs.testing.producer --nats URL --count N``)
so that tests and benchmarks have several real, independent publishers.
Prints one JSON line with its count and rate when done.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

from libs.bus.client import Bus, Outgoing
from libs.contract.envelope import Clock, WallClock
from libs.contract.events import SubmitOrder, SubmitOrderPayload, TradePayload, TradePrinted

SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY", "QQQ", "AMZN", "TSLA", "META")


def make_trades(count: int, source: str, start: int = 0) -> Iterator[TradePrinted]:
    """``count`` distinct, valid trade events (deterministic prices)."""
    clock = WallClock()
    for i in range(start, start + count):
        yield TradePrinted.create(
            TradePayload(
                symbol=SYMBOLS[i % len(SYMBOLS)],
                price=Decimal(100) + Decimal(i % 1000) / 100,
                size=Decimal(1 + i % 500),
                exchange=4,
                trade_id=f"{source}-{i}",
                sequence=i,
                feed="synthetic",
            ),
            source=source,
            clock=clock,
        )


def make_submit_order(
    account: str,
    *,
    strategy: str = "s1",
    quantity: Decimal = Decimal(10),
    source: str = "test",
    clock: Clock | None = None,
) -> SubmitOrder:
    """A valid order command with fresh ids: buy ``quantity`` AAPL at market."""
    return SubmitOrder.create(
        SubmitOrderPayload(
            order_id=uuid.uuid4(),
            intent_id=uuid.uuid4(),
            strategy=strategy,
            account=account,
            symbol="AAPL",
            side="buy",
            quantity=quantity,
        ),
        source=source,
        clock=clock or WallClock(),
    )


async def produce(url: str, count: int, source: str, window: int) -> dict[str, float]:
    events = [Outgoing.of(e) for e in make_trades(count, source)]
    async with await Bus.connect(url, name=f"producer/{source}") as bus:
        started = time.perf_counter()
        sent = await bus.publish_many(events, window=window)
        elapsed = time.perf_counter() - started
    return {"count": sent, "seconds": elapsed, "events_per_s": sent / elapsed if elapsed else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nats", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--source", default=f"producer-{uuid.uuid4().hex[:6]}")
    ap.add_argument("--window", type=int, default=2048)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(produce(args.nats, args.count, args.source, args.window))))


if __name__ == "__main__":
    main()
