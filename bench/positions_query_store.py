"""The store ``bench/positions_query.py`` reads: market events made in SQL as
a feed records them (equities' and option contracts' trades, quotes, bars
and marks, in the shares ``KINDS`` gives), and order chains (``SubmitOrder``,
``OrderAccepted``, one or two ``FillReceived``) made as real events and
COPYed at sequences kept free for them (``place``, ``write_part``).
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

import asyncpg
from harness import event_row, say  # bench/harness.py

from libs.contract.envelope import Event
from libs.contract.events import (
    FillPayload,
    FillReceived,
    OrderAccepted,
    OrderAcceptedPayload,
    SubmitOrder,
    SubmitOrderPayload,
    TradePayload,
    TradePrinted,
)
from libs.store.layout import COPY_COLUMNS
from libs.strategy.testing import At, ny_ns

EQUITIES = (
    "AAPL", "MSFT", "NVDA", "SPY", "QQQ", "AMZN", "GOOGL", "META", "TSLA", "AMD",
    "NFLX", "JPM", "XOM", "UNH", "V", "MA", "HD", "COST", "AVGO", "IWM",
)  # fmt: skip
#: An equity the store has bars of only (priced from a bar feed).
BARS_ONLY = "BRK.B"
#: Option contracts by what the feed records of them beside their quotes.
TRADED = ("O:SPY261218C00600000", "O:QQQ261218P00500000", "O:AAPL261218C00250000")
BARS_NO_TRADES = ("O:NVDA261218C00150000", "O:TSLA261218P00300000")
MARKS_ONLY = (
    "O:SPY261218P00550000",
    "O:MSFT261218C00500000",
    "O:AMZN261218C00230000",
    "O:META261218P00600000",
    "O:IWM261218C00240000",
)
TRADED_ONCE = "O:AMD261218C00200000"  # one trade, at the start of the history
UNPRICED = "O:NFLX261218P00900000"  # quotes only, all too wide to mark
OPTIONS = (*TRADED, *BARS_NO_TRADES, *MARKS_ONLY, TRADED_ONCE, UNPRICED)
MARKED = (*TRADED, *BARS_NO_TRADES, *MARKS_ONLY, TRADED_ONCE)

ACCOUNTS = ("acct-main", "acct-options")
OPEN_POSITIONS = 30
FLAT_POSITIONS = 6

Side = Literal["buy", "sell"]
T0 = ny_ns(dt.date(2026, 12, 7), 9, 30)
STEP_NS = 5_000_000  # 5 ms between two events: 200 events/s
#: Knuth's multiplicative hash: a fixed, well-spread dice roll per sequence.
HASH = "((s * 2654435761) % 4294967296)"


def base_price(symbol: str) -> Decimal:
    """Where a symbol's price walk starts (options cheap, equities not)."""
    if symbol in OPTIONS:
        return Decimal(1) + Decimal(OPTIONS.index(symbol)) / 4
    return Decimal(50 + 10 * (*EQUITIES, BARS_ONLY).index(symbol))


def price_at(symbol: str, seq: int) -> Decimal:
    """The price the SQL below gives ``symbol`` at ``seq`` (a slow sawtooth)."""
    step = Decimal("0.001") if symbol in OPTIONS else Decimal("0.01")
    return base_price(symbol) + (seq // 997 % 200) * step


@dataclass(frozen=True)
class Kind:
    """One kind of market event: its share of the sequences, its symbols and row."""

    per_mille: int
    type: str
    symbols: tuple[str, ...]
    subject: str  # SQL over sym
    payload: str  # SQL format() template over sym, px


TRADE = (
    '{"symbol":"%s","price":"%s","size":"100","exchange":null,"trade_id":null,'
    '"conditions":[],"tape":null,"sequence":null,"feed":"polygon","backfilled":false}'
)
QUOTE = (
    '{"symbol":"%1$s","bid_price":"%2$s","bid_size":"3","ask_price":"%3$s","ask_size":"5",'
    '"bid_exchange":null,"ask_exchange":null,"condition":null,"indicators":[],"tape":null,'
    '"sequence":null,"feed":"polygon"}'
)
BAR = (
    '{"symbol":"%1$s","interval":"1m","open":"%2$s","high":"%2$s","low":"%2$s","close":"%2$s",'
    '"volume":"1000","vwap":null,"trades":null,"start_ns":0,"end_ns":60000000000,'
    '"feed":"polygon","backfilled":false}'
)
MARK = (
    '{"symbol":"%1$s","price":"%2$s","bid_price":"%2$s","ask_price":"%2$s",'
    '"basis":"quote_mid","feed":"polygon"}'
)
KINDS = (
    Kind(330, "TradePrinted", EQUITIES, "'md.trade.' || sym", f"format('{TRADE}', sym, px)"),
    Kind(
        510,
        "QuoteUpdated",
        EQUITIES,
        "'md.quote.' || sym",
        f"format('{QUOTE}', sym, px, px + 0.01)",
    ),
    Kind(
        3, "BarClosed", (*EQUITIES, BARS_ONLY), "'md.bar.1m.' || sym", f"format('{BAR}', sym, px)"
    ),
    Kind(127, "QuoteUpdated", OPTIONS, "'md.quote.' || sym", f"format('{QUOTE}', sym, px, px * 3)"),
    Kind(27, "MarkUpdated", MARKED, "'md.mark.' || sym", f"format('{MARK}', sym, px)"),
    Kind(1, "TradePrinted", TRADED, "'md.trade.' || sym", f"format('{TRADE}', sym, px)"),
    Kind(2, "BarClosed", (*TRADED, *BARS_NO_TRADES), "'md.bar.1m.' || sym",
         f"format('{BAR}', sym, px)"),
)  # fmt: skip
assert sum(k.per_mille for k in KINDS) == 1000


def _array(values: tuple[object, ...], sql_type: str) -> str:
    return f"ARRAY[{', '.join(repr(str(v)) for v in values)}]::{sql_type}[]"


def market_sql() -> str:
    """One INSERT of the market events of sequences $1..$2 but those in $3,
    in sequence order (so the heap is in sequence order, as recorded)."""
    branches = []
    low = 0
    for kind in KINDS:
        n = len(kind.symbols)
        step = "0.001" if kind.symbols[0] in OPTIONS else "0.01"
        bases = _array(tuple(base_price(s) for s in kind.symbols), "numeric")
        branches.append(
            f"""
            SELECT r.s, r.id, {kind.subject} AS subject, '{kind.type}' AS type, r.ts, sym,
                   ({kind.payload})::jsonb AS payload
            FROM r CROSS JOIN LATERAL (
                SELECT ({_array(kind.symbols, "text")})[1 + r.pick % {n}] AS sym,
                       ({bases})[1 + r.pick % {n}] + r.wiggle * {step} AS px
            ) p
            WHERE r.dice >= {low} AND r.dice < {low + kind.per_mille}"""  # noqa: S608 - constants
        )
        low += kind.per_mille
    union = "\n            UNION ALL".join(branches)
    return f"""
        WITH r AS MATERIALIZED (
            SELECT s, gen_random_uuid() AS id, {T0} + s * {STEP_NS} AS ts,
                   {HASH} % 1000 AS dice, {HASH} / 1000 AS pick, s / 997 % 200 AS wiggle
            FROM generate_series($1::bigint, $2::bigint) AS s
            WHERE s <> ALL($3::bigint[])
        )
        INSERT INTO events ({", ".join(COPY_COLUMNS)})
        SELECT m.s, m.id, m.subject, m.type, m.ts, m.ts + 20000, 'bench/marketdata', m.id,
               NULL, NULL, NULL, m.sym, m.payload, NULL
        FROM ({union}
        ) m
        ORDER BY m.s
    """  # noqa: S608 - built from this module's constants, no input


# ---------------------------------------------------------------- the order flow


@dataclass
class Book:
    """One strategy's position in one symbol of one account, and its orders."""

    account: str
    strategy: str
    symbol: str
    target: int  # net quantity at the end (0: flat)
    orders: list[tuple[Side, int, bool]] = field(default_factory=list)  # side, qty, two fills


def plan_orders(fills: int, rng: random.Random) -> list[Book]:
    """Books whose orders make about ``fills`` fills, leaving OPEN_POSITIONS open."""
    equity_strategies = ("momentum", "meanrev", "pairs")
    keys = [
        *((ACCOUNTS[0], equity_strategies[i % 3], s) for i, s in enumerate((*EQUITIES, BARS_ONLY))),
        *((ACCOUNTS[1], "momentum", s) for s in EQUITIES[:3]),
        *((ACCOUNTS[1], "options", s) for s in OPTIONS),
    ]
    assert len(keys) == OPEN_POSITIONS + FLAT_POSITIONS
    rng.shuffle(keys)
    books = []
    per_book = max(1, round(fills / len(keys) / 1.2))  # 1 in 5 orders fills twice
    for n, (account, strategy, symbol) in enumerate(keys):
        size = 5 if symbol in OPTIONS else 100
        target = 0 if n < FLAT_POSITIONS else rng.choice((-1, 1)) * rng.randint(1, size)
        book = Book(account, strategy, symbol, target)
        net = 0
        for _ in range(per_book - 1):
            qty = rng.randint(1, size)
            side: Side = rng.choice(("buy", "sell"))
            book.orders.append((side, qty, rng.random() < 0.2 and qty > 1))
            net += qty if side == "buy" else -qty
        if net != target:
            diff = target - net
            book.orders.append(("buy" if diff > 0 else "sell", abs(diff), False))
        books.append(book)
    return books


def chain(book: Book, side: Side, qty: int, split: bool, seq: int) -> list[Event]:
    """An order's events, made at the time of ``seq``, filled at the price there."""
    clock = At(T0 + seq * STEP_NS)
    oid = uuid.uuid4()
    cmd = SubmitOrder.create(
        SubmitOrderPayload(
            order_id=oid,
            strategy=book.strategy,
            account=book.account,
            symbol=book.symbol,
            side=side,
            quantity=Decimal(qty),
            asset_class="option" if book.symbol in OPTIONS else "equity",
        ),
        source="bench/risk-gate",
        clock=clock,
    )
    broker_id = oid.hex[:16]
    out: list[Event] = [
        cmd,
        OrderAccepted.create(
            OrderAcceptedPayload(
                order_id=oid, account=book.account, broker_order_id=broker_id, symbol=book.symbol
            ),
            source="bench/broker-gateway",
            clock=clock,
            cause=cmd,
        ),
    ]
    parts = [qty // 2, qty - qty // 2] if split else [qty]
    done = 0
    for part in parts:
        done += part
        out.append(
            FillReceived.create(
                FillPayload(
                    order_id=oid,
                    account=book.account,
                    broker_order_id=broker_id,
                    fill_id=f"{broker_id}-{done}",
                    symbol=book.symbol,
                    side=side,
                    quantity=Decimal(part),
                    price=price_at(book.symbol, seq),
                    cumulative_quantity=Decimal(done),
                    leaves_quantity=Decimal(qty - done),
                    status="complete" if done == qty else "partial",
                    commission=Decimal("0.65") if book.symbol in OPTIONS else Decimal(0),
                    strategy=book.strategy,
                ),
                source="bench/broker-gateway",
                clock=clock,
                cause=cmd,
            )
        )
    return out


@dataclass
class Placed:
    """Events kept at fixed sequences (the order chains, the one early trade)."""

    at: dict[int, Event]
    fills: int
    orders: int


def place(events: int, fills: int, seed: int) -> Placed:
    """Spread the order chains evenly over ``events`` sequences, in a random
    order of books; the contract that traded once trades at sequence 2."""
    rng = random.Random(seed)
    books = plan_orders(fills, rng)
    orders = [(book, o) for book in books for o in book.orders]
    # Each book's orders stay in their order (their net is planned that way).
    rng.shuffle(orders)
    by_book: dict[int, list[tuple[Side, int, bool]]] = {id(b): list(b.orders) for b in books}
    at: dict[int, Event] = {
        2: TradePrinted.create(
            TradePayload(
                symbol=TRADED_ONCE, price=price_at(TRADED_ONCE, 2), size=Decimal(1), feed="polygon"
            ),
            source="bench/marketdata",
            clock=At(T0 + 2 * STEP_NS),
        )
    }
    gap = events // (len(orders) + 1)
    n_fills = 0
    for i, (book, _) in enumerate(orders):
        side, qty, split = by_book[id(book)].pop(0)
        seq = (i + 1) * gap
        for k, e in enumerate(chain(book, side, qty, split, seq)):
            at[seq + k] = e
            n_fills += isinstance(e, FillReceived)
    return Placed(at, n_fills, len(orders))


async def write_part(
    conn: asyncpg.Connection, placed: Placed, first: int, last: int, chunk: int, total: int
) -> None:
    """Sequences ``first``..``last``: market events made in SQL, the placed ones COPYed."""
    sql = market_sql()
    for lo in range(first, last + 1, chunk):
        hi = min(lo + chunk - 1, last)
        kept = sorted(s for s in placed.at if lo <= s <= hi)
        async with conn.transaction():
            await conn.execute(sql, lo, hi, kept)
            if kept:
                rows = [event_row(s, placed.at[s]) for s in kept]
                await conn.copy_records_to_table("events", records=rows, columns=COPY_COLUMNS)
        if hi // 250_000 > (lo - 1) // 250_000 or hi == last:
            say(f"  store: {hi:,} of {total:,} events")
    await conn.execute("VACUUM ANALYZE events")
