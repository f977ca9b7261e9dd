"""Rebuilding strategies' books from the event store at start-up.

One snapshot is read up to the store's last sequence ``S`` (the runner then
consumes the stream from ``S + 1``, so every event is applied exactly once):

- every event of every chain a strategy started — its signals and intents,
  the risk-gate's decisions, the broker's acks, rejects, cancels and fills —
  found by correlation id = one of its signals' ids; except, past the
  runner's ``rebuild_finished_s``, chains whose every intent is finished,
  of which only the fills are read (each start-up would otherwise read
  every order the strategies ever placed);
- every fill booked to a strategy outside its own chains (a
  ``FlattenAccount``'s closing orders, booked by the broker-gateway to the
  strategies whose positions they closed);
- the cancels of its orders that a command outside its chains caused (a
  ``FlattenAccount`` cancels whatever is working, and the gateway's
  ``OrderCanceled`` is then in the flatten's chain): live, they are routed
  by order id and finish their intents, so the rebuild must see them too;
- the last bar, trade and mark (``MarkUpdated``, marketdata's, of an
  option's quotes) of each of its symbols and of the underlyings of its
  option contracts (the runner passes both: an exercise or an assignment
  books the underlying's shares to it), for unrealized P&L (of bars, the
  last of each interval its strategies take: as live, a strategy is marked
  by the bars it is shown only), and its last fill of any strategy (a fill
  marks every holder of its symbol, ``Router.markers``): the newest of them
  by market time marks, as in the risk-gate;
- the latest bars of each symbol, as many as its strategies ask for
  (``Strategy.warmup_bars``), to warm their indicators up (``on_warmup``).

asyncpg errors are mapped to :mod:`libs.store.errors` here.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg

from libs.contract.envelope import Event
from libs.contract.events import OPTION_PREFIX
from libs.store import queries
from libs.store.errors import StoreUnavailable
from libs.store.urls import asyncpg_url
from libs.store.writer import CONNECT_TIMEOUT, CONNECTION_ERRORS
from libs.strategy.runtime import InMemoryRuntime
from services.strategy_runner.adapters import checkpoint

log = logging.getLogger(__name__)

COLUMNS = "seq, id, type, ts_event, ts_init, source, correlation_id, causation_id, payload"
#: The same, of an ``events`` row named ``e``.
E_COLUMNS = ", ".join(f"e.{c}" for c in COLUMNS.split(", "))

# Three parts, each its own index scans, not one OR (which read the whole
# table: 28 ms -> 326 ms on a million rows); a fill (or a cancel) of a
# strategy's own chain can come from two, and load_history keeps it once.
# - The chains: a chain whose intents are all finished (denied, rejected,
#   canceled, completely filled) and whose last event is older than $3
#   (ts_init, ns) is left out, unless one of its fills names no strategy: it
#   no longer touches the books but through its fills.
# - The cancels of the chains' orders caused outside them (a FlattenAccount
#   cancels what is working; a CancelOrder): in the causing command's chain,
#   found by their cause. They finish an intent like a cancel in its chain.
# - The fills booked to the strategies, after each one's checkpoint ($4, $5:
#   strategies and their checkpoints' sequences; the earlier ones are in it).
CHAINS_SQL = f"""
WITH chains AS MATERIALIZED (
    SELECT {COLUMNS}, strategy FROM events
    WHERE seq <= $2 AND correlation_id IN (
        SELECT id FROM events
        WHERE type = 'SignalGenerated' AND strategy = ANY($1::text[]) AND seq <= $2
    )
),
orders AS (
    SELECT correlation_id, payload->>'intent_id' AS intent_id, payload->>'order_id' AS order_id
    FROM chains WHERE type = 'RiskDecisionMade' AND payload->>'order_id' IS NOT NULL
),
canceled_elsewhere AS MATERIALIZED (
    SELECT {COLUMNS} FROM events
    WHERE seq <= $2 AND type = 'OrderCanceled' AND causation_id IN (
        SELECT id FROM events WHERE type IN ('FlattenAccount', 'CancelOrder') AND seq <= $2
    ) AND payload->>'order_id' IN (SELECT order_id FROM orders)
),
finished AS (
    SELECT payload->>'intent_id' AS intent_id FROM chains
    WHERE type = 'RiskDecisionMade' AND payload->>'decision' = 'denied'
    UNION
    SELECT o.intent_id FROM chains c JOIN orders o ON o.order_id = c.payload->>'order_id'
    WHERE c.type IN ('OrderRejected', 'OrderCanceled')
       OR (c.type = 'FillReceived' AND (c.payload->>'status' = 'complete'
                                        OR (c.payload->>'leaves_quantity')::numeric = 0))
    UNION
    SELECT o.intent_id FROM canceled_elsewhere c JOIN orders o
    ON o.order_id = c.payload->>'order_id'
),
working AS (
    SELECT DISTINCT i.correlation_id FROM chains i
    LEFT JOIN finished f ON f.intent_id = i.id::text
    WHERE i.type = 'OrderIntentCreated' AND f.intent_id IS NULL
),
kept AS (
    SELECT correlation_id FROM chains GROUP BY correlation_id HAVING max(ts_init) >= $3::bigint
    UNION
    SELECT correlation_id FROM working
    UNION
    -- A fill not booked to a strategy is routed by its order: read the chain whole.
    SELECT correlation_id FROM chains WHERE type = 'FillReceived' AND strategy IS NULL
)
SELECT {COLUMNS} FROM chains WHERE correlation_id IN (SELECT correlation_id FROM kept)
UNION ALL
SELECT {COLUMNS} FROM canceled_elsewhere WHERE payload->>'order_id' IN (
    SELECT order_id FROM orders WHERE correlation_id IN (SELECT correlation_id FROM kept)
)
UNION ALL
SELECT {E_COLUMNS} FROM events e
LEFT JOIN unnest($4::text[], $5::bigint[]) AS cp(strategy, seq) ON cp.strategy = e.strategy
WHERE e.seq <= $2 AND e.type = 'FillReceived' AND e.strategy = ANY($1::text[])
  AND e.seq > coalesce(cp.seq, 0)
"""  # noqa: S608 - constant column list, values are bind parameters

#: Newest by market time (``Event.market_ns``: CLOCK_SKEW_NS, 5 s, is in
#: the expression), the later in the stream at the same time: written exactly
#: as migration 0013's indexes are (their ``MARKET_NS``), or the planner does
#: not match them and a lookup reads the symbol's whole history.
NEWEST_FIRST = "least(ts_event, ts_init + 5000000000) DESC, seq DESC"

# A symbol's newest trade, and its newest bar of one interval ($3; NULL: any;
# a bar of another is not routed to the strategies that take this one, so it
# would mark nothing), by market time (Event.market_ns), the later in the
# stream at the same time: two lookups, each restored, the newest of them and
# the fill marking (``Ledger.mark``), as live. By stream order a print
# arriving late with an older time (Polygon's late-reported trades) was "the
# last trade" and marked the books at a stale price after a restart, where
# live it had moved nothing. Each orders by the market time exactly as
# ix_events_newest_price (symbol, type, market time desc, seq desc; migration
# 0013) writes it (CLOCK_SKEW_NS, 5 s, is in the expression): one probe,
# found or not, also as a generic plan. One query of both kinds newest by seq
# first read the primary key backwards, a walk of the whole history for a
# symbol with neither (a contract only ever quoted): about 0.9 s at 2,000,000
# events, per symbol, at every start-up.
LAST_TRADE_SQL = f"""
SELECT {COLUMNS} FROM events
WHERE symbol = $1 AND type = 'TradePrinted' AND seq <= $2
ORDER BY {NEWEST_FIRST} LIMIT 1
"""  # noqa: S608 - constant column list, values are bind parameters

LAST_BAR_SQL = f"""
SELECT {COLUMNS} FROM events
WHERE symbol = $1 AND type = 'BarClosed' AND seq <= $2
  AND ($3::text IS NULL OR payload->>'interval' = $3)
ORDER BY {NEWEST_FIRST} LIMIT 1
"""  # noqa: S608 - constant column list, values are bind parameters

# The symbol's newest mark by market time (marketdata's, of an option's
# quotes; none of an equity): it marks the position as it marks the
# risk-gate's, when it is the newest of all. ix_events_newest_price holds
# marks too (migration 0013): one probe, as for trades.
LAST_MARK_SQL = f"""
SELECT {COLUMNS} FROM events
WHERE symbol = $1 AND type = 'MarkUpdated' AND seq <= $2
ORDER BY {NEWEST_FIRST} LIMIT 1
"""  # noqa: S608 - constant column list, values are bind parameters

# The symbol's newest fill by market time, of any strategy or account: its
# price marks every holder of the symbol, as live (``Router.markers``), when
# it is the newest. One probe of ix_events_newest_fill (migration 0013). A
# settlement (an option's expiry, FillPayload.settlement) is no price.
LAST_FILL_SQL = f"""
SELECT {COLUMNS} FROM events
WHERE symbol = $1 AND seq <= $2 AND type = 'FillReceived' AND payload->>'settlement' IS NULL
ORDER BY {NEWEST_FIRST} LIMIT 1
"""  # noqa: S608 - constant column list, values are bind parameters

# A symbol's latest bars (of an interval, or any) for warm-up: the newest by
# market time, as the marks (a probe of ix_events_newest_price, reading as
# many rows as asked for; by seq it would read and sort every bar of the
# symbol). They are handed over in stream order (``load_history``).
WARMUP_SQL = f"""
SELECT {COLUMNS} FROM events
WHERE symbol = $1 AND type = 'BarClosed' AND seq <= $2
  AND ($4::text IS NULL OR payload->>'interval' = $4)
ORDER BY {NEWEST_FIRST} LIMIT $3
"""  # noqa: S608 - constant column list, values are bind parameters


@dataclass(frozen=True, slots=True)
class History:
    """What the store holds for the strategies, up to ``last_seq``, in order."""

    events: list[Event]
    #: The store's last row (None when empty): what the stream must continue.
    tail: queries.Tail | None = None
    #: The latest bars of the symbols asked for (for ``on_warmup``), in order.
    bars: list[Event] = field(default_factory=list)
    #: The store sequence of each of ``events``.
    seqs: list[int] = field(default_factory=list)
    #: Per strategy, the newest usable checkpoint of its ledger: the events at
    #: or below its sequence are in it (``adapters/checkpoint.py``).
    checkpoints: dict[str, checkpoint.Checkpoint] = field(default_factory=dict)
    #: The clock time before which a strategy's orders may be missing: the
    #: read's ``finished_before_ns`` (a chain left out had every event, so
    #: every intent's creation, before it); 0: every chain was read.
    complete_since_ns: int = 0

    @property
    def last_seq(self) -> int:
        return queries.last_seq_of(self.tail)

    def restore_into(self, runtime: InMemoryRuntime) -> dict[str, int]:
        """Seed each strategy's ledger from its checkpoint, then apply the
        events to the books (each strategy's ledger only those after its
        checkpoint), and tell each order history from when it is complete
        (``complete_since_ns``); returns, per strategy, the fills its
        ledger took."""
        for each in runtime.hosts.values():
            each.history.missing_before(self.complete_since_ns)
        for name, cp in self.checkpoints.items():
            host = runtime.hosts.get(name)
            if host is not None:
                host.ledger.seed(cp.positions)
        upto = {name: cp.seq for name, cp in self.checkpoints.items()}
        for seq, event in zip(self.seqs, self.events, strict=True):
            runtime.restore(event, seq=seq, ledgers_upto=upto)
        return {name: host.ledger.fills_applied for name, host in runtime.hosts.items()}


async def load_history(
    database_url: str,
    strategies: Sequence[str],
    symbols: Sequence[str],
    warmup: Mapping[tuple[str, str | None], int] | None = None,
    *,
    bar_intervals: Mapping[str, Collection[str | None]] | None = None,
    finished_before_ns: int = 0,
    use_checkpoints: bool = True,
) -> History:
    """Read the strategies' chains (less those finished before
    ``finished_before_ns``: see ``CHAINS_SQL``), all their fills, their
    symbols' last prices (a trade, a mark, a fill, or a bar of each interval in
    ``bar_intervals[symbol]``, the intervals its strategies take; None, or a
    symbol not in it: a bar of any) and, per (symbol, bar interval) in
    ``warmup``, that many of its latest bars (an interval of None: of any
    interval). Each
    strategy's ledger starts from its newest usable checkpoint, unless
    ``use_checkpoints`` is false."""
    try:
        conn = await asyncpg.connect(asyncpg_url(database_url), timeout=CONNECT_TIMEOUT)
    except (*CONNECTION_ERRORS, asyncpg.PostgresError) as e:
        raise StoreUnavailable(f"cannot reach the event store: {e}") from e
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            tail = await queries.tail(conn)
            last_seq = queries.last_seq_of(tail)
            ledgers = (
                await checkpoint.latest(conn, strategies, up_to=last_seq) if use_checkpoints else {}
            )
            rows = list(
                await conn.fetch(
                    CHAINS_SQL,
                    list(strategies),
                    last_seq,
                    finished_before_ns,
                    list(ledgers),
                    [c.seq for c in ledgers.values()],
                )
            )
            for symbol in sorted(set(symbols)):
                intervals = (bar_intervals or {}).get(symbol) or {None}
                last = [await conn.fetchrow(LAST_TRADE_SQL, symbol, last_seq)]
                for interval in sorted(intervals, key=lambda i: i or ""):
                    last.append(await conn.fetchrow(LAST_BAR_SQL, symbol, last_seq, interval))
                if symbol.startswith(OPTION_PREFIX):  # marketdata marks options only
                    last.append(await conn.fetchrow(LAST_MARK_SQL, symbol, last_seq))
                last.append(await conn.fetchrow(LAST_FILL_SQL, symbol, last_seq))
                rows += [row for row in last if row is not None]
            bar_rows = []
            asked = sorted((warmup or {}).items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
            for (symbol, interval), count in asked:
                if count > 0:
                    bar_rows += await conn.fetch(WARMUP_SQL, symbol, last_seq, count, interval)
    except (*CONNECTION_ERRORS, asyncpg.PostgresError) as e:
        raise StoreUnavailable(f"reading the event store failed: {e}") from e
    finally:
        await conn.close()
    rows = sorted({r["seq"]: r for r in rows}.values(), key=lambda r: r["seq"])
    seqs: list[int] = []
    events: list[Event] = []
    for row in rows:
        event = queries.stored_event(row)
        if event is not None:
            seqs.append(int(row["seq"]))
            events.append(event)
    bar_rows = sorted({r["seq"]: r for r in bar_rows}.values(), key=lambda r: r["seq"])
    bars: list[Event] = [e for e in map(queries.stored_event, bar_rows) if e is not None]
    return History(events, tail, bars, seqs, ledgers, complete_since_ns=finished_before_ns)


async def write_checkpoints(
    database_url: str,
    history: History,
    runtime: InMemoryRuntime,
    folded: Mapping[str, int],
    *,
    after_fills: int = 1,
) -> list[str]:
    """After a rebuild: a checkpoint of each ledger that took at least
    ``after_fills`` fills from the store, at the snapshot's sequence; the
    strategies written."""
    due = {n: f for n, f in folded.items() if f >= after_fills}
    if not due or history.last_seq == 0:
        return []
    try:
        conn = await asyncpg.connect(asyncpg_url(database_url), timeout=CONNECT_TIMEOUT)
    except (*CONNECTION_ERRORS, asyncpg.PostgresError) as e:
        raise StoreUnavailable(f"cannot reach the event store: {e}") from e
    written = []
    try:
        for name, fills in sorted(due.items()):
            before = history.checkpoints.get(name)
            cp = checkpoint.Checkpoint(
                name,
                history.last_seq,
                fills + (before.fills if before is not None else 0),
                dict(runtime.hosts[name].ledger.positions),
            )
            if await checkpoint.write(conn, cp):
                written.append(name)
    except (*CONNECTION_ERRORS, asyncpg.PostgresError) as e:
        raise StoreUnavailable(f"writing a checkpoint failed: {e}") from e
    finally:
        await conn.close()
    return written
