"""The price that values a position in the read models, on real Postgres: an
option's quote mark, the newest of trade, bar and mark (by its own time,
not by when it was recorded), each last price one index probe.

Events go into ``events`` exactly as the recorder writes them, then the
views are read back (tests/integration/read_model_events.py)."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import pytest

from libs.contract.envelope import Event
from libs.store.urls import asyncpg_url
from services.broker_gateway import positions
from tests.integration.read_model_events import (
    ACCOUNT,
    BEFORE_T0,
    OPTION,
    T0,
    D,
    Orders,
    S,
    bar_at,
    late,
    mark_at,
    query,
    trade_at,
)
from tests.integration.recording import record_events


async def test_an_option_position_is_valued_at_its_quote_mark(database_url: str) -> None:
    """Long 2 contracts at 5: with no trade or bar of the contract since, the
    mark of its quote values it (0007); before, it had no price at all."""
    o = Orders(BEFORE_T0)
    o.fill(o.submit("opt", OPTION, "buy", "2"), "2", "5")
    await record_events(database_url, [*o.events, mark_at(OPTION, "5.5", T0)])
    [row] = await query(
        database_url,
        "SELECT last_price, last_price_ns, unrealized_pnl FROM positions_marked WHERE symbol = $1",
        OPTION,
    )
    assert (row["last_price"], row["last_price_ns"]) == (D("5.5"), T0)
    assert row["unrealized_pnl"] == D(100)  # 0.5 x 2 x 100
    [pnl] = await query(database_url, "SELECT * FROM account_pnl WHERE account = $1", ACCOUNT)
    assert pnl["unrealized_pnl"] == D(100)


@pytest.mark.parametrize(
    ("prices", "last"),
    [
        pytest.param(
            [trade_at(OPTION, "4", T0 - 60 * S), mark_at(OPTION, "5.5", T0)],
            ("5.5", T0),
            id="a mark newer than the last trade wins",
        ),
        pytest.param(
            [mark_at(OPTION, "5.5", T0 - 60 * S), trade_at(OPTION, "4", T0)],
            ("4", T0),
            id="a trade newer than the last mark wins",
        ),
        pytest.param(
            [mark_at(OPTION, "5.5", T0), trade_at(OPTION, "4", T0 - 60 * S)],
            ("5.5", T0),
            id="an older trade recorded later does not",
        ),
        pytest.param(
            [trade_at(OPTION, "4", T0), mark_at(OPTION, "5.5", T0)],
            ("5.5", T0),
            id="at the same time the later in the stream wins",
        ),
        pytest.param(
            [bar_at(OPTION, "4.5", T0 - 60 * S), mark_at(OPTION, "5.5", T0)],
            ("5.5", T0),
            id="a mark newer than the last bar wins",
        ),
        pytest.param(
            [mark_at(OPTION, "5.5", T0 - 60 * S), bar_at(OPTION, "4.5", T0)],
            ("4.5", T0),
            id="a bar newer than the last mark wins",
        ),
        pytest.param(
            [trade_at(OPTION, "4", T0 - 60 * S), bar_at(OPTION, "4.5", T0)],
            ("4.5", T0),
            id="a bar newer than the last trade wins",
        ),
        pytest.param(
            [bar_at(OPTION, "4.5", T0 - 60 * S), trade_at(OPTION, "4", T0)],
            ("4", T0),
            id="a trade newer than the last bar wins",
        ),
        pytest.param(
            [
                # Stamped a day ahead of when it was made (a bad clock): its
                # time is taken as 5 s after that (Event.market_ns), so the
                # mark a minute later is newer; on its own stamp it held the
                # price for a day.
                trade_at(OPTION, "9", T0 - 120 * S).model_copy(
                    update={"ts_event": T0 + 86_400 * S}
                ),
                mark_at(OPTION, "4.2", T0 - 60 * S),
            ],
            ("4.2", T0 - 60 * S),
            id="a price stamped a day ahead does not hold it",
        ),
        pytest.param(
            [trade_at(OPTION, "4", T0), late(trade_at(OPTION, "3", T0 - 60 * S))],
            ("4", T0),
            id="a late trade older than the last does not move it back",
        ),
        pytest.param(
            [bar_at(OPTION, "4.5", T0), late(bar_at(OPTION, "3.5", T0 - 60 * S))],
            ("4.5", T0),
            id="a late bar older than the last does not move it back",
        ),
        pytest.param(
            [mark_at(OPTION, "5.5", T0), late(mark_at(OPTION, "5.1", T0 - 60 * S))],
            ("5.5", T0),
            id="a late mark older than the last does not move it back",
        ),
        pytest.param(
            [
                trade_at(OPTION, "4", T0 - 120 * S),
                mark_at(OPTION, "5.5", T0 - 60 * S),
                trade_at(OPTION, "4.2", T0),
                late(trade_at(OPTION, "3", T0 - 90 * S)),
            ],
            ("4.2", T0),
            id="a late trade does not hide the newest trade",
        ),
    ],
)
async def test_the_newest_of_trade_bar_and_mark_values_a_position(
    database_url: str, prices: list[Event], last: tuple[str, int]
) -> None:
    """The risk-gate's rule: the newest price by market time, the later in
    the stream at the same time. Until 0011 a bar was looked at only for a
    symbol that had never traded: a bar newer than the last trade lost.
    Until 0013 each kind's candidate was its last in the stream, so a late
    print older than the one before it moved the price back to a stale one."""
    o = Orders(BEFORE_T0)
    o.fill(o.submit("opt", OPTION, "buy", "1"), "1", "5")
    await record_events(database_url, [*o.events, *prices])
    [row] = await query(
        database_url,
        "SELECT last_price, last_price_ns, unrealized_pnl FROM positions_marked WHERE symbol = $1",
        OPTION,
    )
    assert (row["last_price"], row["last_price_ns"]) == (D(last[0]), last[1])
    assert row["unrealized_pnl"] == (D(last[0]) - 5) * 100


#: What each of a position's price lookups reads, and the index it probes (0013).
PRICE_INDEXES = {
    "TradePrinted": "ix_events_newest_price",
    "BarClosed": "ix_events_newest_price",
    "MarkUpdated": "ix_events_newest_price",
    "FillReceived": "ix_events_newest_fill",
}


def price_lookups(plan: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The scans of ``events`` in an EXPLAIN (FORMAT JSON) plan that look for
    a symbol's price row (a trade, bar, mark or fill), wherever they sit in
    the tree, each with the type it looks for (the fill index's partial
    predicate is the type, so a probe of it names none). The fold's scans of
    the fills name no symbol: they are not these."""
    found = []
    if plan.get("Relation Name") == "events":
        conds = " ".join(str(plan.get(k, "")) for k in ("Index Cond", "Filter", "Recheck Cond"))
        if plan.get("Index Name") == "ix_events_newest_fill":
            conds += " 'FillReceived'"
        if "symbol" in conds:
            found += [(t, plan) for t in PRICE_INDEXES if f"'{t}'" in conds]
    for child in plan.get("Plans", []):
        found += price_lookups(child)
    return found


async def test_each_last_price_is_one_index_probe_found_or_not(database_url: str) -> None:
    """positions_marked looks up a symbol's newest trade, bar, mark and fill
    by market time each with one probe of an index in that order (0013),
    also where there is none, and also as the generic plan of ``tradebus
    positions``' query (a bound account). The store is one a small universe
    makes: two equities' trades are nearly every row, and every row's time
    is 60 s older than the one before, so that the newest by market time is
    the first recorded. With 0007's lookups (newest first by seq, no such
    index) the planner read the primary key backwards, a walk over the whole
    history for the option, which never traded and was marked once at the
    start, and for AAPL's mark, which does not exist; a lookup by market
    time that the index did not order would read every row of the kind."""
    o = Orders(BEFORE_T0)
    o.fill(o.submit("eq", "AAPL", "buy", "10"), "10", "190")
    o.fill(o.submit("opt", OPTION, "buy", "1"), "1", "5")
    await record_events(database_url, [*o.events, mark_at(OPTION, "5.5", T0)])
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        # 20,000 events after them, made in SQL (quicker than events; the
        # lookups read symbol, type, seq, the times and the price): trades of
        # AAPL and MSFT, and one in 40 a bar of MSFT or a mark of a contract
        # nobody holds; each a minute older than the one before, all older
        # than the option's mark (late prints, the worst order for a lookup
        # by seq).
        await conn.execute(
            """
            INSERT INTO events (seq, id, subject, type, ts_event, ts_init, source,
                                correlation_id, symbol, payload)
            SELECT m + s, gen_random_uuid(), 'md', kind, $1::bigint - s * $2::bigint,
                   $1::bigint + s, 'test', gen_random_uuid(), sym,
                   jsonb_build_object('price', (190 + s % 7)::text, 'close', (190 + s % 7)::text)
            FROM (SELECT max(seq) AS m FROM events) AS last,
                 generate_series(1, 20000) AS s,
                 LATERAL (
                     SELECT CASE s % 40 WHEN 0 THEN 'MarkUpdated' WHEN 1 THEN 'BarClosed'
                                 ELSE 'TradePrinted' END AS kind,
                            CASE WHEN s % 40 = 0 THEN 'O:SPY241220C00600000'
                                 WHEN s % 2 = 0 THEN 'AAPL' ELSE 'MSFT' END AS sym
                 ) AS pick
            """,
            T0,
            60 * S,
        )
        await conn.execute("ANALYZE events")
        plans = [
            await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM positions_marked")
        ]
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        for account in (ACCOUNT, None):
            plans.append(
                await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {positions.QUERY}", account)
            )
        await conn.execute("RESET plan_cache_mode")
        rows = await conn.fetch("SELECT symbol, last_price FROM positions_marked ORDER BY symbol")
    finally:
        await conn.close()
    # AAPL's newest trade is its first, at s = 2 (its fill is older still):
    # 190 + 2 % 7. By seq it was the last, at s = 19998 (20000 is a mark).
    assert [(r["symbol"], r["last_price"]) for r in rows] == [("AAPL", D(192)), (OPTION, D("5.5"))]
    for plan in plans:
        [doc] = orjson.loads(plan)
        lookups = price_lookups(doc["Plan"])
        # Trade, bar, mark and fill: each scan runs once per position.
        assert sorted(t for t, _ in lookups) == sorted(PRICE_INDEXES), lookups
        for kind, scan in lookups:
            assert (scan["Node Type"], scan.get("Index Name")) == (
                "Index Scan",
                PRICE_INDEXES[kind],
            ), scan
            assert "Filter" not in scan, scan  # no row read only to be thrown away
            assert scan["Actual Rows"] <= 1, scan
