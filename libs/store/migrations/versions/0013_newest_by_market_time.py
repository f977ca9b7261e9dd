"""positions_marked takes each kind's newest price by market time, not its last recorded.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-11

Since 0012 the view picked the newest by market time among four candidates,
but each candidate was its kind's last row in the stream (``ORDER BY -seq``):
a late print with an older ``ts_event`` recorded after a newer one (Polygon
delivers trades out of sequence and reports some late) became the last
trade, and the position was valued at that stale price until the next
print. The risk-gate (``services/risk_gate/domain/evolve.py``) and a
strategy's ledger (``libs/strategy/ledger.py``) keep the newest by market
time, so a late, older print moves nothing there: ``tradebus positions``
disagreed with the gate's day P&L by the late print's distance from the
newest price, times the position and the multiplier.

Now each kind's candidate is its row with the greatest market time
(``Event.market_ns``: ``ts_event``, no later than 5 s after ``ts_init``), the
highest ``seq`` at the same time, so the view's pick is the newest of all the
symbol's trades, bars, marks and fills, the later in the stream at the same
time: the gate's and the ledger's rule, whatever order they were recorded in.

Each lookup stays one index probe, found or not, also as a generic plan:
``ix_events_newest_price`` (symbol, type, market time desc, seq desc) and
``ix_events_newest_fill`` (symbol, market time desc, seq desc) replace
``ix_events_last_price`` (0008) and ``ix_events_last_fill`` (0012), with the
same partial predicates, so the recorder writes as many index entries as
before (each 8 bytes wider) and no more. The lookups order by the index's
own expression: the primary key cannot give that order, so, as with 0008's
``-seq``, the planner has nothing to prefer to the probe. The strategy-runner's
start-up lookups of a symbol's last prices and latest bars
(``services/strategy_runner/adapters/store.py``) read the same indexes in the
same order. Each new index is built (a SHARE lock on ``events``, as 0008's:
about 0.5 s per million events) before the old one is dropped, so readers
wait only for the drop at the end, not for the build.

The view keeps its columns (``last_price_ns`` is still the chosen price's
market time): it is replaced in place and keeps its grants. Downgrade puts
0012's indexes and view back and drops the new indexes.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from libs.store.migrate import revision_module

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# An event's market time, Event.market_ns (5 s: CLOCK_SKEW_NS when this was
# written; a migration keeps its own copy of the figure). The lookups must
# write it exactly so for the planner to match it with the indexes.
MARKET_NS = "least(ts_event, ts_init + 5000000000)"

NEWEST_PRICE_INDEX = (
    f"CREATE INDEX ix_events_newest_price ON events (symbol, type, ({MARKET_NS}) DESC, seq DESC) "
    "WHERE type IN ('TradePrinted', 'BarClosed', 'MarkUpdated')"
)
NEWEST_FILL_INDEX = (
    f"CREATE INDEX ix_events_newest_fill ON events (symbol, ({MARKET_NS}) DESC, seq DESC) "
    "WHERE type = 'FillReceived'"
)

# 0012's view; each candidate its kind's newest by market time, not its last by seq.
POSITIONS_MARKED = """
CREATE OR REPLACE VIEW positions_marked AS
SELECT p.*,
       lp.price AS last_price,
       lp.ts_event AS last_price_ns,
       CASE
           WHEN p.quantity = 0 THEN 0
           ELSE round(
               (lp.price - p.avg_price) * p.quantity * contract_multiplier(p.symbol), 12
           )
       END AS unrealized_pnl
FROM positions p
LEFT JOIN LATERAL (
    SELECT (e.payload->>'price')::numeric AS price,
           least(e.ts_event, e.ts_init + 5000000000) AS ts_event, e.seq
    FROM events e
    WHERE e.type = 'TradePrinted' AND e.symbol = p.symbol
    ORDER BY least(e.ts_event, e.ts_init + 5000000000) DESC, e.seq DESC LIMIT 1
) t ON true
LEFT JOIN LATERAL (
    SELECT (e.payload->>'close')::numeric AS price,
           least(e.ts_event, e.ts_init + 5000000000) AS ts_event, e.seq
    FROM events e
    WHERE e.type = 'BarClosed' AND e.symbol = p.symbol
    ORDER BY least(e.ts_event, e.ts_init + 5000000000) DESC, e.seq DESC LIMIT 1
) b ON true
LEFT JOIN LATERAL (
    SELECT (e.payload->>'price')::numeric AS price,
           least(e.ts_event, e.ts_init + 5000000000) AS ts_event, e.seq
    FROM events e
    WHERE e.type = 'MarkUpdated' AND e.symbol = p.symbol
    ORDER BY least(e.ts_event, e.ts_init + 5000000000) DESC, e.seq DESC LIMIT 1
) m ON true
LEFT JOIN LATERAL (
    SELECT (e.payload->>'price')::numeric AS price,
           least(e.ts_event, e.ts_init + 5000000000) AS ts_event, e.seq
    FROM events e
    WHERE e.type = 'FillReceived' AND e.symbol = p.symbol
    ORDER BY least(e.ts_event, e.ts_init + 5000000000) DESC, e.seq DESC LIMIT 1
) f ON true
LEFT JOIN LATERAL (
    SELECT c.price, c.ts_event
    FROM (
        VALUES (t.price, t.ts_event, t.seq),
               (b.price, b.ts_event, b.seq),
               (m.price, m.ts_event, m.seq),
               (f.price, f.ts_event, f.seq)
    ) AS c(price, ts_event, seq)
    WHERE c.price IS NOT NULL
    ORDER BY c.ts_event DESC, c.seq DESC
    LIMIT 1
) lp ON true
"""


def upgrade() -> None:
    # Build the new indexes before dropping the old: the build takes a SHARE
    # lock (readers go on), the drop an exclusive one, held to the commit.
    op.execute(NEWEST_PRICE_INDEX)
    op.execute(NEWEST_FILL_INDEX)
    op.execute(POSITIONS_MARKED)
    op.execute("DROP INDEX ix_events_last_price")
    op.execute("DROP INDEX ix_events_last_fill")


def downgrade() -> None:
    # 0012's indexes (0008's and its own) and view, then the indexes it does not use.
    op.execute(revision_module("0008").LAST_PRICE_INDEX)
    op.execute(revision_module("0012").LAST_FILL_INDEX)
    op.execute(revision_module("0012").POSITIONS_MARKED)
    op.execute("DROP INDEX IF EXISTS ix_events_newest_price")
    op.execute("DROP INDEX IF EXISTS ix_events_newest_fill")
