"""The three books of the same fills and prices agree.

The store's read model (``positions_marked``), the risk-gate's state
(``evolve``: its per-strategy positions and marks) and a strategy's ledger
(``libs/strategy/ledger.py``) each compute positions and P&L from the same
fills and market prices. Random order flows (partial fills, flips through
zero, an option contract and its multiplier, commissions, trades and bars
in between, some of them late prints older than what came before them, the
last price of a symbol a trade, a bar or a fill) are given to all three,
and each position's quantity, average price, realized and unrealized P&L
must be the same in the three (to 1e-6: the views keep the average price
to 12 places, which moves a large option position's unrealized P&L by 1e-9).

Quotes of every symbol come in between (``quoted``), and after an option's
the mark marketdata makes of it, if any; the ledger is fed through the host
(``StrategyHost``), as the runner feeds it.
"""

from __future__ import annotations

import random
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from libs.contract.envelope import Event
from libs.contract.events import (
    BarClosed,
    BarPayload,
    FillPayload,
    FillReceived,
    QuotePayload,
    QuoteUpdated,
    SubmitOrder,
    SubmitOrderPayload,
    TradePayload,
    TradePrinted,
    contract_multiplier,
)
from libs.store.urls import asyncpg_url
from libs.strategy.base import Strategy, StrategyParams
from libs.strategy.host import StrategyHost
from services.marketdata.domain.marks import MarkPolicy, OptionMarks
from services.risk_gate.domain.evolve import evolve_all
from services.risk_gate.domain.state import RiskState
from tests.integration.recording import record_events

D = Decimal
S = 1_000_000_000
T0 = 1_773_154_800 * S
ACCOUNTS = ("acct-a", "acct-b")
STRATEGIES = ("s1", "s2")
SYMBOLS = ("AAPL", "MSFT", "O:SPY261218C00600000")
CLOSE = D("1e-6")


class At:
    """A clock that moves one second per event made (stopped: never moves)."""

    def __init__(self, ns: int = T0, step_ns: int = S) -> None:
        self.ns = ns
        self.step_ns = step_ns

    @classmethod
    def stopped(cls, ns: int) -> At:
        return cls(ns, 0)

    def now_ns(self) -> int:
        self.ns += self.step_ns
        return self.ns


def price(rng: random.Random, symbol: str) -> Decimal:
    step = D("0.05") if symbol.startswith("O:") else D("0.01")
    return (D(rng.randint(20, 400)) * step).quantize(step)


def trade(symbol: str, p: Decimal, clock: At, late_ns: int = 0) -> TradePrinted:
    """A trade made now, of ``late_ns`` ago when told (a late print)."""
    now = clock.now_ns()
    return TradePrinted.create(
        TradePayload(symbol=symbol, price=p, size=D(1), feed="polygon"),
        source="test",
        clock=At.stopped(now),
        ts_event=now - late_ns,
    )


def bar(symbol: str, p: Decimal, clock: At, late_ns: int = 0) -> BarClosed:
    """A bar closed now, or ``late_ns`` ago when told (made now all the same)."""
    now = clock.now_ns()
    end = now - late_ns
    return BarClosed.create(
        BarPayload(
            symbol=symbol,
            interval="1m",
            open=p,
            high=p,
            low=p,
            close=p,
            volume=D(1),
            start_ns=end - 60 * S,
            end_ns=end,
            feed="polygon",
        ),
        source="test",
        clock=At.stopped(now),
        ts_event=end,
    )


def market(rng: random.Random, symbol: str, clock: At) -> TradePrinted | BarClosed:
    """A trade or a bar's close, made after every event before it; one in
    four a late print, its market time up to two minutes before it was made
    (Polygon delivers trades out of sequence and reports some late), so it
    may be older than prices and fills recorded before it: it must move no
    mark back."""
    late_ns = rng.randint(1, 120) * S if rng.random() < 0.25 else 0
    return rng.choice((trade, bar))(symbol, price(rng, symbol), clock, late_ns)


def flow(rng: random.Random, clock: At) -> list[Event]:
    """Orders filled in parts at random prices, with trades and bars in
    between, and up to two trades or bars of a symbol after its last fill, a
    late one perhaps older than the other or the fill (a thin contract may
    have none: then its last fill's price marks it)."""
    events: list[Event] = []
    for _ in range(rng.randint(5, 40)):
        account, strategy = rng.choice(ACCOUNTS), rng.choice(STRATEGIES)
        symbol, side = rng.choice(SYMBOLS), rng.choice(("buy", "sell"))
        qty = rng.randint(1, 30)
        oid = uuid.uuid4()
        cmd = SubmitOrder.create(
            SubmitOrderPayload(
                order_id=oid,
                strategy=strategy,
                account=account,
                symbol=symbol,
                side=side,
                quantity=D(qty),
            ),
            source="test",
            clock=clock,
        )
        events.append(cmd)
        done = 0
        while done < qty:
            part = rng.randint(1, qty - done)
            done += part
            fill = FillPayload(
                order_id=oid,
                account=account,
                broker_order_id=f"b-{oid}",
                fill_id=f"{oid}:{done}",
                symbol=symbol,
                side=side,
                quantity=D(part),
                price=price(rng, symbol),
                cumulative_quantity=D(done),
                leaves_quantity=D(qty - done),
                status="complete" if done == qty else "partial",
                commission=rng.choice((D(0), D("0.65"), D("1.3"), D("0.005"))),
                strategy=strategy,
            )
            events.append(FillReceived.create(fill, source="test", clock=clock, cause=cmd))
            if rng.random() < 0.3:
                events.append(market(rng, symbol, clock))
    for symbol in SYMBOLS:  # none, or the last prices, one of them perhaps late
        events += [market(rng, symbol, clock) for _ in range(rng.randint(0, 2))]
    return events


class Then:
    """A clock stopped at one instant."""

    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


def quoted(rng: random.Random, events: list[Event]) -> list[Event]:
    """``events`` with quotes of their symbols in between (two-sided or not,
    narrow or wide), each a nanosecond or a few after the newest event before
    it, and after each option quote the mark marketdata makes of it, if any
    (none of a one-sided, crossed or too wide quote, nor of an unchanged one)."""
    marks = OptionMarks(MarkPolicy(min_interval_ns=0, max_standing_ns=0))
    out: list[Event] = []
    now = 0
    for event in events:
        out.append(event)
        now = max(now, event.ts_init)
        symbol = getattr(event.payload, "symbol", None)
        if symbol is None or rng.random() < 0.4:
            continue
        for _ in range(rng.randint(1, 3)):
            now += 1
            step = D("0.05") if symbol.startswith("O:") else D("0.01")
            bid = price(rng, symbol)
            ask = bid + rng.choice((-1, 0, 1, 2, 4, 400)) * step  # crossed ... far too wide
            quote = QuoteUpdated.create(
                QuotePayload(
                    symbol=symbol,
                    bid_price=bid,
                    bid_size=D(rng.choice((0, 5, 5, 5))),
                    ask_price=ask,
                    ask_size=D(5),
                    feed="polygon",
                ),
                source="test",
                clock=Then(now),
            )
            out.append(quote)
            mark = marks.on_quote(quote) if symbol.startswith("O:") else None
            if mark is not None and not isinstance(mark, str):
                out.append(mark)
    return out


Book = dict[tuple[str, str, str], tuple[Decimal, Decimal, Decimal, Decimal]]


def differences(a: Book, b: Book) -> dict[tuple[str, str, str], tuple[Any, Any]]:
    """The positions ``a`` and ``b`` do not agree on (by more than ``CLOSE``)."""
    return {
        k: (a.get(k), b.get(k))
        for k in a.keys() | b.keys()
        if k not in a
        or k not in b
        or any(abs(x - y) > CLOSE for x, y in zip(a[k], b[k], strict=True))
    }


class Idle(Strategy[StrategyParams]):
    """Does nothing: only its host's ledger is looked at."""


def ledgers(events: list[Event]) -> Book:
    """Each strategy's ledger (one per account it trades) fed the events as
    the runner feeds its host: its own fills, the others' fills of a symbol
    as marks (``Router.markers``, ``StrategyHost.mark_at_fill``) and every
    other event of its symbols."""
    hosts = {
        (a, s): StrategyHost(
            name=s, strategy=Idle, params={}, symbols=SYMBOLS, account=a, clock=Then(T0)
        )
        for a in ACCOUNTS
        for s in STRATEGIES
    }
    for e in events:
        if isinstance(e, FillReceived):
            assert e.payload.strategy is not None
            owner = (e.payload.account, e.payload.strategy)
            hosts[owner].restore(e)
            for key, host in hosts.items():
                if key != owner:
                    host.mark_at_fill(e)
        else:
            for host in hosts.values():
                host.restore(e)
    return {
        (account, strategy, symbol): (p.quantity, p.average_price, p.realized_pnl, p.unrealized_pnl)
        for (account, strategy), host in hosts.items()
        for symbol, p in host.ledger.positions.items()
    }


def risk_gate(events: list[Event]) -> Book:
    """The risk-gate's per-strategy positions, marked at its marks."""
    state = evolve_all(RiskState.initial(), events)
    out: Book = {}
    for (strategy, account, symbol), p in state.strategy_positions.items():
        mark = state.marks[symbol].price
        unrealized = (mark - p.avg_price) * p.quantity * contract_multiplier(symbol)
        out[(account, strategy, symbol)] = (p.quantity, p.avg_price, p.realized_total, unrealized)
    return out


async def store(database_url: str, events: list[Event]) -> Book:
    await record_events(database_url, events)
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        rows: list[Any] = await conn.fetch(
            "SELECT account, strategy, symbol, quantity, avg_price, realized_pnl, unrealized_pnl "
            "FROM positions_marked"
        )
    finally:
        await conn.close()
    return {
        (r["account"], r["strategy"], r["symbol"]): (
            r["quantity"],
            r["avg_price"],
            r["realized_pnl"],
            r["unrealized_pnl"],
        )
        for r in rows
    }


@pytest.mark.parametrize("seed", range(8))
async def test_the_store_the_risk_gate_and_the_ledger_agree(database_url: str, seed: int) -> None:
    rng = random.Random(seed)
    events = quoted(rng, flow(rng, At()))
    from_ledgers = ledgers(events)
    from_gate = risk_gate(events)
    from_store = await store(database_url, events)
    assert differences(from_gate, from_ledgers) == {}
    assert differences(from_store, from_gate) == {}
