"""The paper broker's books under random order flow.

Two accounts, two symbols, every order type and time in force, partial fills
and slippage, cancels, cancel-all and close-all, against a wandering market.
After each run the books must add up, and replaying the journal's updates
(what a restart does) must give the same books.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from decimal import Decimal

import orjson
import pytest

from services.paper_broker.adapters import wire
from services.paper_broker.domain.book import (
    BookConfig,
    OrderSpec,
    PaperBook,
    Refused,
    TradeUpdate,
)
from services.paper_broker.domain.fill_model import FillModelConfig, MarketUpdate

SYMBOLS = ("AAA", "BBB")
ACCOUNTS = ("x", "y")
CENT = Decimal("0.01")


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000_000_000_000

    def now_ns(self) -> int:
        return self.t


def run(seed: int) -> tuple[PaperBook, list[TradeUpdate], BookConfig]:
    rng = random.Random(seed)
    clock = Clock()
    ids = itertools.count()
    config = BookConfig(
        fill_model=FillModelConfig(
            slippage_bps=Decimal(rng.choice([0, 5, 13])),
            max_fill_quantity=rng.choice([None, Decimal(7), Decimal("2.5")]),
            price_decimals=rng.choice([2, 4]),
        )
    )
    book = PaperBook(config, clock=clock, ids=lambda: f"o{next(ids)}")
    last = dict.fromkeys(SYMBOLS, Decimal("100.00"))
    updates: list[TradeUpdate] = []
    for s in SYMBOLS:
        updates += book.on_market(MarketUpdate.trade(s, last[s], clock.t))
    for step in range(150):
        clock.t += 1_000_000_000
        roll = rng.random()
        account = rng.choice(ACCOUNTS)
        try:
            if roll < 0.35:
                s = rng.choice(SYMBOLS)
                kind = rng.choice(["market", "limit", "stop", "stop_limit"])
                price = (last[s] * Decimal(rng.uniform(0.97, 1.03))).quantize(CENT)
                spec = OrderSpec(
                    symbol=s,
                    side=rng.choice(["buy", "sell"]),
                    qty=Decimal(rng.choice(["1", "3", "10", "0.5", "17"])),
                    order_type=kind,  # type: ignore[arg-type]
                    time_in_force=rng.choice(
                        ["day", "ioc"] if kind == "market" else ["day", "gtc", "ioc"]
                    ),
                    limit_price=price if "limit" in kind else None,
                    stop_price=price if "stop" in kind else None,
                    # Now and then a client order id used before: a repeat.
                    client_order_id=f"c{step}" if rng.random() < 0.9 else "c0",
                )
                updates += book.submit(account, spec)[1]
            elif roll < 0.8:
                s = rng.choice(SYMBOLS)
                moved = last[s] * Decimal(rng.uniform(0.98, 1.02))
                last[s] = max(CENT, moved.quantize(CENT))
                updates += book.on_market(MarketUpdate.trade(s, last[s], clock.t))
            elif roll < 0.88:
                working = book.orders(account, "open")
                if working:
                    updates += book.cancel(account, rng.choice(working).id)
            elif roll < 0.93:
                updates += book.cancel_all(account)[1]
            else:
                updates += book.close_all(account)[1]
        except Refused:
            pass  # the broker said no (a repeat with other terms, a cancel too late)
    return book, updates, config


@pytest.mark.parametrize("seed", range(0, 200, 10))
def test_the_books_add_up_and_the_journal_rebuilds_them(seed: int) -> None:
    for s in range(seed, seed + 10):
        book, updates, config = run(s)
        fills_seen = 0
        for account in ACCOUNTS:
            fills = book.fills(account)
            fills_seen += len(fills)
            net: dict[str, Decimal] = defaultdict(Decimal)
            for f in fills:
                net[f.symbol] += f.qty if f.side == "buy" else -f.qty
            held = {p.symbol: p.qty for p in book.positions(account)}
            assert held == {k: v for k, v in net.items() if v != 0}, (s, account)
            for o in book.orders(account, "all"):
                mine = sum((f.qty for f in fills if f.order_id == o.id), Decimal(0))
                assert mine == o.filled_qty <= o.qty, (s, o.id)
                assert (o.status == "filled") == (o.filled_qty == o.qty), (s, o.id)
        assert fills_seen > 0, s  # the run did trade

        replay = PaperBook(config, clock=Clock(), ids=lambda: "unused")
        for u in updates:
            record = orjson.loads(orjson.dumps(wire.journal_record(u, wire.trade_update_json(u))))
            replay.apply(wire.trade_update_from_record(record))
        for account in ACCOUNTS:

            def positions(b: PaperBook, a: str = account) -> set[tuple[str, Decimal, Decimal]]:
                return {(p.symbol, p.qty, p.avg_entry_price) for p in b.positions(a)}

            def orders(b: PaperBook, a: str = account) -> set[tuple[str, str, Decimal]]:
                return {(o.id, o.status, o.filled_qty) for o in b.orders(a, "all")}

            assert positions(replay) == positions(book), (s, account)
            assert orders(replay) == orders(book), (s, account)
