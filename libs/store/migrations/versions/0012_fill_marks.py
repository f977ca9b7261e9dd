"""positions_marked prices a position at a fill newer than the market's last price.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-10

The risk-gate marks a symbol at each fill's price as it would at a print (the
newest by market time wins, ``services/risk_gate/domain/evolve.py``), and so
now does a strategy's ledger (``libs/strategy/ledger.py``). The view took
trades, bars and marks only, so after a fill with no print since (a thin
option contract can go hours without one, and a fill into a quiet book is
the newest price there is), ``tradebus positions`` valued the position at an
older print while the risk-gate's day P&L, which its breaker trips on, used
the fill's price: the two disagreed by the fill's distance from that print,
times the contract's multiplier.

Now the symbol's last ``FillReceived`` (of any account: a fill moves the
symbol's mark for every holder, as in the gate) is a fourth candidate, and
the newest of the four by market time values the position; at the same
time, the one later in the stream. A candidate's market time is its
``ts_event`` but no later than 5 s after it was made (``ts_init``), the
contract's ``Event.market_ns`` (``CLOCK_SKEW_NS``): a print or fill stamped
a day ahead by a bad clock would otherwise be "the newest price" for a day,
a fill's until the symbol's next fill. ``last_price_ns`` is that time.

What it costs: ``ix_events_last_fill``, (symbol, -seq) of the fill rows only,
so that the lookup is one probe (as 0008's for prices). Fills are a small
share of any store, so the index is small and the recorder's inserts of
everything else pay only its predicate. Building it reads ``events`` once
under a SHARE lock (as 0008's, about 0.5 s per million events).

Only ``positions_marked`` changes (replaced in place, its columns and grants
kept); downgrade puts 0011's view back and drops the index.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from libs.store.migrate import revision_module

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LAST_FILL_INDEX = (
    "CREATE INDEX ix_events_last_fill ON events (symbol, (-seq)) WHERE type = 'FillReceived'"
)

# 0011's view with the last fill as a fourth candidate, each candidate at its
# market time (5 s: CLOCK_SKEW_NS when this was written; a migration keeps its
# own copy of the figure).
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
    WHERE e.type = 'TradePrinted' AND e.symbol = p.symbol ORDER BY -e.seq LIMIT 1
) t ON true
LEFT JOIN LATERAL (
    SELECT (e.payload->>'close')::numeric AS price,
           least(e.ts_event, e.ts_init + 5000000000) AS ts_event, e.seq
    FROM events e
    WHERE e.type = 'BarClosed' AND e.symbol = p.symbol
    ORDER BY -e.seq LIMIT 1
) b ON true
LEFT JOIN LATERAL (
    SELECT (e.payload->>'price')::numeric AS price,
           least(e.ts_event, e.ts_init + 5000000000) AS ts_event, e.seq
    FROM events e
    WHERE e.type = 'MarkUpdated' AND e.symbol = p.symbol ORDER BY -e.seq LIMIT 1
) m ON true
LEFT JOIN LATERAL (
    SELECT (e.payload->>'price')::numeric AS price,
           least(e.ts_event, e.ts_init + 5000000000) AS ts_event, e.seq
    FROM events e
    WHERE e.type = 'FillReceived' AND e.symbol = p.symbol ORDER BY -e.seq LIMIT 1
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
    op.execute(LAST_FILL_INDEX)
    op.execute(POSITIONS_MARKED)


def downgrade() -> None:
    # 0011's view (itself written as CREATE OR REPLACE), then the index it no longer uses.
    op.execute(revision_module("0011").POSITIONS_MARKED)
    op.execute("DROP INDEX IF EXISTS ix_events_last_fill")
