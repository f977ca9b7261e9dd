"""What reading positions costs on a store with a long history:
``positions``, ``positions_marked``, ``account_pnl`` and ``tradebus positions``.

``positions_marked`` (and ``account_pnl`` over it, which ``tradebus
positions`` and the dashboards read) prices each position at its symbol's
last trade (else last bar close) and last mark, each found in ``events``
with ``ORDER BY seq DESC LIMIT 1``. A symbol with none of a kind (an equity
never has a mark; a thin option contract may never trade) can cost a walk
over the whole history to prove there is none. This measures it.

On its own PostgreSQL (fresh, under a temporary directory, fsync off: only
the reads are timed) it builds a store of ``--events`` (3,000,000) events as
a feed records them:

- twenty equities' trades (33 %) and quotes (51 %), their 1-minute bars,
  and one more equity of which the store has bars only (a symbol priced
  from a bar feed);
- a dozen option contracts' quotes (12.7 %) and the marks made from them
  (3 %): three trade now and then and have bars, two have bars but never
  trade, five only ever have marks, one traded once at the very start of
  the history, and one has quotes but no mark (always too wide) and so no
  price at all;
- spread evenly over that history, ``--fills`` (3,000) fills of order
  chains (``SubmitOrder``, ``OrderAccepted``, one or two ``FillReceived``)
  by four strategies on two accounts: every equity above in the first, three
  of them and every option contract in the second; 36 positions, 30 left
  open and 6 flat (which ones is the seed's draw).

The market data is made in SQL (``generate_series``, one ``INSERT`` per
chunk of ``--chunk`` sequences, payloads as the recorder writes them), the
order chains as real events, COPYed at sequences kept free for them.

It measures after each of ``--steps`` (2) equal parts of the store are in:
``SELECT *`` of ``positions``, ``positions_marked`` and ``account_pnl`` on
one connection, and ``tradebus positions``' own query path
(``services.broker_gateway.positions.read_positions``: connect, query,
close), ``--runs`` (5) times each, interleaved: p50 and max in ms; and an
``EXPLAIN (ANALYZE, BUFFERS)`` of ``positions_marked`` of which it prints
the plan nodes that took the most time.

With ``--before REV`` the store is migrated to ``REV`` only; at each step
it is measured there, migrated to head (timed: what the migration costs on
a store of that size), measured again, and migrated back to ``REV``
before the next part is written: the same rows read before and after.

With ``--snapshot``, after the measurements at head of each step it empties
the snapshots of the fold (migration 0010) and measures with none (the fold
from the start), then writes one (``write_position_snapshot()``, timed) and
measures again, reading from it. Head's own measurement of the next step
then folds only the fills of its part after that snapshot (without
``--before``, which drops the snapshots going down).

Progress goes to stderr; stdout gets the figures and plan summaries and,
last, one JSON line with the figures (units in their names).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import asyncpg
from alembic import command
from harness import TEMPLATE_DB, Database, event_row, say  # bench/harness.py

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
from libs.local.servers import PostgresServer
from libs.store.migrate import alembic_config, upgrade_async
from libs.store.schema import COPY_COLUMNS
from libs.store.urls import asyncpg_url
from libs.strategy.testing import At, ny_ns
from services.broker_gateway.positions import read_positions

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


# ---------------------------------------------------------------- measuring

QUERIES = {
    "positions": "SELECT * FROM positions",
    "positions_marked": "SELECT * FROM positions_marked",
    "account_pnl": "SELECT * FROM account_pnl",
}


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 1), "max": round(max(values), 1)}


async def timed(url: str, runs: int) -> dict[str, dict[str, float]]:
    """ms of each query and of ``tradebus positions``' read, ``runs`` times, interleaved."""
    took: dict[str, list[float]] = {name: [] for name in (*QUERIES, "tradebus_positions")}
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        for _ in range(runs):
            for name, sql in QUERIES.items():
                started = time.perf_counter()
                await conn.fetch(sql)
                took[name].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await read_positions(url)
            took["tradebus_positions"].append((time.perf_counter() - started) * 1000)
    finally:
        await conn.close()
    return {name: summary(values) for name, values in took.items()}


@dataclass
class Node:
    """A plan node's own share of an EXPLAIN ANALYZE: its time less its children's."""

    label: str
    self_ms: float
    loops: int
    rows: float
    removed: int
    hit: int
    read: int


def _nodes(plan: dict[str, Any], out: list[Node]) -> float:
    """Walk ``plan``; returns its inclusive ms (time per loop x loops)."""
    loops = int(plan.get("Actual Loops", 0))
    total = float(plan.get("Actual Total Time", 0.0)) * loops
    children = sum(_nodes(child, out) for child in plan.get("Plans", []))
    label = plan["Node Type"]
    if "Index Name" in plan:
        label += f" using {plan['Index Name']}"
    if "Relation Name" in plan:
        label += f" on {plan['Relation Name']}"
    if "Alias" in plan and plan.get("Relation Name"):
        label += f" {plan['Alias']}"
    for key in ("Index Cond", "Filter", "Recheck Cond"):
        if key in plan:
            label += f" [{key.lower()}: {plan[key]}]"
    out.append(
        Node(
            label,
            max(total - children, 0.0),
            loops,
            float(plan.get("Actual Rows", 0.0)),
            int(plan.get("Rows Removed by Filter", 0)) * max(loops, 1),
            int(plan.get("Shared Hit Blocks", 0)),
            int(plan.get("Shared Read Blocks", 0)),
        )
    )
    return total


async def explain(url: str, sql: str, top: int = 6) -> tuple[float, list[Node]]:
    """EXPLAIN (ANALYZE, BUFFERS) of ``sql``: its execution ms and its costliest nodes."""
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")
    finally:
        await conn.close()
    [doc] = json.loads(raw)
    nodes: list[Node] = []
    _nodes(doc["Plan"], nodes)
    nodes.sort(key=lambda n: -n.self_ms)
    return float(doc["Execution Time"]), nodes[:top]


def print_plan(title: str, execution_ms: float, nodes: list[Node]) -> None:
    print(f"  EXPLAIN (ANALYZE, BUFFERS) {title}: {execution_ms:,.1f} ms; costliest nodes:")
    for n in nodes:
        print(
            f"    {n.self_ms:9.1f} ms  loops {n.loops:>3}  rows/loop {n.rows:>9,.1f}  "
            f"removed {n.removed:>11,}  buffers hit {n.hit:>9,} read {n.read:>7,}"
        )
        print(f"               {n.label[:200]}")


async def store_figures(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM positions) AS positions, "
            "(SELECT count(*) FROM positions WHERE quantity <> 0) AS open_positions, "
            "(SELECT count(*) FROM fills) AS fills, "
            "pg_total_relation_size('events') AS events_bytes"
        )
    finally:
        await conn.close()
    return dict(row)


async def measure(url: str, runs: int, label: str) -> dict[str, Any]:
    say(f"  timing ({label}): {runs} runs of each query, interleaved")
    times = await timed(url, runs)
    execution_ms, nodes = await explain(url, QUERIES["positions_marked"])
    print(f"  {label}:")
    for name, s in times.items():
        print(f"    {name:<20} p50 {s['p50']:>10,.1f} ms   max {s['max']:>10,.1f} ms")
    print_plan("positions_marked", execution_ms, nodes)
    out: dict[str, Any] = {}
    for name, s in times.items():
        out[f"{name}_p50_ms"] = s["p50"]
        out[f"{name}_max_ms"] = s["max"]
    out["positions_marked_explain_ms"] = round(execution_ms, 1)
    return out


async def write_snapshot(url: str) -> float:
    """Seconds ``write_position_snapshot()`` took."""
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        started = time.perf_counter()
        await conn.fetchval("SELECT write_position_snapshot()")
        return time.perf_counter() - started
    finally:
        await conn.close()


async def migrate(url: str, revision: str, down: bool = False) -> float:
    """Seconds ``alembic upgrade/downgrade revision`` took."""
    started = time.perf_counter()
    if down:
        await asyncio.to_thread(command.downgrade, alembic_config(url), revision)
    else:
        await upgrade_async(url, revision)
    return time.perf_counter() - started


async def run(opts: argparse.Namespace, work: Path) -> dict[str, Any]:
    pg = PostgresServer(work / "pg", fsync=False)
    pg.start()
    try:
        db = Database(pg)
        if opts.before:
            await upgrade_async(pg.url(TEMPLATE_DB), opts.before)
        else:
            await db.migrate_template()
        url = await db.fresh("positions")
        say(f"placing {opts.fills:,} fills' order chains over {opts.events:,} events")
        placed = place(opts.events, opts.fills, opts.seed)
        steps: list[dict[str, Any]] = []
        conn = await asyncpg.connect(asyncpg_url(url))
        written = 0
        build_s = 0.0
        try:
            for step in range(1, opts.steps + 1):
                upto = opts.events * step // opts.steps
                say(f"writing events {written + 1:,}..{upto:,}")
                started = time.perf_counter()
                await write_part(conn, placed, written + 1, upto, opts.chunk, opts.events)
                build_s += time.perf_counter() - started
                written = upto
                figures: dict[str, Any] = {"events": upto, **await store_figures(url)}
                print(
                    f"store of {upto:,} events ({figures['events_bytes'] / 2**20:,.0f} MiB), "
                    f"{figures['fills']:,} fills, {figures['positions']} positions "
                    f"({figures['open_positions']} open)"
                )
                if opts.before:
                    figures["before"] = await measure(url, opts.runs, f"at {opts.before}")
                    say("  migrating to head")
                    figures["upgrade_s"] = round(await migrate(url, "head"), 2)
                    print(f"  migration {opts.before} -> head: {figures['upgrade_s']} s")
                    figures["after"] = await measure(url, opts.runs, "at head")
                    if step < opts.steps:
                        await migrate(url, opts.before, down=True)
                else:
                    figures.update(await measure(url, opts.runs, "at head"))
                if opts.snapshot:
                    await conn.execute("TRUNCATE position_snapshots, position_snapshot_unbooked")
                    figures["no_snapshot"] = await measure(
                        url, opts.runs, "at head, no snapshot (the fold from the start)"
                    )
                    figures["snapshot_s"] = round(await write_snapshot(url), 3)
                    print(f"  snapshot of the fold written in {figures['snapshot_s']} s")
                    figures["from_snapshot"] = await measure(
                        url, opts.runs, "at head, from a snapshot of the whole store"
                    )
                steps.append(figures)
        finally:
            await conn.close()
    finally:
        pg.stop()
    return {
        "events": opts.events,
        "fills": placed.fills,
        "orders": placed.orders,
        "runs": opts.runs,
        "before_revision": opts.before,
        "build_s": round(build_s, 1),
        "build_events_per_s": round(opts.events / build_s),
        "steps": steps,
    }


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tradebus-positions-query-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3_000_000, help="events in the store")
    parser.add_argument("--fills", type=int, default=3_000, help="fills (about) in the store")
    parser.add_argument("--steps", type=int, default=2, help="measure after each of N parts")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each query")
    parser.add_argument("--chunk", type=int, default=50_000, help="sequences per INSERT")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--before", metavar="REV", help="measure at REV, then at head, on the same store"
    )
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="write a snapshot of the fold after each step and measure from it",
    )
    opts = parser.parse_args()
    if opts.events < 10 * opts.fills or opts.steps < 1 or opts.runs < 1:
        parser.error("need --events >= 10 x --fills, --steps >= 1 and --runs >= 1")
    with workdir() as work:
        say(f"work directory {work}")
        figures = asyncio.run(run(opts, work))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
